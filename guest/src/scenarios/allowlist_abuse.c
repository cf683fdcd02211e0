/*
 * allowlist-abuse: a module tries to get its writes judged as the sanctioned
 * patch routine's (policies/legit-patch.yaml allows gv_legit_patch to write
 * the 4-byte patch site of gv_patch_target, nothing else):
 *
 *   call:  it calls gv_legit_patch with another target (kernel code
 *          elsewhere): the writer is the routine, the target is not the site;
 *   value: it calls gv_legit_patch on the patch site with a value the
 *          policy does not list (only 1 and 2 are allowed);
 *   stos:  a `rep stosb` of its own over the patch site: the string store is
 *          located (from RDI, RCX and DF), and it is not the routine;
 *   remap: it maps a copy of the routine's page at the routine's address and
 *          calls it on the patch site: the writer has the routine's address,
 *          but is not the sealed routine at that address.
 *
 * Each write is denied; the routine's own patching still works afterwards.
 *
 * GV-RESULT scenario=allowlist-abuse call=<0|1> value=<0|1> stos=<0|1> remap=<0|1> legit=<0|1>
 * where call/value/stos/remap say whether that attack changed a byte, and legit
 * whether the sanctioned patch still took effect.
 */
#include "gv_abi.h"
#include "io.h"
#include "layout.h"
#include "paging.h"
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

#define PTE_ADDR 0x000ffffffffff000ULL

int gv_patch_target(void);
void gv_legit_patch(volatile uint8_t *imm, uint8_t value);
int gv_check_credentials(void);

static uint8_t routine_copy[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

__attribute__((noinline, used)) void evil_module_stos(volatile uint8_t *dst, uint8_t value, uint64_t n)
{
	__asm__ volatile("cld; rep stosb" : "+D"(dst), "+c"(n) : "a"(value) : "memory");
}

__attribute__((noinline, used)) void evil_module_remap_call(volatile uint8_t *imm, uint8_t value)
{
	uint64_t fn = (uint64_t)(uintptr_t)gv_legit_patch;
	const uint8_t *page = (const uint8_t *)(uintptr_t)(fn & ~(uint64_t)(PAGE_SIZE - 1));
	for (unsigned i = 0; i < PAGE_SIZE; i++)
		routine_copy[i] = page[i];
	volatile uint64_t *pte = &paging_pt_low[fn / PAGE_SIZE];
	uint64_t sealed = *pte;
	*pte = ((uint64_t)(uintptr_t)routine_copy & PTE_ADDR) | (sealed & ~PTE_ADDR);
	invlpg((void *)(uintptr_t)fn);
	gv_legit_patch(imm, value); /* runs the copy */
}

int scenario_allowlist_abuse(void)
{
	volatile uint8_t *site = (volatile uint8_t *)(uintptr_t)gv_patch_target + 1;
	volatile uint8_t *elsewhere = (volatile uint8_t *)(uintptr_t)gv_check_credentials;
	uint8_t other = *elsewhere;
	uint8_t imm = *site;

	gv_legit_patch(elsewhere, 0xcc);
	int call = *elsewhere != other;

	gv_legit_patch(site, 0x77);
	int value = *site != imm || gv_patch_target() != 1;

	evil_module_stos(site, 0x66, 4);
	int stos = *site != imm || gv_patch_target() != 1;

	evil_module_remap_call(site, 0x55);
	int remap = *site != imm || gv_patch_target() != 1;

	gv_legit_patch(site, 2);
	int legit = gv_patch_target() == 2;

	kprintf("GV-RESULT scenario=allowlist-abuse call=%d value=%d stos=%d remap=%d legit=%d\n", call, value, stos, remap,
		legit);
	return 0;
}
