/*
 * Exception handling policy.
 *
 *  - Ring 3 (the interrupted CS has RPL 3): the running task is at fault.
 *    Print "TASK-FAULT task=<name> vector=N rip=0x..", end the task (its
 *    task_run() returns with the fault recorded) and let the kernel go on with
 *    the next task.
 *  - Ring 0: the kernel itself is broken. Print "PANIC ..." and stop the VM with
 *    exit code 0x80 + vector.
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
	if ((tf->cs & 3) == RPL_USER && t) {
		kprintf("TASK-FAULT task=%s vector=%lu rip=0x%lx\n", t->name, tf->vector, tf->rip);
		gv_hypercall(GV_HC_REPORT_EXCEPTION, tf->vector, tf->rip, GV_GUEST_ACTION_TASK_KILLED);
		task_kill_current((unsigned)tf->vector);
	}
	panic_trap(tf);
}
