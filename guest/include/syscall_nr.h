/*
 * System call numbers, shared by the kernel and ring-3 code.
 * Convention: `syscall` with RAX = number, arguments in RDI, RSI, RDX; result
 * in RAX. RCX and R11 are clobbered by the instruction, RDI, RSI, RDX, R8-R10
 * are cleared on return; other registers are preserved.
 */
#ifndef GV_SYSCALL_NR_H
#define GV_SYSCALL_NR_H

#define SYS_EXIT 0   /* (code): ends the task, never returns */
#define SYS_WRITE 1  /* (buf, len): writes to COM1; returns len, or -1 if buf is not user memory */
#define SYS_GETPID 2 /* (): the task's pid */
#define SYS_GETUID 3 /* (): the task's uid (always 1000) */
#define SYS_DRIVER 4 /* (op, arg): a driver's request; -1 when no driver is loaded */
#define SYS_COUNT 5

#define GV_TASK_UID 1000

#endif /* GV_SYSCALL_NR_H */
