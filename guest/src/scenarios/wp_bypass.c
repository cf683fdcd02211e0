/*
 * wp-bypass: a module clears CR0.WP (so ring 0 may write read-only pages) and
 * patches kernel code. The host's read-only memory does not care about CR0.WP:
 * the write exits to the VMM and is denied. CR0.WP was pinned at boot
 * (HC_SEAL), so the VMM also reports the change and, per policy, sets the bit
 * back.
 *
 * GV-RESULT scenario=wp-bypass attempts=1 changed=<0|1> wp=<CR0.WP at the end>
 */
#include "io.h"
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

#define CR0_WP (1ULL << 16)

int gv_check_credentials(void);

__attribute__((noinline, used)) void evil_module_wp_bypass(void)
{
	write_cr0(read_cr0() & ~CR0_WP);
	*(volatile uint32_t *)(uintptr_t)gv_check_credentials = 0xc3c031b8; /* mov $..,%eax; ret */
}

int scenario_wp_bypass(void)
{
	volatile uint32_t *code = (volatile uint32_t *)(uintptr_t)gv_check_credentials;
	uint32_t before = *code;
	evil_module_wp_bypass();
	int changed = *code != before || gv_check_credentials() != 0;
	kprintf("GV-RESULT scenario=wp-bypass attempts=1 changed=%d wp=%d\n", changed, (read_cr0() & CR0_WP) != 0);
	return 0;
}
