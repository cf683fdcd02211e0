/*
 * Kernel side of the benchmark scenarios (include/bench.h): the page
 * bench-write targets, command-line arguments and the result line.
 *
 * The page lives in its own section, .benchpage, which is allocated and not
 * writable in the ELF image (linker.ld), so the VMM treats it as a protected
 * region and backs it with read-only memory. The kernel sets the user bit on
 * its (writable) page-table entry: a ring-3 store to it is then allowed by the
 * guest's paging and exits to the VMM, where a decider rules on it. Nothing
 * else shares the page.
 */
#include "bench.h"
#include "cmdline.h"
#include "gv_abi.h"
#include "layout.h"
#include "serial.h"

#define PTE_P (1ULL << 0)
#define PTE_RW (1ULL << 1)
#define PTE_US (1ULL << 2)
#define PTE_NX (1ULL << 63)
#define PTE_ADDR 0x000ffffffffff000ULL
#define LOW_MAP_END 0x200000ULL /* the boot page table at pt_low_gpa maps the first 2 MiB */
#define ARG_MAX_DIGITS 20

const uint8_t gv_bench_page[4096] __attribute__((section(".benchpage"), aligned(4096), used));

/* The boot info stays where the VMM wrote it (docs/guest-abi.md, boot area). */
static const struct gv_boot_info *boot_info(void)
{
	return (const struct gv_boot_info *)GV_BOOT_INFO;
}

uint64_t bench_arg(const char *key, uint64_t def)
{
	const struct gv_boot_info *bi = boot_info();
	char buf[ARG_MAX_DIGITS + 2];
	size_t len = bi->cmdline_len < GV_BOOT_CMDLINE_MAX ? bi->cmdline_len : GV_BOOT_CMDLINE_MAX - 1;
	int n = cmdline_get((const char *)bi->cmdline_gpa, len, key, buf, sizeof(buf));
	if (n <= 0 || n > ARG_MAX_DIGITS)
		return def;
	uint64_t v = 0;
	for (int i = 0; i < n; i++) {
		if (buf[i] < '0' || buf[i] > '9')
			return def;
		uint64_t d = (uint64_t)(buf[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return def;
		v = v * 10 + d;
	}
	return v;
}

int bench_map_page(void)
{
	uint64_t a = (uint64_t)gv_bench_page;
	uint64_t *pt = (uint64_t *)boot_info()->pt_low_gpa;
	if (a & (PAGE_SIZE - 1) || a >= LOW_MAP_END)
		return -1;
	uint64_t *pte = &pt[a / PAGE_SIZE];
	if ((*pte & (PTE_P | PTE_RW | PTE_ADDR)) != (a | PTE_P | PTE_RW))
		return -1;
	*pte |= PTE_US | PTE_NX;
	__asm__ volatile("invlpg (%0)" : : "r"(a) : "memory");
	return 0;
}

void bench_args_from_cmdline(uint64_t default_n)
{
	bench_args.dur = bench_arg("dur", 0);
	bench_args.n = bench_arg("n", bench_args.dur ? UINT64_MAX : default_n);
	bench_args.warm = bench_arg("warm", 0);
	bench_args.gap = bench_arg("gap", 0);
}

int bench_report(const char *name, int faulted)
{
	const struct bench_args *b = &bench_args;
	kprintf("GV-RESULT scenario=%s n=%lu cycles=%lu p50=%lu p99=%lu min=%lu max=%lu faulted=%d\n", name,
		b->count, b->cycles, b->p50, b->p99, b->min, b->max, faulted);
	return faulted ? 1 : 0;
}
