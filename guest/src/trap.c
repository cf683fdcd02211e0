/*
 * Trap dispatch: gv_exception_entry (idt.S) calls trap_dispatch with the saved
 * frame, which calls the handler registered for the vector.
 *
 * The table is in .data (not .rodata) so handlers can be registered at run
 * time. The CPU exception vectors 0-31 start out with exception_default; every
 * other vector (nothing raises them: there are no interrupt sources and their
 * gates are DPL 0, so `int n` from ring 3 becomes #GP) is NULL, which also
 * means exception_default.
 */
#include "trap.h"
#include "exception.h"
#include <stddef.h>

trap_handler_fn trap_handlers[IDT_VECTORS] = {
	[0 ... 31] = exception_default,
};

void trap_register(unsigned vector, trap_handler_fn fn)
{
	if (vector < IDT_VECTORS)
		trap_handlers[vector] = fn;
}

void trap_dispatch(struct trap_frame *tf)
{
	trap_handler_fn fn = tf->vector < IDT_VECTORS ? trap_handlers[tf->vector] : NULL;
	(fn ? fn : exception_default)(tf);
}
