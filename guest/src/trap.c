/*
 * Trap dispatch: gv_exception_entry (idt.S) calls trap_dispatch with the saved
 * frame. Every vector goes to exception_default, unless a scenario has put one
 * of the sanctioned overrides in place (trap_use).
 *
 * Nothing a handler pointer is read from is writable: the overrides are
 * constants in .rodata (section .rodata.trap_overrides, sealed like the rest
 * of .rodata), and the one writable word, trap_active, only selects among them.
 * trap_dispatch checks that it points at an entry of that section, so a kernel
 * bug or an attacker that scribbles on it can at worst pick another sanctioned
 * handler, never a handler of its own.
 */
#include "trap.h"
#include "exception.h"
#include <stddef.h>

extern const struct trap_override __trap_overrides_start[], __trap_overrides_end[];

static const struct trap_override *trap_active;

void trap_use(const struct trap_override *o)
{
	trap_active = o;
}

static const struct trap_override *trap_override_for(uint64_t vector)
{
	const struct trap_override *o = trap_active;
	uintptr_t at = (uintptr_t)o, start = (uintptr_t)__trap_overrides_start, end = (uintptr_t)__trap_overrides_end;
	if (!o || at < start || at >= end || (at - start) % sizeof(*o) != 0)
		return NULL;
	return o->vector == vector ? o : NULL;
}

void trap_dispatch(struct trap_frame *tf)
{
	const struct trap_override *o = trap_override_for(tf->vector);
	(o ? o->fn : exception_default)(tf);
}
