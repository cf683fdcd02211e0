// SPDX-License-Identifier: GPL-2.0
/*
 * gv_attack: the Linux test guest's attack scenarios (src/linux/test-guest.ts).
 *
 *   insmod gv_attack.ko attack=NAME [target=0xADDR]
 *
 * Init does one attack, prints exactly one line
 *
 *   gv_attack: attack=NAME target=0xADDR before=HEX after=HEX landed=yes|no
 *
 * (before/after: the target's first 8 bytes in memory order, or the MSR
 * value) and returns 0: the module stays loaded, because busybox's insmod
 * retries a failed finit_module() with init_module(), which would attack a
 * second time. `oops`, `panic` and `hang` do not return. Built against Debian's 6.1 kernel headers.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/uaccess.h>
#include <linux/reboot.h>
#include <linux/irqflags.h>
#include <linux/unistd.h>
#include <asm/msr.h>
#include <asm/processor-flags.h>

static char *attack = "";
module_param(attack, charp, 0444);
MODULE_PARM_DESC(attack, "text-patch|syscall-hook|wp-bypass|lstar-hook|oops|panic|hang");

static unsigned long target;
module_param(target, ulong, 0444);
MODULE_PARM_DESC(target, "kernel virtual address (syscall-hook: sys_call_table; text-patch: a function)");

/* What the hooks point at: never meant to run. */
static noinline long gv_hook(void)
{
	return -ENOSYS;
}

/* The result line; before/after are the target's first 8 bytes. */
static void report(unsigned long addr, const u8 *before, const u8 *after)
{
	pr_info("attack=%s target=0x%lx before=%8phN after=%8phN landed=%s\n", attack, addr, before, after,
		memcmp(before, after, 8) ? "yes" : "no");
}

/*
 * Write through a writable alias of the page that holds `addr`: map the same
 * physical page again with PAGE_KERNEL. virt_to_page() works for addresses in
 * the kernel image on x86-64 (__pa() knows __START_KERNEL_map).
 */
static int write_alias(unsigned long addr, const void *src, size_t len)
{
	struct page *page = virt_to_page((void *)addr);
	void *alias = vmap(&page, 1, VM_MAP, PAGE_KERNEL);

	if (!alias)
		return -ENOMEM;
	memcpy(alias + offset_in_page(addr), src, len);
	vunmap(alias);
	return 0;
}

/*
 * text-patch: 4 bytes of int3 over a kernel function, through an alias: the
 * function at `target` (the test init gives do_sched_yield, which holds a
 * schedstats static-key site), else register_reboot_notifier.
 */
static int text_patch(void)
{
	unsigned long addr = target ? target : (unsigned long)&register_reboot_notifier;
	static const u8 int3[4] = { 0xcc, 0xcc, 0xcc, 0xcc };
	u8 before[8], after[8];
	int err;

	memcpy(before, (void *)addr, 8);
	err = write_alias(addr, int3, sizeof(int3));
	memcpy(after, (void *)addr, 8); /* read back through the original address */
	report(addr, before, after);
	return err;
}

/* syscall-hook: sys_call_table[__NR_getpid] = gv_hook, through an alias; put back if it landed. */
static int syscall_hook(void)
{
	unsigned long entry = target + __NR_getpid * sizeof(unsigned long);
	unsigned long hook = (unsigned long)&gv_hook;
	u8 before[8], after[8];
	int err;

	if (!target || !virt_addr_valid((void *)entry)) {
		pr_info("attack=syscall-hook target=0x%lx refused: need target=sys_call_table\n", target);
		return -EINVAL;
	}
	if (copy_from_kernel_nofault(before, (void *)entry, 8))
		return -EFAULT;
	err = write_alias(entry, &hook, sizeof(hook));
	memcpy(after, (void *)entry, 8);
	report(entry, before, after);
	if (memcmp(before, after, 8))
		write_alias(entry, before, 8); /* undo: the old handler back */
	return err;
}

/*
 * wp-bypass: clear CR0.WP with a raw mov (write_cr0() would pin WP back on),
 * store int3s straight into read-only kernel text, restore CR0. Interrupts
 * stay off for the window. (This kernel has no IBT, so CR4.CET is clear and
 * CR0.WP may be cleared.)
 */
static int wp_bypass(void)
{
	unsigned long addr = (unsigned long)&register_reboot_notifier;
	unsigned long cr0, flags;
	u8 before[8], after[8];

	memcpy(before, (void *)addr, 8);
	local_irq_save(flags);
	asm volatile("mov %%cr0,%0" : "=r"(cr0));
	asm volatile("mov %0,%%cr0" : : "r"(cr0 & ~X86_CR0_WP) : "memory");
	*(volatile u32 *)addr = 0xcccccccc;
	asm volatile("mov %0,%%cr0" : : "r"(cr0) : "memory");
	local_irq_restore(flags);
	memcpy(after, (void *)addr, 8);
	report(addr, before, after);
	return 0;
}

/* lstar-hook: point the syscall entry MSR at gv_hook; if it sticks, put it back at once. */
static int lstar_hook(void)
{
	u64 hook = (unsigned long)&gv_hook;
	unsigned long flags;
	u64 before, after;

	local_irq_save(flags);
	before = native_read_msr(MSR_LSTAR);
	native_wrmsrl(MSR_LSTAR, hook);
	after = native_read_msr(MSR_LSTAR);
	if (after != before)
		native_wrmsrl(MSR_LSTAR, before);
	local_irq_restore(flags);
	pr_info("attack=lstar-hook target=0x%x before=%016llx after=%016llx landed=%s\n", MSR_LSTAR, before,
		after, after != before ? "yes" : "no");
	return 0;
}

static int __init gv_attack_init(void)
{
	if (!strcmp(attack, "text-patch"))
		return text_patch();
	if (!strcmp(attack, "syscall-hook"))
		return syscall_hook();
	if (!strcmp(attack, "wp-bypass"))
		return wp_bypass();
	if (!strcmp(attack, "lstar-hook"))
		return lstar_hook();
	if (!strcmp(attack, "oops")) {
		pr_info("attack=oops target=0x0 before=n/a after=n/a landed=n/a\n");
		*(volatile int *)0 = 1; /* oopses; the kernel kills insmod and goes on */
		return 0;
	}
	if (!strcmp(attack, "panic")) {
		pr_info("attack=panic target=0x0 before=n/a after=n/a landed=n/a\n");
		panic("gv_attack: panic requested");
	}
	if (!strcmp(attack, "hang")) {
		/* Interrupts off, spinning: no timer, no soft-lockup report, nothing in the guest can end it. */
		pr_info("attack=hang target=0x0 before=n/a after=n/a landed=n/a\n");
		local_irq_disable();
		for (;;)
			cpu_relax();
	}
	pr_info("unknown attack %s\n", attack);
	return -EINVAL;
}
module_init(gv_attack_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Guardvisor test guest: kernel attack scenarios");
