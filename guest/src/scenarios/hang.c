/*
 * hang: the kernel spins with interrupts off and never exits to the VMM
 * again. The VMM's watchdog sees no progress, records a hang and restarts the
 * guest; after the restart the kernel completes.
 *
 * GV-RESULT scenario=hang restarted=<restart count>
 */
#include "scenario.h"
#include "serial.h"

int scenario_hang(void)
{
	if (gv_restart_count == 0) {
		kprintf("hang: spinning with interrupts off\n");
		for (;;)
			__asm__ volatile("cli; pause");
	}
	kprintf("GV-RESULT scenario=hang restarted=%u\n", gv_restart_count);
	return 0;
}
