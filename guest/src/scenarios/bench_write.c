/*
 * bench-write: a ring-3 task writes n times (n=, default 1000) to
 * gv_bench_page, a page that is writable in the guest's page tables but lies
 * in a protected region (.benchpage) in the host: every write exits to the
 * VMM. Options: warm= unmeasured writes first; gap= TSC cycles of ring-3
 * idling before each measured write (a cold health VM); dur= TSC cycles to
 * keep writing for instead of n (a storm).
 *
 * GV-RESULT scenario=bench-write n=<writes> cycles=<TSC, first to last>
 *           p50=<cycles per write> p99=.. min=.. max=.. faulted=<0|1>
 */
#include "bench.h"
#include "scenario.h"
#include "serial.h"
#include "task.h"

/* Before the seal: once sealed, the page's entry is pinned (it translates protected memory). */
int scenario_bench_write_setup(void)
{
	if (bench_map_page() < 0) {
		kprintf("GV-RESULT scenario=bench-write error=page-tables\n");
		return -1;
	}
	return 0;
}

int scenario_bench_write(void)
{
	bench_args_from_cmdline(1000);
	bench_args.target = (uint64_t)gv_bench_page;
	static const struct task t = { "bench-write", user_bench_write_task, 0, USER_STACK_TOP(0) };
	struct task_result r;
	task_run(&t, &r);
	return bench_report("bench-write", r.faulted);
}
