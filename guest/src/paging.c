/*
 * The VMM identity-maps RAM supervisor-only; the first 2 MiB (where the kernel
 * and its user sections live: linker.ld asserts it) go through the 4 KiB page
 * table at bi->pt_low_gpa. We set U/S on the PTEs of the user sections only,
 * plus on PML4[0], PDPT[0] and PD[0] so the leaf bits take effect (the other
 * leaves stay supervisor, so the kernel remains out of ring 3's reach).
 * NX on user data is fine: the ABI guarantees EFER.NXE.
 */
#include "paging.h"
#include "io.h"
#include "layout.h"
#include <stdint.h>

#define PTE_P (1ULL << 0)
#define PTE_US (1ULL << 2)
#define PTE_PS (1ULL << 7)
#define PTE_NX (1ULL << 63)
#define PTE_ADDR 0x000ffffffffff000ULL

static void set_bits(uint64_t *pt, const char *start, const char *end, uint64_t bits)
{
	for (uint64_t a = (uint64_t)start & ~(uint64_t)(PAGE_SIZE - 1); a < (uint64_t)end; a += PAGE_SIZE)
		pt[a / PAGE_SIZE] |= bits;
}

uint64_t *paging_pt_low;

int paging_init(const struct gv_boot_info *bi)
{
	uint64_t *pml4 = (uint64_t *)bi->pml4_gpa;
	uint64_t *pdpt = (uint64_t *)(pml4[0] & PTE_ADDR);
	uint64_t *pd = (uint64_t *)(pdpt[0] & PTE_ADDR);
	uint64_t *pt = (uint64_t *)bi->pt_low_gpa;

	if (!(pml4[0] & PTE_P) || !(pdpt[0] & PTE_P) || (pd[0] & (PTE_P | PTE_PS)) != PTE_P ||
	    (pd[0] & PTE_ADDR) != bi->pt_low_gpa)
		return -1;

	pml4[0] |= PTE_US;
	pdpt[0] |= PTE_US;
	pd[0] |= PTE_US;
	set_bits(pt, __utext_start, __utext_end, PTE_US);
	set_bits(pt, __udata_start, __user_end, PTE_US | PTE_NX);
	write_cr3(read_cr3()); /* flush the TLB */
	paging_pt_low = pt;
	return 0;
}

int paging_map_user(const struct gv_boot_info *bi, uint64_t gpa, uint64_t size)
{
	uint64_t *pml4 = (uint64_t *)bi->pml4_gpa;
	uint64_t *pdpt = (uint64_t *)(pml4[0] & PTE_ADDR);
	for (uint64_t a = gpa; a < gpa + size; a += 0x200000) {
		uint64_t *e = &pdpt[a >> 30];
		if (!(*e & PTE_P))
			return -1;
		uint64_t *pd = (uint64_t *)(*e & PTE_ADDR);
		uint64_t *pde = &pd[(a >> 21) & 511];
		if ((*pde & (PTE_P | PTE_PS)) != (PTE_P | PTE_PS) || (*pde & PTE_ADDR) != a)
			return -1;
		*e |= PTE_US;
		*pde |= PTE_US | PTE_NX;
	}
	write_cr3(read_cr3());
	return 0;
}
