/*
 * Switching between kmain's context and a ring-3 task.
 *
 * uint64_t run_task(entry, user_rsp, arg)
 *   Saves the callee-saved registers and RSP, then enters ring 3 at `entry`
 *   with RSP = user_rsp, RDI = arg, RFLAGS = 0x2 (interrupts stay off: there
 *   are none) and every other register cleared. It "returns" when the task
 *   ends: task_return(value) restores the saved context and returns `value`.
 *
 * void task_return(uint64_t value)
 *   Called from the syscall or trap path on the rsp0/syscall stack; that stack
 *   is simply abandoned (the next entry from ring 3 starts at its top again).
 */
#include "layout.h"

	.text
	.globl run_task
	.type run_task, @function
run_task:
	pushq	%rbp
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	mov	%rsp, task_kernel_rsp(%rip)

	pushq	$(SEL_UDATA | RPL_USER)	/* SS */
	pushq	%rsi			/* RSP */
	pushq	$0x2			/* RFLAGS */
	pushq	$(SEL_UCODE | RPL_USER)	/* CS */
	pushq	%rdi			/* RIP */
	mov	%rdx, %rdi		/* arg */
	xor	%eax, %eax		/* no kernel values leak into ring 3 */
	xor	%ebx, %ebx
	xor	%ecx, %ecx
	xor	%edx, %edx
	xor	%esi, %esi
	xor	%ebp, %ebp
	xor	%r8d, %r8d
	xor	%r9d, %r9d
	xor	%r10d, %r10d
	xor	%r11d, %r11d
	xor	%r12d, %r12d
	xor	%r13d, %r13d
	xor	%r14d, %r14d
	xor	%r15d, %r15d
	iretq
	.size run_task, . - run_task

	.globl task_return
	.type task_return, @function
task_return:
	mov	task_kernel_rsp(%rip), %rsp
	mov	%rdi, %rax
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	popq	%rbp
	ret
	.size task_return, . - task_return

	.bss
	.balign 8
task_kernel_rsp:
	.skip	8

	.section .note.GNU-stack, "", @progbits
