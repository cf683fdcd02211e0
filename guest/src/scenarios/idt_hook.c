/*
 * idt-hook: the kernel sealed its IDT at boot (HC_SEAL); a module then
 * overwrites the gate of #PF (vector 14) with a handler of its own. The IDT
 * lives in .rodata, backed by read-only memory in the host: the write exits to
 * the VMM and is denied.
 *
 * GV-RESULT scenario=idt-hook attempts=1 changed=<0|1>
 */
#include "scenario.h"
#include "serial.h"
#include <stdint.h>

extern char gv_idt[];

__attribute__((noinline, used)) void rootkit_pf_handler(void)
{
	for (;;)
		;
}

__attribute__((noinline, used)) void evil_module_idt_hook(volatile uint64_t *gate)
{
	uint64_t h = (uint64_t)rootkit_pf_handler;
	/* offset 15:0, selector 0x08, present 64-bit interrupt gate, offset 31:16 */
	gate[0] = (h & 0xffff) | (0x08ULL << 16) | (0x8eULL << 40) | (((h >> 16) & 0xffff) << 48);
}

int scenario_idt_hook(void)
{
	volatile uint64_t *gate = (volatile uint64_t *)(gv_idt + 14 * 16);
	uint64_t before = gate[0];
	evil_module_idt_hook(gate);
	kprintf("GV-RESULT scenario=idt-hook attempts=1 changed=%d\n", gate[0] != before);
	return 0;
}
