/*
 * benign: three ring-3 tasks doing real work (prime sieve, CRC-32, matrix
 * product) with system calls; the kernel stores their results in its own .data
 * (allowed writes) and reads them back. It never writes .text or .rodata.
 *
 * GV-RESULT scenario=benign tasks=<exited normally> syscalls=<handled>
 *           checksum=0x<FNV-1a over the exit codes> data_writes=<verified>
 */
#include "scenario.h"
#include "serial.h"
#include "syscall.h"
#include "task.h"
#include "user_tasks.h"

#define NTASKS 3
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static const struct task tasks[NTASKS] = {
	{ "sieve", user_sieve_task, 0, USER_STACK_TOP(0) },
	{ "crc", user_crc_task, 0, USER_STACK_TOP(1) },
	{ "matmul", user_matmul_task, 0, USER_STACK_TOP(2) },
};

/* Kernel data the scenario writes; explicitly .data (not .bss) on purpose. */
static uint64_t benign_results[NTASKS] __attribute__((section(".data")));
static uint64_t benign_checksum __attribute__((section(".data")));

/* Stores v in *p, reads it back; 1 if the write took effect. */
static unsigned store_checked(uint64_t *p, uint64_t v)
{
	*(volatile uint64_t *)p = v;
	return *(volatile uint64_t *)p == v;
}

int scenario_benign(void)
{
	unsigned exited = 0, data_writes = 0;
	uint64_t sum = FNV_OFFSET;

	for (int i = 0; i < NTASKS; i++) {
		struct task_result r;
		task_run(&tasks[i], &r);
		if (!r.faulted)
			exited++;
		data_writes += store_checked(&benign_results[i], r.code);
		sum = (sum ^ r.code) * FNV_PRIME;
		data_writes += store_checked(&benign_checksum, sum);
	}
	kprintf("GV-RESULT scenario=benign tasks=%u syscalls=%lu checksum=0x%lx data_writes=%u\n",
		exited, syscall_count, benign_checksum, data_writes);
	return 0;
}
