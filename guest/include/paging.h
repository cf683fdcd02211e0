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

#endif /* GV_PAGING_H */
