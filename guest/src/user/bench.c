/*
 * Ring-3 tasks of the benchmark scenarios (include/bench.h). Each measured
 * iteration is timed with the TSC around one protected write (bench-write)
 * or one ud2 (bench-ud) and added to a histogram; the task leaves count,
 * total cycles, p50, p99, min and max in bench_args and exits.
 */
#include "bench.h"
#include "bench_hist.h"
#include "user.h"

struct bench_args bench_args;
static struct bench_hist hist;

/* ud2, then ret: the kernel's #UD handler for bench-ud resumes at the ret. */
__asm__(".pushsection .text.bench_ud_site, \"ax\", @progbits\n"
	".globl bench_ud_site\n"
	".type bench_ud_site, @function\n"
	"bench_ud_site:\n"
	"\tud2\n"
	"\tret\n"
	".size bench_ud_site, . - bench_ud_site\n"
	".popsection");

/* The TSC, ordered against the instructions around it. */
static inline uint64_t tsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi) : : "memory");
	return ((uint64_t)hi << 32) | lo;
}

/* Ring-3 idling: the VMM sees nothing from this vCPU for `cycles`. */
static void idle(uint64_t cycles)
{
	uint64_t t = tsc();
	while (tsc() - t < cycles)
		__asm__ volatile("pause");
}

__attribute__((noreturn)) static void finish(uint64_t count, uint64_t cycles)
{
	bench_args.count = count;
	bench_args.cycles = cycles;
	bench_args.p50 = bh_quantile(&hist, 500);
	bench_args.p99 = bh_quantile(&hist, 990);
	bench_args.min = hist.count ? hist.min : 0;
	bench_args.max = hist.max;
	u_exit(0);
}

void user_bench_write_task(uint64_t arg)
{
	(void)arg;
	volatile uint64_t *p = (volatile uint64_t *)bench_args.target;
	const uint64_t n = bench_args.n, gap = bench_args.gap, dur = bench_args.dur;
	for (uint64_t i = 0; i < bench_args.warm; i++)
		*p = i;
	uint64_t start = tsc(), count = 0;
	while (count < n && (!dur || tsc() - start < dur)) {
		if (gap)
			idle(gap);
		uint64_t t0 = tsc();
		*p = count;
		uint64_t t1 = tsc();
		bh_add(&hist, t1 - t0);
		count++;
	}
	finish(count, tsc() - start);
}

void user_bench_ud_task(uint64_t arg)
{
	(void)arg;
	const uint64_t n = bench_args.n, gap = bench_args.gap;
	for (uint64_t i = 0; i < bench_args.warm; i++)
		bench_ud_site();
	uint64_t start = tsc(), count = 0;
	while (count < n) {
		if (gap)
			idle(gap);
		uint64_t t0 = tsc();
		bench_ud_site();
		uint64_t t1 = tsc();
		bh_add(&hist, t1 - t0);
		count++;
	}
	finish(count, tsc() - start);
}
