/*
 * pt-remap: a module makes the kernel run its own copy of kernel code without
 * writing a protected byte, by changing how the code's virtual page is
 * translated. Three ways, each followed by an exit (a hypercall: the kernel's
 * next exit, whatever it is) and a call to the function:
 *
 *   pte: the 4 KiB page-table entry of the function's page points at a
 *        writable copy in which the function returns 1 instead of 0;
 *   pde: the page-directory entry over the first 2 MiB points at a copy of
 *        the page table with that remapped entry;
 *   cr3: CR3 is loaded with a whole copy of the page tables that remaps the page.
 *
 * The VMM's page-table seal finds each change on that exit and, under the
 * default policy, puts the sealed entry (or CR3) back and flushes the guest's
 * TLB: the original function runs every time. Between the change and the
 * exit the copy could run: the seal repairs, it cannot prevent (docs/design.md).
 *
 * GV-RESULT scenario=pt-remap attempts=3 pte=<0|1> pde=<0|1> cr3=<0|1> ret=<OR of the three calls>
 * where pte/pde/cr3 say whether that attack changed the translation.
 */
#include "gv_abi.h"
#include "io.h"
#include "layout.h"
#include "paging.h"
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

#define PTE_P 1ULL
#define PTE_RW 2ULL
#define PTE_ADDR 0x000ffffffffff000ULL

int gv_check_credentials(void);

/* Page copies: the code page, a page table, and a whole set of tables (PML4, PDPT, PD). */
static uint8_t code_copy[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static uint64_t pt_copy[512] __attribute__((aligned(PAGE_SIZE)));
static uint64_t pml4_copy[512] __attribute__((aligned(PAGE_SIZE)));
static uint64_t pdpt_copy[512] __attribute__((aligned(PAGE_SIZE)));
static uint64_t pd_copy[512] __attribute__((aligned(PAGE_SIZE)));

static void copy64(uint64_t *dst, const uint64_t *src)
{
	for (int i = 0; i < 512; i++)
		dst[i] = src[i];
}

static uint64_t *table_at(uint64_t entry)
{
	return (uint64_t *)(uintptr_t)(entry & PTE_ADDR);
}

/* A writable copy of the function's page in which it returns 1: mov $1,%eax; ret. */
static void make_rogue_copy(uint64_t fn)
{
	const uint8_t *page = (const uint8_t *)(uintptr_t)(fn & ~(uint64_t)(PAGE_SIZE - 1));
	for (unsigned i = 0; i < PAGE_SIZE; i++)
		code_copy[i] = page[i];
	static const uint8_t rogue[] = { 0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3 };
	for (unsigned i = 0; i < sizeof(rogue); i++)
		code_copy[(fn & (PAGE_SIZE - 1)) + i] = rogue[i];
}

__attribute__((noinline, used)) void evil_module_pte_remap(uint64_t fn)
{
	volatile uint64_t *pte = &paging_pt_low[fn / PAGE_SIZE];
	*pte = ((uint64_t)(uintptr_t)code_copy & PTE_ADDR) | (*pte & ~PTE_ADDR);
	invlpg((void *)(uintptr_t)fn);
	gv_hypercall(GV_HC_HEARTBEAT, 0, 0, 0);
}

__attribute__((noinline, used)) void evil_module_pde_remap(uint64_t fn)
{
	uint64_t *pd = table_at(table_at(table_at(read_cr3())[0])[0]);
	copy64(pt_copy, paging_pt_low);
	pt_copy[fn / PAGE_SIZE] = ((uint64_t)(uintptr_t)code_copy & PTE_ADDR) | (pt_copy[fn / PAGE_SIZE] & ~PTE_ADDR);
	volatile uint64_t *pde = &pd[0];
	*pde = ((uint64_t)(uintptr_t)pt_copy & PTE_ADDR) | (*pde & ~PTE_ADDR);
	write_cr3(read_cr3());
	gv_hypercall(GV_HC_HEARTBEAT, 0, 0, 0);
}

__attribute__((noinline, used)) void evil_module_cr3_swap(uint64_t fn)
{
	uint64_t *pml4 = table_at(read_cr3());
	uint64_t *pdpt = table_at(pml4[0]);
	uint64_t *pd = table_at(pdpt[0]);
	copy64(pml4_copy, pml4);
	copy64(pdpt_copy, pdpt);
	copy64(pd_copy, pd);
	copy64(pt_copy, paging_pt_low);
	pt_copy[fn / PAGE_SIZE] = ((uint64_t)(uintptr_t)code_copy & PTE_ADDR) | (pt_copy[fn / PAGE_SIZE] & ~PTE_ADDR);
	pd_copy[0] = ((uint64_t)(uintptr_t)pt_copy & PTE_ADDR) | (pd[0] & ~PTE_ADDR);
	pdpt_copy[0] = ((uint64_t)(uintptr_t)pd_copy & PTE_ADDR) | (pdpt[0] & ~PTE_ADDR);
	pml4_copy[0] = ((uint64_t)(uintptr_t)pdpt_copy & PTE_ADDR) | (pml4[0] & ~PTE_ADDR);
	write_cr3((uint64_t)(uintptr_t)pml4_copy);
	gv_hypercall(GV_HC_HEARTBEAT, 0, 0, 0);
}

/* Where the function's virtual page is translated to now, from the live tables. */
static uint64_t code_frame(uint64_t fn)
{
	uint64_t *pml4 = table_at(read_cr3());
	uint64_t *pdpt = table_at(pml4[(fn >> 39) & 511]);
	uint64_t *pd = table_at(pdpt[(fn >> 30) & 511]);
	uint64_t *pt = table_at(pd[(fn >> 21) & 511]);
	return pt[(fn >> 12) & 511] & PTE_ADDR;
}

int scenario_pt_remap(void)
{
	uint64_t fn = (uint64_t)(uintptr_t)gv_check_credentials;
	uint64_t frame = code_frame(fn);
	uint64_t cr3 = read_cr3();
	make_rogue_copy(fn);
	int ret = 0;

	evil_module_pte_remap(fn);
	int pte = code_frame(fn) != frame;
	ret |= gv_check_credentials();

	evil_module_pde_remap(fn);
	int pde = code_frame(fn) != frame;
	ret |= gv_check_credentials();

	evil_module_cr3_swap(fn);
	int swapped = read_cr3() != cr3 || code_frame(fn) != frame;
	ret |= gv_check_credentials();

	kprintf("GV-RESULT scenario=pt-remap attempts=3 pte=%d pde=%d cr3=%d ret=%d\n", pte, pde, swapped, ret);
	return 0;
}
