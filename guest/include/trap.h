/* Exception entry: the IDT (idt.S), the trap frame and the handler table (trap.c). */
#ifndef GV_TRAP_H
#define GV_TRAP_H
#include <stdint.h>

#define IDT_VECTORS 256

/*
 * What gv_exception_entry leaves on the stack, lowest address first: the
 * general-purpose registers it pushed, then what the vector stub pushed (the
 * vector; the error code, or 0 when the CPU does not push one), then the CPU's
 * interrupt frame.
 */
struct trap_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector;
	uint64_t error_code;
	uint64_t rip, cs, rflags, rsp, ss;
};

typedef void (*trap_handler_fn)(struct trap_frame *tf);

/*
 * A sanctioned handler for one vector, a constant in .rodata.trap_overrides
 * (sealed memory). Declare one with TRAP_OVERRIDE and select it with trap_use;
 * trap_use(NULL) goes back to exception_default for every vector.
 */
struct trap_override {
	uint64_t vector;
	trap_handler_fn fn;
};

#define TRAP_OVERRIDE(name, vec, handler)                                                                   \
	static const struct trap_override name __attribute__((section(".rodata.trap_overrides"), used)) = { \
		(vec), (handler)                                                                            \
	}

void trap_use(const struct trap_override *o);

/* Called by gv_exception_entry; returns to the interrupted code (iretq). */
void trap_dispatch(struct trap_frame *tf);

/* idt.S: loads the static IDT. */
void idt_load(void);

/* idt.S: the first instruction of the common exception path. */
extern char gv_exception_entry[];

#endif /* GV_TRAP_H */
