/*
 * div-zero: a ring-3 task divides by zero. #DE (vector 0) is captured by the
 * VMM at the exception entry; the guest's exception module ends the task and
 * the kernel carries on.
 *
 * GV-RESULT scenario=div-zero faulted=<0|1> vector=<n>
 */
#include "scenario.h"
#include "serial.h"
#include "task.h"
#include "user_tasks.h"

int scenario_div_zero(void)
{
	static const struct task t = { "divider", user_divzero_task, 0, USER_STACK_TOP(0) };
	struct task_result r;
	task_run(&t, &r);
	kprintf("GV-RESULT scenario=div-zero faulted=%d vector=%lu\n", r.faulted, r.faulted ? r.code : 999);
	return 0;
}
