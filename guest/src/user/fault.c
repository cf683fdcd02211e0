/* Ring-3 tasks of the user-fault scenario. */
#include "gv_abi.h"
#include "user.h"

/* Write to a kernel address (supervisor page): #PF, the kernel ends the task. */
void user_intruder_task(uint64_t arg)
{
	*(volatile uint64_t *)arg = 0x6261646261646261ULL;
	u_exit(0); /* not reached */
}

/* Port 0x80 is not in the TSS I/O bitmap: #GP, the kernel ends the task. */
void user_port_probe_task(uint64_t arg)
{
	(void)arg;
	__asm__ volatile("outb %%al, $0x80" : : "a"(0));
	u_exit(0); /* not reached */
}

/* COM1 is in the I/O bitmap: one `rep outsb` straight from ring 3. */
void user_survivor_task(uint64_t arg)
{
	(void)arg;
	static const char msg[] = "user-fault: survivor writes to COM1 from ring 3\n";
	const char *p = msg;
	size_t n = sizeof(msg) - 1;
	__asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"(GV_PORT_COM1) : "memory");
	u_exit(0);
}

/* Integer division by zero (the divisor comes from memory, so it is not folded): #DE. */
void user_divzero_task(uint64_t arg)
{
	static volatile uint64_t divisor;
	volatile uint64_t q = (arg + 1000) / divisor;
	u_exit(q); /* not reached */
}

/* exception-storm: `arg` times ud2; the kernel resumes after each one. */
void user_storm_task(uint64_t arg)
{
	for (uint64_t i = 0; i < arg; i++)
		__asm__ volatile("ud2" ::: "memory");
	u_exit(0);
}
