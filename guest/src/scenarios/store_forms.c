/*
 * store-*: a matrix of store forms, one scenario each. A module tries one
 * instruction that writes protected kernel memory (.text or .rodata, which the
 * VMM backs with read-only memory), then reads the target back. Under the
 * default policy each write exits to the VMM and is denied: the bytes never
 * land and the guest goes on after the instruction.
 *
 *   store-rep-movsb     cld; rep movsb, 16 bytes into .text
 *   store-rep-stosq-df  std; rep stosq, 3 qwords downwards into .text (then cld)
 *   store-lock-add      lock addq $1 on a .text qword
 *   store-xchg          xchg %rax with a .text qword (implicitly locked)
 *   store-bts           lock btsq $5 on a .text qword (the bit is 0)
 *   store-cmpxchg       lock cmpxchg %rdx with RAX equal to the .text qword
 *   store-movnti        movnti %rax, a non-temporal 8-byte store into .text
 *   store-push          pushq with RSP pointed into .rodata (interrupts off)
 *   store-call          call with RSP pointed into .rodata: the return address
 *                       is the write; the callee is the next instruction
 *   store-movdqu        16-byte SSE store to an unaligned .text address
 *   store-movntdq       16-byte non-temporal SSE store to an aligned .text address
 *   store-fxsave        fxsave: 512 bytes to an aligned .text address
 *   store-xsave         xsave (x87, SSE, AVX state: 832 bytes) to an aligned
 *                       .text address, after turning XSAVE on (CR4.OSXSAVE, XCR0)
 *   store-vmovdqu-ymm   a 32-byte AVX store to a .text address
 *   store-cross-page    an 8-byte mov 4 bytes before a page boundary in .text:
 *                       it spans two protected pages
 *   store-straddle      an 8-byte mov at __text_start - 4: 4 ordinary RAM bytes
 *                       (the page below .text), then 4 protected ones
 *
 * The .text target is gv_store_text_target (two pages in .text, filled with
 * 0xcc), the .rodata target gv_store_rodata_target (one page); the straddling
 * store hits the first bytes of .text (_start). Every writing instruction
 * carries a global label store_<form>_insn, and lives in ordinary kernel code.
 *
 * GV-RESULT scenario=store-<form> changed=<0|1> writer=0x<address>
 *   changed=1 if any protected byte the store covers differs from before;
 *   writer is the address of the storing instruction (virtual == physical).
 */
#include "layout.h"
#include "scenario.h"
#include "serial.h"
#include <stddef.h>
#include <stdint.h>

#define STR_(x) #x
#define STR(x) STR_(x)

#define TEXT_TARGET_SIZE (2 * PAGE_SIZE)
#define RODATA_TARGET_SIZE PAGE_SIZE

/*
 * The targets, in assembly so the compiler knows nothing of their contents
 * (every read of them is a real load). .text.* and .rodata.* land in .text and
 * .rodata (linker.ld); both are page-aligned and sized, so the VMM's audit
 * names them.
 */
__asm__(".pushsection .text.store_target, \"ax\", @progbits\n"
	".balign " STR(PAGE_SIZE) "\n"
	".globl gv_store_text_target\n"
	".type gv_store_text_target, @object\n"
	"gv_store_text_target:\n"
	".fill " STR(TEXT_TARGET_SIZE) ", 1, 0xcc\n"
	".size gv_store_text_target, " STR(TEXT_TARGET_SIZE) "\n"
	".popsection\n"
	".pushsection .rodata.store_target, \"a\", @progbits\n"
	".balign " STR(PAGE_SIZE) "\n"
	".globl gv_store_rodata_target\n"
	".type gv_store_rodata_target, @object\n"
	"gv_store_rodata_target:\n"
	".fill " STR(RODATA_TARGET_SIZE) ", 1, 0x5a\n"
	".size gv_store_rodata_target, " STR(RODATA_TARGET_SIZE) "\n"
	".popsection\n");

extern const uint8_t gv_store_text_target[TEXT_TARGET_SIZE];
extern const uint8_t gv_store_rodata_target[RODATA_TARGET_SIZE];

/* The writing instructions (global labels in the asm below). */
extern const char store_rep_movsb_insn[], store_rep_stosq_df_insn[], store_lock_add_insn[], store_xchg_insn[],
	store_bts_insn[], store_cmpxchg_insn[], store_movnti_insn[], store_push_insn[], store_call_insn[],
	store_movdqu_insn[], store_movntdq_insn[], store_fxsave_insn[], store_cross_page_insn[],
	store_straddle_insn[], store_xsave_insn[], store_vmovdqu_ymm_insn[];

