/*
 * Exception handling policy.
 *
 *  - Ring 3 (the interrupted CS has RPL 3): the running task is at fault.
 *    Print "TASK-FAULT task=<name> vector=N rip=0x..", end the task (its
 *    task_run() returns with the fault recorded) and let the kernel go on with
 *    the next task.
 *  - Ring 0 while a task runs (in one of its system calls), when the VMM's
 *    verdict is kill-task (HC_EXCEPTION_VERDICT): end that task the same way
 *    ("mode=kernel" in the line); the kernel goes on.
 *  - Ring 0 otherwise: the kernel itself is broken. Print "PANIC ..." and stop
 *    the VM with exit code 0x80 + vector.
 * Either way it reports the exception to the VMM first (HC_REPORT_EXCEPTION),
 * which has already captured it at the exception entry: the audit record holds
 * both views, and a guest that reports what never happened stands out.
 */
#include "exception.h"
#include "io.h"
#include "layout.h"
#include "serial.h"
#include "task.h"

void panic_trap(const struct trap_frame *tf)
{
	gv_hypercall(GV_HC_REPORT_EXCEPTION, tf->vector, tf->rip, GV_GUEST_ACTION_PANIC);
	kprintf("PANIC vector=%lu err=0x%lx rip=0x%lx cr2=0x%lx\n", tf->vector, tf->error_code,
		tf->rip, read_cr2());
	gv_exit(0x80 + (uint32_t)tf->vector);
}

void exception_default(struct trap_frame *tf)
{
	const struct task *t = task_current();
	/* The VMM captured this exception first: does its verdict end the task (kill-task)? */
	int end_task = gv_hypercall(GV_HC_EXCEPTION_VERDICT, tf->vector, tf->rip, 0) == GV_EXC_END_TASK;
	if (t && ((tf->cs & 3) == RPL_USER || end_task)) {
		kprintf("TASK-FAULT task=%s vector=%lu rip=0x%lx%s\n", t->name, tf->vector, tf->rip,
			(tf->cs & 3) == RPL_USER ? "" : " mode=kernel");
		gv_hypercall(GV_HC_REPORT_EXCEPTION, tf->vector, tf->rip, GV_GUEST_ACTION_TASK_KILLED);
		task_kill_current((unsigned)tf->vector);
	}
	panic_trap(tf);
}
