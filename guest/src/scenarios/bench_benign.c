/*
 * bench-benign: the benign scenario's workload (three ring-3 tasks: prime
 * sieve, CRC-32, matrix product, each with a few system calls and a line of
 * output) run n times (n=, default 1), timed with the TSC in the kernel
 * around all the rounds. No protected write, no exception: the time shows
 * what the VMM costs a guest that triggers no event.
 *
 * GV-RESULT scenario=bench-benign n=<rounds> cycles=<TSC> tasks=<exited normally>
 *           syscalls=<handled> faulted=<0|1>
 */
#include "bench.h"
#include "scenario.h"
#include "serial.h"
#include "syscall.h"
#include "task.h"

#define NTASKS 3

int scenario_bench_benign(void)
{
	static const struct task tasks[NTASKS] = {
		{ "sieve", user_sieve_task, 0, USER_STACK_TOP(0) },
		{ "crc", user_crc_task, 0, USER_STACK_TOP(1) },
		{ "matmul", user_matmul_task, 0, USER_STACK_TOP(2) },
	};
	uint64_t n = bench_arg("n", 1), exited = 0;
	uint64_t t0 = bench_rdtsc();
	for (uint64_t i = 0; i < n; i++) {
		for (int k = 0; k < NTASKS; k++) {
			struct task_result r;
			task_run(&tasks[k], &r);
			exited += !r.faulted;
		}
	}
	uint64_t cycles = bench_rdtsc() - t0;
	int faulted = exited != n * NTASKS;
	kprintf("GV-RESULT scenario=bench-benign n=%lu cycles=%lu tasks=%lu syscalls=%lu faulted=%d\n", n, cycles,
		exited, syscall_count, faulted);
	return faulted ? 1 : 0;
}
