/*
 * idtr-swap: a module builds a rogue IDT in writable memory and loads it with
 * lidt. The write itself is to .data, so nothing exits; the VMM notices the
 * IDTR differs from the one sealed at boot at the next exit (the module's
 * heartbeat), records an integrity event and, per policy, restarts the guest.
 *
 * GV-RESULT scenario=idtr-swap restarted=<restart count>
 */
#include "io.h"
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

extern char gv_idt[];
#define IDT_BYTES (256 * 16)

static uint8_t rogue_idt[IDT_BYTES] __attribute__((aligned(16), section(".data")));

__attribute__((noinline, used)) void evil_module_idtr_swap(void)
{
	for (unsigned i = 0; i < IDT_BYTES; i++)
		rogue_idt[i] = (uint8_t)gv_idt[i];
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = { IDT_BYTES - 1, (uint64_t)rogue_idt };
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

int scenario_idtr_swap(void)
{
	if (gv_restart_count == 0) {
		evil_module_idtr_swap();
		gv_hypercall(GV_HC_HEARTBEAT, 0, 0, 0);
		kprintf("idtr-swap: the rogue IDT is in place and nobody noticed\n");
	}
	kprintf("GV-RESULT scenario=idtr-swap restarted=%u\n", gv_restart_count);
	return 0;
}
