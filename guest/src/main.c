/*
 * kmain: check the boot info, set up the CPU (GDT/TSS, IDT, syscalls, user
 * pages), print the boot line, run the scenario's setup, seal and run the
 * scenario named on the command line.
 * Everything here runs in ring 0, which is emulated (slow) on some hosts, so
 * the path is kept short: the boot tables, IDT and most descriptors are used
 * as built (no copying, no clearing; .bss comes zeroed).
 */
#include "cmdline.h"
#include "gdt.h"
#include "gv_abi.h"
#include "hm.h"
#include "io.h"
#include "paging.h"
#include "scenario.h"
#include "serial.h"
#include "syscall.h"
#include "trap.h"

/* Exit codes for boot failures (scenario exit codes are small numbers). */
#define EXIT_BAD_BOOT_INFO 0xE1
#define EXIT_BAD_PAGE_TABLES 0xE2
#define EXIT_UNKNOWN_SCENARIO 2
#define EXIT_SCENARIO_SETUP 3

#define SCENARIO_NAME_MAX 64

__attribute__((noreturn)) void kmain(struct gv_boot_info *bi);

/* Set up: from now on the VMM refuses changes to the MSRs, the IDTR, the GDTR, pinned CR bits,
   CR3 and the page-table entries that translate protected memory. */
static void seal(void)
{
	gv_hypercall(GV_HC_SEAL, GV_SEAL_MSRS | GV_SEAL_IDT | GV_SEAL_GDT | GV_SEAL_CR | GV_SEAL_PAGING, 0, 0);
}

void kmain(struct gv_boot_info *bi)
{
	if (bi->magic != GV_BOOT_MAGIC || bi->version != GV_BOOT_VERSION)
		gv_exit(EXIT_BAD_BOOT_INFO);

	gdt_init();
	idt_load();
	syscall_init();
	if (paging_init(bi) < 0)
		gv_exit(EXIT_BAD_PAGE_TABLES);

	if (bi->role == GV_ROLE_HM) {
		seal();
		kprintf("gv-kernel: boot role=hm mem=%luMiB\n", bi->mem_size >> 20);
		gv_exit((uint32_t)hm_main(bi));
	}

	char buf[SCENARIO_NAME_MAX];
	const char *name = buf;
	size_t len = bi->cmdline_len < GV_BOOT_CMDLINE_MAX ? bi->cmdline_len : GV_BOOT_CMDLINE_MAX - 1;
	char num[8];
	if (cmdline_get((const char *)bi->cmdline_gpa, len, "restart", num, sizeof(num)) > 0)
		for (const char *p = num; *p >= '0' && *p <= '9'; p++)
			gv_restart_count = gv_restart_count * 10 + (unsigned)(*p - '0');
	if (cmdline_get((const char *)bi->cmdline_gpa, len, "scenario", buf, sizeof(buf)) < 0)
		name = "none"; /* reported as an unknown scenario */
	kprintf("gv-kernel: boot role=guest scenario=%s mem=%luMiB restart=%u\n", name, bi->mem_size >> 20,
		gv_restart_count);

	const struct scenario *s = scenario_find(name);
	if (!s) {
		kprintf("GV-RESULT scenario=%s error=unknown\n", name);
		gv_exit(EXIT_UNKNOWN_SCENARIO);
	}
	if (s->setup && s->setup() < 0)
		gv_exit(EXIT_SCENARIO_SETUP);
	seal();
	gv_exit((uint32_t)s->run());
}
