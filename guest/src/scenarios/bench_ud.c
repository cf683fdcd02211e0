/*
 * bench-ud: a ring-3 task executes ud2 n times (n=, default 100; warm= and
 * gap= as in bench-write). Each #UD goes through the guest's IDT and common
 * exception entry, where the VMM's hardware breakpoint captures it; the
 * kernel's handler for this scenario then just steps RIP over the ud2 and
 * returns to ring 3. That keeps the ring-0 work per exception to the entry
 * stub, the register save/restore and iretq: ending the task and starting a
 * new one each time (the default handling) would cost many times more
 * ring-0 instructions, which hosts without hardware virtualization emulate.
 * A #UD anywhere else still gets the default handling.
 *
 * GV-RESULT scenario=bench-ud n=.. cycles=.. p50=<cycles per ud2> p99=..
 *           min=.. max=.. faulted=<0|1>
 */
#include "bench.h"
#include "exception.h"
#include "layout.h"
#include "scenario.h"
#include "task.h"
#include "trap.h"
#include <stddef.h>

#define VEC_UD 6
#define UD2_LEN 2

static void bench_ud_trap(struct trap_frame *tf)
{
	if ((tf->cs & 3) == RPL_USER && tf->rip == (uint64_t)bench_ud_site) {
		tf->rip += UD2_LEN;
		return;
	}
	exception_default(tf);
}

TRAP_OVERRIDE(bench_ud_override, VEC_UD, bench_ud_trap);

int scenario_bench_ud(void)
{
	bench_args_from_cmdline(100);
	bench_args.dur = 0;
	static const struct task t = { "bench-ud", user_bench_ud_task, 0, USER_STACK_TOP(0) };
	struct task_result r;
	trap_use(&bench_ud_override);
	task_run(&t, &r);
	trap_use(NULL);
	return bench_report("bench-ud", r.faulted);
}
