/*
 * Memory layout of gv-kernel: the symbols exported by linker.ld and the few
 * constants that assembly and C share with it.
 */
#ifndef GV_LAYOUT_H
#define GV_LAYOUT_H

/* Load (and link) address of the kernel; linker.ld asserts it. */
#define GV_KERNEL_BASE 0x100000

/* GDT selectors (the layout sysret needs: user data right below user code). */
#define SEL_NULL 0x00
#define SEL_KCODE 0x08 /* 64-bit kernel code, DPL 0 (same as the boot GDT) */
#define SEL_KDATA 0x10 /* kernel data, DPL 0 (same as the boot GDT) */
#define SEL_UDATA 0x18 /* user data, DPL 3 */
#define SEL_UCODE 0x20 /* 64-bit user code, DPL 3 */
#define SEL_TSS 0x28   /* 64-bit TSS, 16-byte descriptor */
#define RPL_USER 3

#define KERNEL_STACK_SIZE 16384 /* boot/kmain stack and the trap (rsp0/syscall) stack */
#define DF_STACK_SIZE 4096      /* IST1 stack for double faults */
#define USER_STACK_SIZE 8192    /* one ring-3 stack */
#define USER_STACKS 4           /* ring-3 stacks in .udata (tasks run one at a time) */

#define PAGE_SIZE 4096

#ifndef __ASSEMBLER__
#include <stdint.h>

/* Section boundaries (linker.ld). Exact section extents; sections start page-aligned. */
extern char __text_start[], __text_end[];
extern char __rodata_start[], __rodata_end[];
extern char __data_start[], __data_end[];
extern char __bss_start[], __bss_end[];
extern char __utext_start[], __utext_end[];
extern char __udata_start[], __udata_end[];
/* Everything ring 3 may touch: [__user_start, __user_end), page-aligned. */
extern char __user_start[], __user_end[];

/* Stacks (boot.S). */
extern char boot_stack_top[], trap_stack_top[], df_stack_top[];
#endif

#endif /* GV_LAYOUT_H */
