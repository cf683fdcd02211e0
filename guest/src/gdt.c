/*
 * GDT and TSS.
 *
 * Layout (required by syscall/sysret, see syscall.c):
 *   0x00 null, 0x08 kernel code, 0x10 kernel data, 0x18 user data,
 *   0x20 user code, 0x28 TSS (16-byte descriptor).
 * Descriptors are built with their accessed bit already set so the CPU never
 * has to write to the table when loading a segment.
 *
 * The TSS provides rsp0 (the trap/syscall stack), IST1 (double faults) and an
 * I/O permission bitmap: ring 3 may use exactly COM1 (0x3f8-0x3ff), the debug
 * exit port and the hypercall port (RFLAGS.IOPL is not honoured for ring 3 on
 * every host, so the bitmap is the only grant). The bitmap covers ports
 * 0..IOPB_PORTS-1; the TSS limit ends right after its terminating 0xff byte, so
 * every higher port is denied as well.
 */
#include "gdt.h"
#include "gv_abi.h"
#include "layout.h"
#include <stddef.h>
#include <stdint.h>

#define IOPB_PORTS 0x400 /* covers COM1, the highest granted port */
#define IOPB_BYTES (IOPB_PORTS / 8)

struct tss {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iopb_offset;
	uint8_t iopb[IOPB_BYTES + 1]; /* one bit per port, 1 = denied; then 0xff */
} __attribute__((packed));

_Static_assert(offsetof(struct tss, iopb) == 104, "TSS layout");
_Static_assert(GV_PORT_COM1 % 8 == 0 && GV_PORT_COM1 + 8 <= IOPB_PORTS, "COM1 in the bitmap");
_Static_assert(GV_PORT_DEBUG_EXIT < IOPB_PORTS && GV_PORT_HYPERCALL < IOPB_PORTS, "ports in the bitmap");

static struct tss tss __attribute__((aligned(16))) = {
	.rsp = { (uint64_t)trap_stack_top },
	.ist = { (uint64_t)df_stack_top },
	.iopb_offset = offsetof(struct tss, iopb),
	.iopb = { [0 ... IOPB_BYTES] = 0xff },
};

static uint64_t gdt[7] __attribute__((aligned(16))) = {
	[SEL_NULL / 8] = 0,
	[SEL_KCODE / 8] = 0x00af9b000000ffffULL, /* P, DPL0, code RX accessed, L */
	[SEL_KDATA / 8] = 0x00cf93000000ffffULL, /* P, DPL0, data RW accessed */
	[SEL_UDATA / 8] = 0x00cff3000000ffffULL, /* P, DPL3, data RW accessed */
	[SEL_UCODE / 8] = 0x00affb000000ffffULL, /* P, DPL3, code RX accessed, L */
	/* SEL_TSS: filled in by gdt_init (the TSS address is only known at link time) */
};

static inline void iopb_allow(unsigned port)
{
	tss.iopb[port / 8] &= (uint8_t)~(1u << (port % 8));
}

void gdt_init(void)
{
	uint64_t base = (uint64_t)&tss;
	uint64_t limit = sizeof(tss) - 1;

	gdt[SEL_TSS / 8] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
			   (0x89ULL << 40) /* P, 64-bit TSS (available) */ |
			   (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	gdt[SEL_TSS / 8 + 1] = base >> 32;

	tss.iopb[GV_PORT_COM1 / 8] = 0; /* 0x3f8..0x3ff */
	/* 32-bit ports: a 4-byte access checks the bits of all four bytes. */
	for (unsigned i = 0; i < 4; i++) {
		iopb_allow(GV_PORT_DEBUG_EXIT + i);
		iopb_allow(GV_PORT_HYPERCALL + i);
	}

	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) gdtr = { sizeof(gdt) - 1, (uint64_t)gdt };

	__asm__ volatile("lgdt %0\n\t"
			 "mov %w1, %%ds\n\t"
			 "mov %w1, %%es\n\t"
			 "mov %w1, %%ss\n\t"
			 "mov %w1, %%fs\n\t"
			 "mov %w1, %%gs\n\t"
			 "pushq %2\n\t" /* far return reloads CS */
			 "lea 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:\n\t"
			 "ltr %w3"
			 :
			 : "m"(gdtr), "r"(SEL_KDATA), "i"(SEL_KCODE), "r"(SEL_TSS)
			 : "rax", "memory");
}
