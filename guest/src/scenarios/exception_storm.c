/*
 * exception-storm: a ring-3 task executes ud2 over and over (STORM_FAULTS
 * times). Each #UD is captured by the VMM at the exception entry; the kernel's
 * handler for this scenario counts it and resumes the task after the
 * instruction, so one task raises them all. The VMM must stay responsive and
 * keep its memory bounded: repeats are folded into one event with a count.
 *
 * GV-RESULT scenario=exception-storm faults=<n> exited=<0|1>
 */
#include "exception.h"
#include "scenario.h"
#include "serial.h"
#include "task.h"
#include "trap.h"
#include <stddef.h>
#include "user_tasks.h"

#define VEC_UD 6
#define UD2_LEN 2

static volatile uint64_t storm_faults;

static void storm_ud_handler(struct trap_frame *tf)
{
	const uint8_t *insn = (const uint8_t *)tf->rip;
	if ((tf->cs & 3) == RPL_USER && task_current() && insn[0] == 0x0f && insn[1] == 0x0b) {
		storm_faults++;
		tf->rip += UD2_LEN;
		return;
	}
	exception_default(tf);
}

TRAP_OVERRIDE(storm_ud_override, VEC_UD, storm_ud_handler);

int scenario_exception_storm(void)
{
	static const struct task t = { "storm", user_storm_task, STORM_FAULTS, USER_STACK_TOP(0) };
	struct task_result r;
	trap_use(&storm_ud_override);
	task_run(&t, &r);
	trap_use(NULL);
	kprintf("GV-RESULT scenario=exception-storm faults=%lu exited=%d\n", storm_faults, !r.faulted && r.code == 0);
	return 0;
}
