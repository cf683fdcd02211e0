/*
 * Benchmark scenarios (bench-write, bench-ud, bench-benign): what the kernel
 * side (src/bench.c, src/scenarios/bench_*.c) and the ring-3 side
 * (src/user/bench.c) share. The kernel fills in struct bench_args, runs one
 * ring-3 task, then prints the task's results in the GV-RESULT line.
 *
 * Timing is done in ring 3 with rdtsc around each protected write or ud2, so
 * every VMM (Guardvisor with either decider, the bare baseline in bench/) is
 * measured by the same code in the same guest.
 */
#ifndef GV_BENCH_H
#define GV_BENCH_H
#include <stdint.h>
#include "user_tasks.h"

struct bench_args {
	/* In (the kernel sets them before the task runs). */
	uint64_t target; /* bench-write: the address written (the .benchpage page) */
	uint64_t n;      /* measured iterations (a maximum when dur is set) */
	uint64_t warm;   /* unmeasured iterations first */
	uint64_t gap;    /* TSC cycles of ring-3 idling before each measured iteration (0: none) */
	uint64_t dur;    /* bench-write: stop after this many TSC cycles instead (0: after n) */
	/* Out (the task sets them before it exits). */
	uint64_t count;  /* measured iterations done */
	uint64_t cycles; /* TSC cycles from the first measured iteration to the last */
	uint64_t p50, p99, min, max; /* TSC cycles per iteration */
};

/* In .udata (ring-3 data), written by the kernel before each task. */
extern struct bench_args bench_args;

/* bench-write: n (or for dur cycles) 8-byte writes to bench_args.target. */
USER_TASK user_bench_write_task(uint64_t arg);
/* bench-ud: n times ud2 at bench_ud_site, which the kernel's #UD handler skips. */
USER_TASK user_bench_ud_task(uint64_t arg);
/* The ud2 the bench-ud task executes (a user-text label: ud2; ret). */
void bench_ud_site(void);

/* Kernel side (src/bench.c); ring-3 code must not use these. */
/* The page bench-write targets: its own read-only ELF section, writable in the page tables. */
extern const uint8_t gv_bench_page[4096];

/* Decimal value of `key=` on the boot command line, or `def` if absent or not a number. */
uint64_t bench_arg(const char *key, uint64_t def);

/* Makes gv_bench_page user-accessible (writable, non-executable) in the boot page tables. 0, or -1. */
int bench_map_page(void);

/* Fills the measurement fields of bench_args from the command line (n, warm, gap, dur). */
void bench_args_from_cmdline(uint64_t default_n);

/* Prints "GV-RESULT scenario=NAME n=.. cycles=.. p50=.. p99=.. min=.. max=.. faulted=.."; returns 0. */
int bench_report(const char *name, int faulted);

static inline uint64_t bench_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

#endif /* GV_BENCH_H */