/* Where each form writes, as offsets into its target (disjoint, for clarity). */
#define OFF_REP_MOVSB 0x000 /* 16 bytes */
#define OFF_REP_STOSQ 0x100 /* 24 bytes: the qwords at +0x110, +0x108, +0x100 */
#define OFF_LOCK_ADD 0x180
#define OFF_XCHG 0x188
#define OFF_BTS 0x190
#define OFF_CMPXCHG 0x198
#define OFF_MOVNTI 0x1a0
#define OFF_MOVDQU 0x1b3 /* 16 bytes, deliberately unaligned */
#define OFF_MOVNTDQ 0x1d0 /* 16 bytes, 16-aligned */
#define OFF_FXSAVE 0x200 /* 512 bytes, 16-aligned */
#define OFF_XSAVE 0x400 /* 832 bytes, 64-aligned */
#define OFF_VMOVDQU_YMM 0x780 /* 32 bytes */
#define OFF_CROSS_PAGE (PAGE_SIZE - 4) /* 8 bytes over the boundary of the target's two pages */
#define OFF_PUSH 0x000 /* in the .rodata target: RSP = +0x08 */
#define OFF_CALL 0x040 /* in the .rodata target: RSP = +0x48 */

#define PATTERN 0x1122334455667788ULL /* no byte of it is 0xcc or 0x5a */
#define BTS_BIT 5 /* clear in 0xcc */
#define FXSAVE_SIZE 512
#define XSAVE_SIZE 832 /* legacy area, header, AVX (XCR0 = x87 | SSE | AVX) */

static uint8_t before[XSAVE_SIZE];

static void *text_at(size_t off)
{
	return (void *)((uintptr_t)gv_store_text_target + off);
}

static void *rodata_at(size_t off)
{
	return (void *)((uintptr_t)gv_store_rodata_target + off);
}

/*
 * Snapshots the n protected bytes at check, has evil store at at, compares and
 * prints the result line.
 */
static int run_store(const char *form, void (*evil)(void *), void *at, const void *check, size_t n,
		     const char *insn)
{
	const volatile uint8_t *p = check;
	for (size_t i = 0; i < n; i++)
		before[i] = p[i];
	evil(at);
	int changed = 0;
	for (size_t i = 0; i < n; i++)
		changed |= p[i] != before[i];
	kprintf("GV-RESULT scenario=store-%s changed=%d writer=0x%lx\n", form, changed,
		(unsigned long)(uintptr_t)insn);
	return 0;
}

/*
 * The modules. noipa: each body (and so each global label) exists once. The
 * kernel is built with -mgeneral-regs-only, so no compiled code keeps a value
 * in an XMM register, and the SSE forms need not (and cannot) declare xmm0
 * clobbered.
 */
__attribute__((noipa)) static void evil_module_store_rep_movsb(void *dst)
{
	static const uint8_t src[16] = { 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
					 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f };
	const void *s = src;
	size_t n = sizeof(src);
	__asm__ volatile("cld\n"
			 ".globl store_rep_movsb_insn\n"
			 "store_rep_movsb_insn:\n\t"
			 "rep movsb"
			 : "+D"(dst), "+S"(s), "+c"(n)
			 :
			 : "memory");
}

__attribute__((noipa)) static void evil_module_store_rep_stosq_df(void *dst)
{
	void *top = (uint8_t *)dst + 16; /* the highest of the 3 qwords; DF=1 walks down */
	uint64_t n = 3;
	__asm__ volatile("std\n"
			 ".globl store_rep_stosq_df_insn\n"
			 "store_rep_stosq_df_insn:\n\t"
			 "rep stosq\n\t"
			 "cld"
			 : "+D"(top), "+c"(n)
			 : "a"(PATTERN)
			 : "memory", "cc");
}

__attribute__((noipa)) static void evil_module_store_lock_add(void *dst)
{
	__asm__ volatile(".globl store_lock_add_insn\n"
			 "store_lock_add_insn:\n\t"
			 "lock addq $1, (%0)"
			 :
			 : "r"(dst)
			 : "memory", "cc");
}

__attribute__((noipa)) static void evil_module_store_xchg(void *dst)
{
	uint64_t v = PATTERN;
	__asm__ volatile(".globl store_xchg_insn\n"
			 "store_xchg_insn:\n\t"
			 "xchgq %%rax, (%1)"
			 : "+a"(v)
			 : "r"(dst)
			 : "memory");
}

__attribute__((noipa)) static void evil_module_store_bts(void *dst)
{
	__asm__ volatile(".globl store_bts_insn\n"
			 "store_bts_insn:\n\t"
			 "lock btsq $" STR(BTS_BIT) ", (%0)"
			 :
			 : "r"(dst)
			 : "memory", "cc");
}

__attribute__((noipa)) static void evil_module_store_cmpxchg(void *dst)
{
	uint64_t expected = *(volatile uint64_t *)dst; /* equal: the cmpxchg would write */
	__asm__ volatile(".globl store_cmpxchg_insn\n"
			 "store_cmpxchg_insn:\n\t"
			 "lock cmpxchgq %%rdx, (%1)"
			 : "+a"(expected)
			 : "r"(dst), "d"(~expected)
			 : "memory", "cc");
}

