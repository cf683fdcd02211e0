/*
 * text-patch: a ring-0 "module" tries to patch kernel code so that a
 * credentials check grants root. gv_check_credentials() returns 0 ("not
 * root"); the module makes three separate write attempts at its first bytes
 * (1, 8 and 4 bytes wide, nothing in between), which, if they landed, would
 * leave
 *     B8 01 00 00 01 C3 90 90    mov $0x01000001, %eax; ret
 * so the function would return non-zero. The page tables leave .text writable
 * on purpose: only the VMM's read-only memory stands in the way.
 *
 * GV-RESULT scenario=text-patch attempts=3 changed=<0|1> ret=<value>
 *   changed=1 if the first 8 bytes differ from before or ret != 0.
 */
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

/* The credentials the check looks at (a non-root task). */
volatile uint32_t gv_current_uid = 1000;

/*
 * Returns 1 for root, else 0. Compiled it is longer than the 8 bytes the
 * module patches, so every attempt lands inside this function.
 */
__attribute__((noinline, noipa, used, aligned(16))) int gv_check_credentials(void)
{
	return gv_current_uid == 0;
}

__attribute__((noinline, used)) void evil_module_text_patch(void)
{
	uintptr_t fn = (uintptr_t)gv_check_credentials;
	*(volatile uint8_t *)fn = 0xb8;                        /* attempt 1: opcode of mov $imm32,%eax */
	*(volatile uint64_t *)fn = 0x9090c300000001b8ULL;      /* attempt 2: mov $1,%eax; ret; nop; nop */
	*(volatile uint32_t *)(fn + 4) = 0x9090c301;           /* attempt 3: imm32 -> 0x01000001 */
}

int scenario_text_patch(void)
{
	volatile uint64_t *code = (volatile uint64_t *)(uintptr_t)gv_check_credentials;
	uint64_t before = *code;
	evil_module_text_patch();
	int ret = gv_check_credentials();
	uint64_t after = *code;
	int changed = after != before || ret != 0;
	kprintf("GV-RESULT scenario=text-patch attempts=3 changed=%d ret=%d\n", changed, ret);
	return 0;
}
