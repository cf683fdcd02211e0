/*
 * Ring-3 side: system call wrappers and a tiny line builder for task code in
 * src/user/. Everything a task uses must itself be user code (the build checks
 * that src/user/ objects reference no kernel symbols).
 */
#ifndef GV_USER_H
#define GV_USER_H
#include <stddef.h>
#include <stdint.h>
#include "layout.h"
#include "syscall_nr.h"
#include "user_tasks.h"

static inline int64_t u_syscall(uint64_t nr, uint64_t a1, uint64_t a2, uint64_t a3)
{
	/* The kernel clears RDI, RSI, RDX, R8-R10 on return; RCX/R11 are the CPU's. */
	register uint64_t r8 __asm__("r8");
	register uint64_t r9 __asm__("r9");
	register uint64_t r10 __asm__("r10");
	__asm__ volatile("syscall"
			 : "+a"(nr), "+D"(a1), "+S"(a2), "+d"(a3), "=r"(r8), "=r"(r9), "=r"(r10)
			 :
			 : "rcx", "r11", "memory");
	return (int64_t)nr;
}

__attribute__((noreturn)) static inline void u_exit(uint64_t code)
{
	u_syscall(SYS_EXIT, code, 0, 0);
	__builtin_unreachable();
}

static inline int64_t u_write(const void *buf, size_t len)
{
	return u_syscall(SYS_WRITE, (uint64_t)buf, len, 0);
}

static inline int64_t u_getpid(void)
{
	return u_syscall(SYS_GETPID, 0, 0, 0);
}

static inline int64_t u_driver(uint64_t op, uint64_t arg)
{
	return u_syscall(SYS_DRIVER, op, arg, 0);
}

static inline int64_t u_getuid(void)
{
	return u_syscall(SYS_GETUID, 0, 0, 0);
}

/* A line under construction (ulib.c). Output beyond the buffer is dropped. */
struct uline {
	size_t len;
	char buf[120];
};

void ul_str(struct uline *l, const char *s);
void ul_dec(struct uline *l, uint64_t v);
void ul_hex(struct uline *l, uint64_t v);
/* Appends '\n' and writes the line with SYS_WRITE. */
void ul_write(struct uline *l);

#endif /* GV_USER_H */
