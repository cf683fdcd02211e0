/*
 * Health-VM role. The VMM maps the IDC region (request/response rings and
 * rule tables, DESIGN.md IDC) right above RAM, covered by the boot page
 * tables with 2 MiB pages. The kernel validates its geometry once, opens it
 * to ring 3 (user, non-executable) and runs the engine. An engine fault ends
 * the VM with 0x80 + vector, so the VMM sees it at once.
 */
#include "hm.h"
#include "hm_idc.h"
#include "io.h"
#include "paging.h"
#include "serial.h"
#include "task.h"
#include "user_tasks.h"

#define TWO_MIB 0x200000ULL

int hm_main(const struct gv_boot_info *bi)
{
	if (!bi->idc_gpa || bi->idc_size < GV_IDC_HEADER_SIZE || (bi->idc_gpa | bi->idc_size) & (TWO_MIB - 1) ||
	    bi->idc_gpa + bi->idc_size > (4ULL << 30) || bi->idc_gpa < bi->mem_size)
		gv_exit(EXIT_HM_BAD_IDC);
	if (paging_map_user(bi, bi->idc_gpa, bi->idc_size) < 0)
		gv_exit(EXIT_HM_BAD_IDC);
	if (hm_idc_check(bi->idc_gpa, bi->idc_size, &hm_args) < 0)
		gv_exit(EXIT_HM_BAD_IDC);
	kprintf("hm: engine serving %u guest(s), %u slots each\n", hm_args.nguests, hm_args.nslots);

	static const struct task engine = { "hm-engine", user_hm_engine_task, 0, USER_STACK_TOP(0) };
	struct task_result r;
	task_run(&engine, &r);
	if (r.faulted) {
		kprintf("HM-ENGINE-FAULT vector=%lu\n", r.code);
		gv_exit(0x80 + (uint32_t)r.code);
	}
	kprintf("HM-ENGINE-EXIT code=%lu\n", r.code);
	gv_exit(EXIT_HM_ENGINE_EXIT);
}
