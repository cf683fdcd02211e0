/* The guest's own exception handling: kill the faulting task or panic. */
#ifndef GV_EXCEPTION_H
#define GV_EXCEPTION_H
#include "trap.h"

/*
 * Default handler for every exception vector. A fault in ring 3 (CS RPL 3)
 * prints TASK-FAULT, ends the task and continues with the caller of
 * task_run(); a fault in ring 0 panics.
 */
void exception_default(struct trap_frame *tf);

/* Prints "PANIC vector=N err=0x.. rip=0x.. cr2=0x.." and exits with 0x80 + vector. */
__attribute__((noreturn)) void panic_trap(const struct trap_frame *tf);

#endif /* GV_EXCEPTION_H */