__attribute__((noipa)) static void evil_module_store_movnti(void *dst)
{
	__asm__ volatile(".globl store_movnti_insn\n"
			 "store_movnti_insn:\n\t"
			 "movnti %%rax, (%0)\n\t"
			 "sfence"
			 :
			 : "r"(dst), "a"(PATTERN)
			 : "memory");
}

__attribute__((noipa)) static void evil_module_store_push(void *slot)
{
	uint64_t top = (uintptr_t)slot + 8, saved, flags;
	__asm__ volatile("pushfq\n\t"
			 "popq %[flags]\n\t"
			 "cli\n\t"
			 "movq %%rsp, %[saved]\n\t"
			 "movq %[top], %%rsp\n"
			 ".globl store_push_insn\n"
			 "store_push_insn:\n\t"
			 "pushq %[val]\n\t"
			 "movq %[saved], %%rsp\n\t"
			 "pushq %[flags]\n\t"
			 "popfq"
			 : [saved] "=&r"(saved), [flags] "=&r"(flags)
			 : [top] "r"(top), [val] "r"(PATTERN)
			 : "memory", "cc");
}

__attribute__((noipa)) static void evil_module_store_call(void *slot)
{
	uint64_t top = (uintptr_t)slot + 8, saved, flags;
	/* The callee is the next instruction: it never returns, it puts RSP back. */
	__asm__ volatile("pushfq\n\t"
			 "popq %[flags]\n\t"
			 "cli\n\t"
			 "movq %%rsp, %[saved]\n\t"
			 "movq %[top], %%rsp\n"
			 ".globl store_call_insn\n"
			 "store_call_insn:\n\t"
			 "call 1f\n"
			 "1:\n\t"
			 "movq %[saved], %%rsp\n\t"
			 "pushq %[flags]\n\t"
			 "popfq"
			 : [saved] "=&r"(saved), [flags] "=&r"(flags)
			 : [top] "r"(top)
			 : "memory", "cc");
}

/* The 16 bytes the vector forms store. Loaded with a vector load from memory: a hypervisor that
   emulates ring 0 per instruction (PVM) emulates vector moves to and from memory, not movq/punpck. */
static const uint64_t vector_pattern[2] __attribute__((aligned(16))) = { PATTERN, PATTERN };

__attribute__((noipa)) static void evil_module_store_movdqu(void *dst)
{
	__asm__ volatile("movdqa (%1), %%xmm0\n"
			 ".globl store_movdqu_insn\n"
			 "store_movdqu_insn:\n\t"
			 "movdqu %%xmm0, (%0)"
			 :
			 : "r"(dst), "r"(vector_pattern)
			 : "memory");
}

__attribute__((noipa)) static void evil_module_store_movntdq(void *dst)
{
	__asm__ volatile("movdqa (%1), %%xmm0\n"
			 ".globl store_movntdq_insn\n"
			 "store_movntdq_insn:\n\t"
			 "movntdq %%xmm0, (%0)\n\t"
			 "sfence"
			 :
			 : "r"(dst), "r"(vector_pattern)
			 : "memory");
}

__attribute__((noipa)) static void evil_module_store_fxsave(void *dst)
{
	__asm__ volatile(".globl store_fxsave_insn\n"
			 "store_fxsave_insn:\n\t"
			 "fxsave (%0)"
			 :
			 : "r"(dst)
			 : "memory");
}

__attribute__((noipa)) static void evil_module_store_xsave(void *dst)
{
	__asm__ volatile(".globl store_xsave_insn\n"
			 "store_xsave_insn:\n\t"
			 "xsave (%0)"
			 :
			 : "r"(dst), "a"(7), "d"(0)
			 : "memory");
}

/* Whatever YMM0 holds: the store is the attempt. */
__attribute__((noipa)) static void evil_module_store_vmovdqu_ymm(void *dst)
{
	__asm__ volatile(".globl store_vmovdqu_ymm_insn\n"
			 "store_vmovdqu_ymm_insn:\n\t"
			 "vmovdqu %%ymm0, (%0)"
			 :
			 : "r"(dst)
			 : "memory");
}

#define CPUID1_ECX_XSAVE (1u << 26)
#define CPUID1_ECX_AVX (1u << 28)
#define CR4_OSXSAVE (1ull << 18)

/*
 * Turn on XSAVE and AVX (CR4.OSXSAVE, XCR0 = x87 | SSE | AVX), as a kernel
 * does at boot. 0 when the CPU has them.
 */
