/*
 * lstar-hook: after the kernel sealed its MSRs, a module tries to point the
 * system-call entry elsewhere: wrmsr to LSTAR, then to SYSENTER_EIP. The VMM's
 * MSR filter sends both writes to the VMM, which refuses them with #GP
 * (deny-fault). The module's #GP handler notes each refusal and skips the
 * wrmsr; then a ring-3 task makes a system call through the untouched LSTAR.
 *
 * GV-RESULT scenario=lstar-hook attempts=2 refused=<n> lstar_intact=<0|1> uid=<getuid>
 */
#include "exception.h"
#include "io.h"
#include "scenario.h"
#include "serial.h"
#include "syscall.h"
#include "task.h"
#include "trap.h"
#include <stddef.h>
#include "user_tasks.h"

#define VEC_GP 13
#define MSR_SYSENTER_EIP 0x176
#define WRMSR_LEN 2 /* 0f 30 */

static volatile unsigned refused;

/* A #GP at a wrmsr of ours: the write was refused. Skip it and go on. */
static void hook_gp_handler(struct trap_frame *tf)
{
	const uint8_t *insn = (const uint8_t *)tf->rip;
	if ((tf->cs & 3) == 0 && insn[0] == 0x0f && insn[1] == 0x30) {
		refused++;
		gv_hypercall(GV_HC_REPORT_EXCEPTION, tf->vector, tf->rip, GV_GUEST_ACTION_HANDLED);
		tf->rip += WRMSR_LEN;
		return;
	}
	exception_default(tf);
}

__attribute__((noinline, used)) void evil_module_lstar_hook(uint64_t target)
{
	wrmsr(MSR_LSTAR, target);
	wrmsr(MSR_SYSENTER_EIP, target);
}

TRAP_OVERRIDE(hook_gp_override, VEC_GP, hook_gp_handler);

int scenario_lstar_hook(void)
{
	uint64_t before = rdmsr(MSR_LSTAR);
	trap_use(&hook_gp_override);
	evil_module_lstar_hook(0x100000 + 0x4242);
	trap_use(NULL);
	int intact = rdmsr(MSR_LSTAR) == before && before == (uint64_t)syscall_entry;

	static const struct task t = { "getuid", user_getuid_task, 0, USER_STACK_TOP(0) };
	struct task_result r;
	task_run(&t, &r);
	kprintf("GV-RESULT scenario=lstar-hook attempts=2 refused=%u lstar_intact=%d uid=%lu\n", refused, intact,
		r.faulted ? 0 : r.code);
	return 0;
}
