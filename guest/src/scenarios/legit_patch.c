/*
 * legit-patch: the kernel's sanctioned live-patch routine, gv_legit_patch,
 * changes the constant gv_patch_target() returns (1 -> 2); then a rogue
 * routine tries to change it again (-> 0x66). Under policies/legit-patch.yaml
 * the first write is allowed (the VMM performs it: verdict "allow") and the
 * second denied.
 *
 * GV-RESULT scenario=legit-patch patched=<0|1> ret=<value> rogue_changed=<0|1>
 */
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

/*
 * mov $1, %eax; ret — the immediate is byte 1. The target and the patch
 * routine each start a page of their own, so the allowlist-abuse scenario can
 * remap the routine's page and leave the target's alone.
 */
__attribute__((noinline, noipa, used, aligned(4096))) int gv_patch_target(void)
{
	return 1;
}

__attribute__((noinline, used, aligned(4096))) void gv_legit_patch(volatile uint8_t *imm, uint8_t value)
{
	*imm = value;
}

__attribute__((noinline, used)) void rogue_patch(volatile uint8_t *imm, uint8_t value)
{
	*imm = value;
}

int scenario_legit_patch(void)
{
	volatile uint8_t *imm = (volatile uint8_t *)(uintptr_t)gv_patch_target + 1;
	int before = gv_patch_target();
	gv_legit_patch(imm, 2);
	int patched = gv_patch_target() == 2 && before == 1;
	rogue_patch(imm, 0x66);
	int ret = gv_patch_target();
	kprintf("GV-RESULT scenario=legit-patch patched=%d ret=%d rogue_changed=%d\n", patched, ret, ret == 0x66);
	return 0;
}
