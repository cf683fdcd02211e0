/* System calls: MSR setup, the dispatch table, the entry point. */
#ifndef GV_SYSCALL_H
#define GV_SYSCALL_H
#include <stdint.h>
#include "syscall_nr.h"

typedef int64_t (*syscall_fn)(uint64_t a1, uint64_t a2, uint64_t a3);

/* In .rodata: the VMM write-protects it like code. */
extern const syscall_fn syscall_table[SYS_COUNT];

/* System calls handled since boot (all tasks). */
extern uint64_t syscall_count;

/* Programs STAR, LSTAR and SFMASK (and EFER.SCE if the VMM left it clear). */
void syscall_init(void);

/* Called by syscall_entry; returns -1 for an unknown number. */
int64_t syscall_dispatch(uint64_t nr, uint64_t a1, uint64_t a2, uint64_t a3);

/* syscall_entry.S */
void syscall_entry(void);

/* Reads syscall_table[nr] the way dispatch does: a real load, never folded. */
static inline syscall_fn syscall_lookup(uint64_t nr)
{
	return ((const volatile syscall_fn *)syscall_table)[nr];
}

#endif /* GV_SYSCALL_H */
