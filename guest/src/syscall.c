/*
 * System calls.
 *
 * `syscall_table` is const, so it lands in .rodata, which the VMM backs with
 * read-only memory: a kernel "module" that tries to hook an entry has its write
 * dropped (see scenarios/syscall_hook.c). Dispatch reads the table through a
 * volatile pointer so each call really loads the current entry.
 *
 * Entry: syscall_entry.S (LSTAR, plus the #PF route some hosts need).
 * STAR: kernel CS 0x08 in bits 47:32 (syscall: CS 0x08, SS 0x10); user base
 * 0x10 in bits 63:48 (sysretq: CS 0x10+16 = 0x20|3, SS 0x10+8 = 0x18|3),
 * which is why the GDT puts user data (0x18) right below user code (0x20).
 */
#include "syscall.h"
#include "io.h"
#include "layout.h"
#include "serial.h"
#include "task.h"

#define RFLAGS_TF (1u << 8)
#define RFLAGS_IF (1u << 9)
#define RFLAGS_DF (1u << 10)
#define RFLAGS_AC (1u << 18)

uint64_t syscall_count;

static int64_t sys_exit(uint64_t code, uint64_t a2, uint64_t a3)
{
	(void)a2;
	(void)a3;
	task_exit_current(code);
}

/* The buffer must lie entirely inside ring-3 memory (.utext, .udata). */
static int user_range_ok(uint64_t buf, uint64_t len)
{
	uint64_t start = (uint64_t)__user_start, end = (uint64_t)__user_end;
	return buf >= start && buf <= end && len <= end - buf;
}

static int64_t sys_write(uint64_t buf, uint64_t len, uint64_t a3)
{
	(void)a3;
	if (!user_range_ok(buf, len))
		return -1;
	serial_write((const char *)buf, len);
	return (int64_t)len;
}

static int64_t sys_getpid(uint64_t a1, uint64_t a2, uint64_t a3)
{
	(void)a1;
	(void)a2;
	(void)a3;
	return task_current_pid();
}

static int64_t sys_getuid(uint64_t a1, uint64_t a2, uint64_t a3)
{
	(void)a1;
	(void)a2;
	(void)a3;
	return GV_TASK_UID;
}

/* A loaded "driver"'s request handler (driver-exploit loads one), or none. */
int64_t (*gv_driver_request)(uint64_t op, uint64_t arg);

static int64_t sys_driver(uint64_t op, uint64_t arg, uint64_t a3)
{
	(void)a3;
	return gv_driver_request ? gv_driver_request(op, arg) : -1;
}

const syscall_fn syscall_table[SYS_COUNT] = {
	[SYS_EXIT] = sys_exit,
	[SYS_WRITE] = sys_write,
	[SYS_GETPID] = sys_getpid,
	[SYS_GETUID] = sys_getuid,
	[SYS_DRIVER] = sys_driver,
};

int64_t syscall_dispatch(uint64_t nr, uint64_t a1, uint64_t a2, uint64_t a3)
{
	syscall_count++;
	if (nr >= SYS_COUNT)
		return -1;
	return syscall_lookup(nr)(a1, a2, a3);
}

void syscall_init(void)
{
	uint64_t efer = rdmsr(MSR_EFER);
	if (!(efer & EFER_SCE)) /* the VMM sets it; only write when needed */
		wrmsr(MSR_EFER, efer | EFER_SCE);
	/* sysretq uses base+16 for CS and base+8 for SS */
	wrmsr(MSR_STAR, ((uint64_t)(SEL_UDATA - 8) << 48) | ((uint64_t)SEL_KCODE << 32));
	wrmsr(MSR_LSTAR, (uint64_t)syscall_entry);
	wrmsr(MSR_SFMASK, RFLAGS_IF | RFLAGS_TF | RFLAGS_DF | RFLAGS_AC);
}
