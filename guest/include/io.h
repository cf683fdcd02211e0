/* Port I/O, MSRs, control registers and the debug-exit port. */
#ifndef GV_IO_H
#define GV_IO_H
#include <stddef.h>
#include <stdint.h>
#include "gv_abi.h"

#define MSR_EFER 0xc0000080
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_SFMASK 0xc0000084
#define EFER_SCE (1u << 0)

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* `rep outsb`: the VMM handles a whole buffer in one exit. */
static inline void outsb(uint16_t port, const void *buf, size_t len)
{
	__asm__ volatile("rep outsb" : "+S"(buf), "+c"(len) : "d"(port) : "memory");
}

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static inline uint64_t read_cr2(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr2, %0" : "=r"(v));
	return v;
}

static inline uint64_t read_cr3(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr3, %0" : "=r"(v));
	return v;
}

static inline void write_cr3(uint64_t v)
{
	__asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory");
}

static inline uint64_t read_cr0(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr0, %0" : "=r"(v));
	return v;
}

static inline void write_cr0(uint64_t v)
{
	__asm__ volatile("mov %0, %%cr0" : : "r"(v) : "memory");
}

static inline void invlpg(const void *va)
{
	__asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

/* A Guardvisor hypercall (docs/guest-abi.md): EAX = number, args in RDI, RSI, RCX; result in RAX. */
static inline uint64_t gv_hypercall(uint32_t nr, uint64_t a0, uint64_t a1, uint64_t a2)
{
	uint64_t rax = nr;
	__asm__ volatile("outl %%eax, %%dx"
			 : "+a"(rax)
			 : "d"(GV_PORT_HYPERCALL), "D"(a0), "S"(a1), "c"(a2)
			 : "memory");
	return rax;
}

/* Stop the VM: the VMM takes `code` as the guest's exit code. */
__attribute__((noreturn)) static inline void gv_exit(uint32_t code)
{
	outl(GV_PORT_DEBUG_EXIT, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

#endif /* GV_IO_H */
