/*
 * Kernel entry and stacks.
 *
 * The VMM enters _start in 64-bit mode, CPL 0, with RDI = &struct gv_boot_info
 * and RSP inside the boot area (docs/guest-abi.md). We move to our own stack in
 * .bss (zero-filled by the loader, never cleared here) and call kmain(bi).
 */
#include "layout.h"

	.section .text.entry, "ax", @progbits
	.globl _start
	.type _start, @function
_start:
	lea	boot_stack_top(%rip), %rsp
	xor	%ebp, %ebp
	call	kmain			/* kmain(bi): RDI is still the boot info */
1:	cli
	hlt
	jmp	1b
	.size _start, . - _start

	.section .bss
	.balign 16
	/* kmain and everything it calls, including the scenario code. */
	.globl boot_stack_top
boot_stack:
	.skip	KERNEL_STACK_SIZE
boot_stack_top:

	/* TSS.rsp0 and syscall_entry: traps and syscalls from ring 3. */
	.globl trap_stack_top
trap_stack:
	.skip	KERNEL_STACK_SIZE
trap_stack_top:

	/* TSS.ist[0]: double faults, so a broken kernel stack still ends in PANIC. */
	.globl df_stack_top
df_stack:
	.skip	DF_STACK_SIZE
df_stack_top:

	.section .note.GNU-stack, "", @progbits
