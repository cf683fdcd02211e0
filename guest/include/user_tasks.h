/*
 * Ring-3 entry points (src/user/, linked into .utext) and stacks (.udata), as
 * the kernel's scenarios see them. A task entry gets struct task.arg in RDI and
 * never returns: it ends with SYS_EXIT.
 */
#ifndef GV_USER_TASKS_H
#define GV_USER_TASKS_H
#include <stdint.h>
#include "layout.h"

#define USER_TASK __attribute__((noreturn)) void

extern uint8_t user_stacks[USER_STACKS][USER_STACK_SIZE];
#define USER_STACK_TOP(i) (user_stacks[i] + USER_STACK_SIZE)

/* benign: real compute, one line of output each, exit code = result */
USER_TASK user_sieve_task(uint64_t arg);  /* primes below 2^20 */
USER_TASK user_crc_task(uint64_t arg);    /* CRC-32 of a generated buffer */
USER_TASK user_matmul_task(uint64_t arg); /* 48x48 integer matrix product */

/* syscall-hook: exit code = getuid() */
USER_TASK user_getuid_task(uint64_t arg);

/* user-fault */
USER_TASK user_intruder_task(uint64_t arg);  /* writes to kernel memory at arg */
USER_TASK user_port_probe_task(uint64_t arg); /* out to a port the TSS denies */
USER_TASK user_survivor_task(uint64_t arg);   /* writes to COM1 directly, exits 0 */

/* driver-exploit: one request to the vulnerable driver (op = arg), then exit 0 */
USER_TASK user_driver_task(uint64_t arg);

/* exception-storm: ud2 `arg` times (the kernel resumes after each) */
#define STORM_FAULTS 10000
USER_TASK user_storm_task(uint64_t arg);

/* div-zero */
USER_TASK user_divzero_task(uint64_t arg); /* divides by zero: #DE */

/* health VM (role=hm): the engine; its geometry comes from the kernel in hm_args */
struct hm_args {
	uint64_t idc; /* IDC region address (identity-mapped, user-accessible) */
	uint32_t nguests, nslots;
	uint32_t block_offset, block_size;
};
extern struct hm_args hm_args;
USER_TASK user_hm_engine_task(uint64_t arg);

#endif /* GV_USER_TASKS_H */
