/*
 * alias-map: a module maps the physical page of kernel code at a second,
 * writable virtual address and patches the code through it. The protection is
 * on the physical page (a read-only memory slot), not on a mapping: the write
 * exits to the VMM and is denied.
 *
 * GV-RESULT scenario=alias-map attempts=1 changed=<0|1>
 */
#include "io.h"
#include "layout.h"
#include "paging.h"
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

#define PTE_P 1ULL
#define PTE_RW 2ULL
#define ALIAS_VA 0x1ff000ULL /* the last 4 KiB page of the first 2 MiB (above the kernel) */

int gv_check_credentials(void);

__attribute__((noinline, used)) void evil_module_alias_map(void)
{
	uint64_t fn = (uint64_t)gv_check_credentials; /* identity-mapped: virtual = physical */
	paging_pt_low[ALIAS_VA / PAGE_SIZE] = (fn & ~(uint64_t)(PAGE_SIZE - 1)) | PTE_P | PTE_RW;
	invlpg((void *)ALIAS_VA);
	*(volatile uint64_t *)(ALIAS_VA + (fn & (PAGE_SIZE - 1))) = 0x9090c300000001b8ULL;
}

int scenario_alias_map(void)
{
	volatile uint64_t *code = (volatile uint64_t *)(uintptr_t)gv_check_credentials;
	uint64_t before = *code;
	evil_module_alias_map();
	int changed = *code != before || gv_check_credentials() != 0;
	kprintf("GV-RESULT scenario=alias-map attempts=1 changed=%d\n", changed);
	return 0;
}
