/*
 * triple-fault: the kernel loads an empty IDT and executes ud2: #UD cannot be
 * delivered (#GP), nor can that (#DF), so the CPU shuts down: a triple fault.
 * The VMM sees KVM_EXIT_SHUTDOWN, records the crash and restarts the guest;
 * after the restart the kernel completes.
 *
 * GV-RESULT scenario=triple-fault restarted=<restart count>
 */
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

int scenario_triple_fault(void)
{
	if (gv_restart_count == 0) {
		static const struct {
			uint16_t limit;
			uint64_t base;
		} __attribute__((packed)) empty = { 0, 0 };
		__asm__ volatile("lidt %0\n\tud2" : : "m"(empty));
	}
	kprintf("GV-RESULT scenario=triple-fault restarted=%u\n", gv_restart_count);
	return 0;
}
