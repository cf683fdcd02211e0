/*
 * Ring-3 tasks. No scheduler: task_run() enters the task and returns when it
 * calls SYS_EXIT or faults; tasks run one after another.
 */
#include "task.h"
#include <stddef.h>

static const struct task *current;
static uint32_t current_pid;
static uint32_t next_pid = 1;
static int current_faulted;

void task_run(const struct task *t, struct task_result *res)
{
	current = t;
	current_pid = next_pid++;
	current_faulted = 0;
	/* Enter with RSP 8 below a 16-byte boundary, as after a call. */
	uint64_t v = run_task((uint64_t)t->entry, (uint64_t)t->stack_top - 8, t->arg);
	res->pid = current_pid;
	res->faulted = current_faulted;
	res->code = v;
	current = NULL;
	current_pid = 0;
}

const struct task *task_current(void)
{
	return current;
}

uint32_t task_current_pid(void)
{
	return current_pid;
}

void task_exit_current(uint64_t code)
{
	task_return(code);
}

void task_kill_current(unsigned vector)
{
	current_faulted = 1;
	task_return(vector);
}
