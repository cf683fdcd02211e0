/*
 * user-fault: exercises the guest's own exception handling. Two ring-3 tasks
 * fault (a write to kernel memory: #PF; an `out` to a port the TSS bitmap
 * denies: #GP); each gets a TASK-FAULT line and is ended, and the kernel
 * carries on with the next task, which writes to COM1 directly (a granted
 * port) and exits normally.
 *
 * GV-RESULT scenario=user-fault tasks=3 faults=<n> pf=<0|1> gp=<0|1>
 *           survivor=<0|1> intact=<0|1>
 *   intact=1 if the kernel word the intruder aimed at is unchanged.
 */
#include "scenario.h"
#include "serial.h"
#include "task.h"
#include "user_tasks.h"

#define VEC_GP 13
#define VEC_PF 14
#define TARGET_VALUE 0x676b2d6b65726e6cULL

/* The intruder's target: an ordinary kernel .data word. */
static uint64_t fault_target __attribute__((section(".data"))) = TARGET_VALUE;

static const struct task tasks[] = {
	{ "intruder", user_intruder_task, (uint64_t)&fault_target, USER_STACK_TOP(0) },
	{ "port-probe", user_port_probe_task, 0, USER_STACK_TOP(1) },
	{ "survivor", user_survivor_task, 0, USER_STACK_TOP(2) },
};

int scenario_user_fault(void)
{
	struct task_result r[3];
	unsigned faults = 0;
	for (int i = 0; i < 3; i++) {
		task_run(&tasks[i], &r[i]);
		faults += r[i].faulted;
	}
	int pf = r[0].faulted && r[0].code == VEC_PF;
	int gp = r[1].faulted && r[1].code == VEC_GP;
	int survivor = !r[2].faulted && r[2].code == 0;
	int intact = *(volatile uint64_t *)&fault_target == TARGET_VALUE;
	kprintf("GV-RESULT scenario=user-fault tasks=3 faults=%u pf=%d gp=%d survivor=%d intact=%d\n",
		faults, pf, gp, survivor, intact);
	return 0;
}
