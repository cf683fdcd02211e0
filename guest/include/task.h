/* Ring-3 tasks: run one to completion (exit or fault), then the next. */
#ifndef GV_TASK_H
#define GV_TASK_H
#include <stdint.h>

struct task {
	const char *name;
	void (*entry)(uint64_t arg); /* in .utext; never returns (ends with SYS_EXIT) */
	uint64_t arg;                /* passed in RDI */
	uint8_t *stack_top;          /* in .udata, 16-byte aligned */
};

struct task_result {
	uint32_t pid;
	int faulted;   /* 1: ended by an exception, code = vector */
	uint64_t code; /* SYS_EXIT argument, or the fault vector */
};

/* Runs t in ring 3 until it exits or faults. */
void task_run(const struct task *t, struct task_result *res);

/* The running task (NULL in kernel context) and its pid (0 if none). */
const struct task *task_current(void);
uint32_t task_current_pid(void);

/* End the running task (from a syscall or trap handler); return to task_run. */
__attribute__((noreturn)) void task_exit_current(uint64_t code);
__attribute__((noreturn)) void task_kill_current(unsigned vector);

/* task.S */
uint64_t run_task(uint64_t entry, uint64_t user_rsp, uint64_t arg);
__attribute__((noreturn)) void task_return(uint64_t value);

#endif /* GV_TASK_H */
