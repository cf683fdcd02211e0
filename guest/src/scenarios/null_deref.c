/*
 * null-deref: a kernel module dereferences a null pointer. The #PF (vector
 * 14, ring 0) is captured by the VMM; the guest's exception module reports a
 * panic and stops the VM; the VMM records the crash and, per policy, restarts
 * the guest. After the restart (restart=1 on the command line) the kernel
 * completes normally.
 *
 * GV-RESULT scenario=null-deref restarted=<restart count>
 */
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

struct module_state {
	uint64_t flags;
};

__attribute__((noinline, used)) void buggy_module_init(volatile struct module_state *st)
{
	st->flags |= 1; /* st is NULL: the load faults (#PF in ring 0, a read of page 0) */
}

int scenario_null_deref(void)
{
	if (gv_restart_count == 0) {
		struct module_state *volatile st = 0;
		buggy_module_init(st);
		kprintf("null-deref: survived a null dereference?\n");
	}
	kprintf("GV-RESULT scenario=null-deref restarted=%u\n", gv_restart_count);
	return 0;
}
