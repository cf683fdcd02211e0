/* Page-table changes on top of the VMM's boot tables. */
#ifndef GV_PAGING_H
#define GV_PAGING_H
#include "gv_abi.h"

/*
 * Makes the ring-3 sections (.utext, .udata) user-accessible; data pages
 * also become non-executable. Returns 0, or -1 if the boot tables do not look
 * as docs/guest-abi.md describes.
 */
int paging_init(const struct gv_boot_info *bi);

/*
 * Makes [gpa, gpa+size) (2 MiB aligned, mapped by the boot tables with 2 MiB
 * pages) user-accessible and non-executable. Returns 0, or -1 if a page is
 * not mapped that way.
 */
int paging_map_user(const struct gv_boot_info *bi, uint64_t gpa, uint64_t size);

/* The 4 KiB page table of the first 2 MiB (set by paging_init). */
extern uint64_t *paging_pt_low;

#endif /* GV_PAGING_H */
