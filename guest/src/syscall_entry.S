/*
 * System call entry points. Tasks always use the SYSCALL instruction; it
 * arrives at one of two places depending on the host:
 *   syscall_entry       the architectural path (LSTAR), leaves with sysretq;
 *   syscall_from_fault  hosts whose SYSCALL stays in ring 3 (see below),
 *                       leaves with iretq.
 * Both call syscall_dispatch(nr, a1, a2, a3) on trap_stack (also TSS.rsp0:
 * only ever entered from ring 3, never nested) and leave the same registers:
 * RAX = result, RCX/R11 clobbered, RDI/RSI/RDX/R8-R10 cleared, the rest kept.
 */

/*
 * LSTAR. On entry: RCX = user RIP, R11 = user RFLAGS, RAX = number,
 * RDI/RSI/RDX = arguments, RSP = still the user stack, IF/TF/DF/AC cleared
 * by SFMASK. Single CPU, no preemption: the user RSP goes in a global.
 */
	.text
	.globl syscall_entry
	.type syscall_entry, @function
syscall_entry:
	mov	%rsp, syscall_user_rsp(%rip)
	lea	trap_stack_top(%rip), %rsp
	pushq	%rcx			/* user RIP */
	pushq	%r11			/* user RFLAGS; RSP is 16-byte aligned again */
	mov	%rdx, %rcx		/* syscall_dispatch(nr, a1, a2, a3) */
	mov	%rsi, %rdx
	mov	%rdi, %rsi
	mov	%rax, %rdi
	call	syscall_dispatch	/* SYS_EXIT does not come back here */
	popq	%r11
	popq	%rcx
	xor	%edi, %edi		/* do not hand kernel values to ring 3 */
	xor	%esi, %esi
	xor	%edx, %edx
	xor	%r8d, %r8d
	xor	%r9d, %r9d
	xor	%r10d, %r10d
	mov	syscall_user_rsp(%rip), %rsp
	sysretq
	.size syscall_entry, . - syscall_entry

/*
 * SYSCALL on hosts that do not switch to ring 0 for it.
 *
 * Under some hypervisors (kvm_pvm running a guest whose kernel it emulates)
 * SYSCALL from ring 3 loads RIP = LSTAR, RCX, R11 and masks RFLAGS, but stays
 * in ring 3. The first fetch at syscall_entry then raises #PF (a supervisor
 * page), and that does enter ring 0 through the IDT, on TSS.rsp0. The #PF
 * path (pf_entry in idt.S) sends a ring-3 #PF whose RIP is syscall_entry
 * here: it finishes the system call with the same dispatch and register
 * contract, and returns with iretq to the instruction after the SYSCALL.
 *
 * Everything in the frame came from ring 3 (a task can also just jump to
 * syscall_entry), so only user-settable flags are taken from R11; CS, SS and
 * RSP in the frame are already the task's.
 *
 * On entry: [rsp] = #PF error code, then RIP (= syscall_entry), CS, RFLAGS,
 * RSP, SS; RAX = number, RDI/RSI/RDX = arguments, RCX = return RIP,
 * R11 = the task's RFLAGS.
 */
#define USER_RFLAGS_MASK 0xcd5	/* CF PF AF ZF SF DF OF */
#define RFLAGS_FIXED 0x2

	.globl syscall_from_fault
	.type syscall_from_fault, @function
syscall_from_fault:
	cld				/* the task may have set DF; SFMASK did not run */
	mov	%rcx, 8(%rsp)		/* iret RIP: after the SYSCALL */
	and	$USER_RFLAGS_MASK, %r11d
	or	$RFLAGS_FIXED, %r11d
	mov	%r11, 24(%rsp)		/* iret RFLAGS */
	mov	%rdx, %rcx		/* syscall_dispatch(nr, a1, a2, a3); the error */
	mov	%rsi, %rdx		/* code word keeps RSP 16-byte aligned */
	mov	%rdi, %rsi
	mov	%rax, %rdi
	call	syscall_dispatch	/* SYS_EXIT does not come back here */
	add	$8, %rsp		/* error code */
	xor	%ecx, %ecx		/* same contract as sysretq: RCX, R11 */
	xor	%r11d, %r11d		/* clobbered, the rest cleared */
	xor	%edi, %edi
	xor	%esi, %esi
	xor	%edx, %edx
	xor	%r8d, %r8d
	xor	%r9d, %r9d
	xor	%r10d, %r10d
	iretq
	.size syscall_from_fault, . - syscall_from_fault

	.bss
	.balign 8
syscall_user_rsp:
	.skip	8

	.section .note.GNU-stack, "", @progbits