static int enable_avx(void)
{
	uint32_t a = 1, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	if ((c & (CPUID1_ECX_XSAVE | CPUID1_ECX_AVX)) != (CPUID1_ECX_XSAVE | CPUID1_ECX_AVX))
		return -1;
	uint64_t cr4;
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	__asm__ volatile("mov %0, %%cr4" : : "r"(cr4 | CR4_OSXSAVE));
	__asm__ volatile("xsetbv" : : "c"(0), "a"(7), "d"(0));
	return 0;
}

__attribute__((noipa)) static void evil_module_store_cross_page(void *dst)
{
	__asm__ volatile(".globl store_cross_page_insn\n"
			 "store_cross_page_insn:\n\t"
			 "movq %%rax, (%0)"
			 :
			 : "r"(dst), "a"(PATTERN)
			 : "memory");
}

__attribute__((noipa)) static void evil_module_store_straddle(void *dst)
{
	__asm__ volatile(".globl store_straddle_insn\n"
			 "store_straddle_insn:\n\t"
			 "movq %%rax, (%0)"
			 :
			 : "r"(dst), "a"(PATTERN)
			 : "memory");
}

int scenario_store_rep_movsb(void)
{
	void *t = text_at(OFF_REP_MOVSB);
	return run_store("rep-movsb", evil_module_store_rep_movsb, t, t, 16, store_rep_movsb_insn);
}

int scenario_store_rep_stosq_df(void)
{
	void *t = text_at(OFF_REP_STOSQ);
	return run_store("rep-stosq-df", evil_module_store_rep_stosq_df, t, t, 24, store_rep_stosq_df_insn);
}

int scenario_store_lock_add(void)
{
	void *t = text_at(OFF_LOCK_ADD);
	return run_store("lock-add", evil_module_store_lock_add, t, t, 8, store_lock_add_insn);
}

int scenario_store_xchg(void)
{
	void *t = text_at(OFF_XCHG);
	return run_store("xchg", evil_module_store_xchg, t, t, 8, store_xchg_insn);
}

int scenario_store_bts(void)
{
	void *t = text_at(OFF_BTS);
	return run_store("bts", evil_module_store_bts, t, t, 8, store_bts_insn);
}

int scenario_store_cmpxchg(void)
{
	void *t = text_at(OFF_CMPXCHG);
	return run_store("cmpxchg", evil_module_store_cmpxchg, t, t, 8, store_cmpxchg_insn);
}

int scenario_store_movnti(void)
{
	void *t = text_at(OFF_MOVNTI);
	return run_store("movnti", evil_module_store_movnti, t, t, 8, store_movnti_insn);
}

int scenario_store_push(void)
{
	void *t = rodata_at(OFF_PUSH);
	return run_store("push", evil_module_store_push, t, t, 8, store_push_insn);
}

int scenario_store_call(void)
{
	void *t = rodata_at(OFF_CALL);
	return run_store("call", evil_module_store_call, t, t, 8, store_call_insn);
}

int scenario_store_movdqu(void)
{
	void *t = text_at(OFF_MOVDQU);
	return run_store("movdqu", evil_module_store_movdqu, t, t, 16, store_movdqu_insn);
}

int scenario_store_movntdq(void)
{
	void *t = text_at(OFF_MOVNTDQ);
	return run_store("movntdq", evil_module_store_movntdq, t, t, 16, store_movntdq_insn);
}

int scenario_store_fxsave(void)
{
	void *t = text_at(OFF_FXSAVE);
	return run_store("fxsave", evil_module_store_fxsave, t, t, FXSAVE_SIZE, store_fxsave_insn);
}

int scenario_store_cross_page(void)
{
	void *t = text_at(OFF_CROSS_PAGE);
	return run_store("cross-page", evil_module_store_cross_page, t, t, 8, store_cross_page_insn);
}

int scenario_store_xsave(void)
{
	if (enable_avx() < 0) {
		kprintf("GV-RESULT scenario=store-xsave error=no-xsave\n");
		return 1;
	}
	void *t = text_at(OFF_XSAVE);
	return run_store("xsave", evil_module_store_xsave, t, t, XSAVE_SIZE, store_xsave_insn);
}

int scenario_store_vmovdqu_ymm(void)
{
	if (enable_avx() < 0) {
		kprintf("GV-RESULT scenario=store-vmovdqu-ymm error=no-avx\n");
		return 1;
	}
	void *t = text_at(OFF_VMOVDQU_YMM);
	return run_store("vmovdqu-ymm", evil_module_store_vmovdqu_ymm, t, t, 32, store_vmovdqu_ymm_insn);
}

/* Only the 4 bytes at __text_start are protected; the 4 below it are ordinary RAM. */
int scenario_store_straddle(void)
{
	void *at = (void *)((uintptr_t)__text_start - 4);
	return run_store("straddle", evil_module_store_straddle, at, __text_start, 4, store_straddle_insn);
}
