/*
 * syscall-hook: a ring-0 "module" overwrites syscall_table[SYS_GETUID] with
 * evil_getuid (which claims uid 0), then a ring-3 task calls getuid. The table
 * is const (.rodata); the module casts that away through a volatile pointer,
 * the classic rootkit move.
 *
 * GV-RESULT scenario=syscall-hook attempts=1 hooked=<0|1> uid=<value>
 *   hooked=1 if the table entry now points elsewhere or the task saw uid 0.
 */
#include "scenario.h"
#include "serial.h"
#include "syscall.h"
#include "task.h"
#include "user_tasks.h"

__attribute__((noinline, used)) int64_t evil_getuid(uint64_t a1, uint64_t a2, uint64_t a3)
{
	(void)a1;
	(void)a2;
	(void)a3;
	return 0;
}

__attribute__((noinline, used)) void evil_module_syscall_hook(void)
{
	volatile uint64_t *slot = (volatile uint64_t *)(uintptr_t)&syscall_table[SYS_GETUID];
	*slot = (uint64_t)(uintptr_t)evil_getuid; /* one 8-byte write */
}

static const struct task getuid_task = { "getuid", user_getuid_task, 0, USER_STACK_TOP(0) };

int scenario_syscall_hook(void)
{
	syscall_fn original = syscall_lookup(SYS_GETUID);
	evil_module_syscall_hook();
	struct task_result r;
	task_run(&getuid_task, &r);
	int hooked = syscall_lookup(SYS_GETUID) != original || (!r.faulted && r.code == 0);
	kprintf("GV-RESULT scenario=syscall-hook attempts=1 hooked=%d uid=%lu\n", hooked, r.code);
	return 0;
}
