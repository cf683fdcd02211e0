/*
 * IDT, one stub per vector, and the common exception entry.
 *
 * The IDT is built by the assembler and linker, not at run time: it lives in
 * .rodata (so the VMM protects it like code) and costs no ring-0 instructions
 * to set up. A gate needs bits 15:0 and 31:16 of its handler's address as
 * separate fields; bits 15:0 are emitted as a 16-bit relocation of
 * (stub - GV_KERNEL_BASE), bits 31:16 are GV_KERNEL_BASE >> 16. That requires
 * all stubs to lie in [GV_KERNEL_BASE, GV_KERNEL_BASE + 64 KiB): the linker
 * reports "relocation truncated to fit" otherwise, and linker.ld asserts it.
 *
 * Stub for vector v (16 bytes apart):
 *   [pushq $0]  unless the CPU pushes an error code (8, 10-14, 17, 21, 29, 30)
 *   pushq $v
 *   jmp gv_exception_entry
 * (at most 2 + 5 + 5 bytes; linker.ld asserts that the stubs total
 * IDT_VECTORS * STUB_SIZE bytes, i.e. that none outgrew its slot)
 * so at gv_exception_entry: [rsp] = vector, [rsp+8] = error code,
 * [rsp+16] = rip, cs, rflags, rsp, ss.
 * The one exception is #PF (14): its stub jumps to pf_entry, which pushes the
 * vector itself after checking for a system call (see below).
 *
 * All gates are DPL 0 interrupt gates except vector 3 (DPL 3, so `int3` in a
 * task is reported as #BP rather than #GP); #DF runs on IST1.
 */
#include "layout.h"

#define IDT_VECTORS 256
#define STUB_SIZE 16
#define GATE_INTR 0x8e		/* present, DPL 0, 64-bit interrupt gate */
#define GATE_INTR_USER 0xee	/* same, DPL 3: `int3` from ring 3 reaches its handler */
#define VEC_PF 14
#define HAS_ERRCODE(v) ((v) == 8 || ((v) >= 10 && (v) <= 14) || (v) == 17 || (v) == 21 || (v) == 29 || (v) == 30)

/*
 * .altmacro lets `%vec` pass the counter's current value (not the symbol) to
 * the macros. GAS comparisons yield -1 for true, so flags are chosen with .if.
 */
	.altmacro
	.macro isr_stub v
	.balign	STUB_SIZE, 0xcc
	.if	\v == VEC_PF
	jmp	pf_entry
	.else
	.if	!HAS_ERRCODE(\v)
	pushq	$0
	.endif
	pushq	$\v
	jmp	gv_exception_entry
	.endif
	.endm

	.macro idt_gate v
	.word	gv_isr_stubs + \v * STUB_SIZE - GV_KERNEL_BASE	/* offset 15:0 */
	.word	SEL_KCODE
	.if	\v == 8
	.byte	1					/* IST1: double fault */
	.else
	.byte	0
	.endif
	.if	\v == 3
	.byte	GATE_INTR_USER
	.else
	.byte	GATE_INTR
	.endif
	.word	GV_KERNEL_BASE >> 16			/* offset 31:16 */
	.long	0					/* offset 63:32 */
	.long	0
	.endm

	.section .text.isr, "ax", @progbits
	.balign	STUB_SIZE
	.globl gv_isr_stubs
gv_isr_stubs:
	.set	vec, 0
	.rept	IDT_VECTORS
	isr_stub %vec
	.set	vec, vec + 1
	.endr
	.balign	STUB_SIZE, 0xcc
	.globl gv_isr_stubs_end
gv_isr_stubs_end:

/*
 * #PF first checks for a system call that the host left in ring 3 (see
 * syscall_from_fault in syscall_entry.S): a ring-3 fault at syscall_entry.
 * Every other page fault takes the common path like any vector.
 */
pf_entry:
	cmpq	$syscall_entry, 8(%rsp)	/* RIP (after the error code) */
	jne	1f
	testb	$3, 16(%rsp)		/* CS RPL: from ring 3? */
	jnz	syscall_from_fault
1:	pushq	$VEC_PF
	jmp	gv_exception_entry

/*
 * Common path for every vector. The host puts a hardware breakpoint on the
 * first instruction, so this must stay a global label right here.
 * Saves all GPRs as a struct trap_frame (include/trap.h), calls
 * trap_dispatch(frame) with RSP 16-byte aligned (CPU frame + 2 stub words +
 * 15 registers = 22 words from the aligned RSP the CPU started at), then
 * restores and returns with iretq.
 */
	.text
	.globl gv_exception_entry
	.type gv_exception_entry, @function
gv_exception_entry:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	cld
	mov	%rsp, %rdi
	call	trap_dispatch
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	add	$16, %rsp		/* vector, error code */
	iretq
	.size gv_exception_entry, . - gv_exception_entry

	.globl idt_load
	.type idt_load, @function
idt_load:
	lidt	gv_idtr(%rip)
	ret
	.size idt_load, . - idt_load

	.section .rodata
	.balign	16
	.globl gv_idt
gv_idt:
	.set	vec, 0
	.rept	IDT_VECTORS
	idt_gate %vec
	.set	vec, vec + 1
	.endr
gv_idt_end:
	.size gv_idt, gv_idt_end - gv_idt

	.balign	8
gv_idtr:
	.word	gv_idt_end - gv_idt - 1
	.quad	gv_idt

	.section .note.GNU-stack, "", @progbits
