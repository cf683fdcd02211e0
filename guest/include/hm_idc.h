/*
 * IDC region geometry checks, shared by the health VM's kernel (src/hm.c) and
 * the hosted engine harness (hosted/hm_host.c). Header-only, freestanding.
 */
#ifndef GV_HM_IDC_H
#define GV_HM_IDC_H
#include <stddef.h>
#include <stdint.h>
#include "gv_abi.h"
#include "user_tasks.h"

static inline int hm_pow2(uint32_t v)
{
	return v && !(v & (v - 1));
}

/* 0 if the header and every guest block at `idc` fit in `size` bytes; then fills *a. */
static inline int hm_idc_check(uint64_t idc, uint64_t size, struct hm_args *a)
{
	const struct gv_idc_header *h = (const struct gv_idc_header *)idc;
	if (size < GV_IDC_HEADER_SIZE || h->magic != GV_IDC_MAGIC || h->version != GV_IDC_VERSION)
		return -1;
	if (h->nguests < 1 || h->nguests > GV_IDC_MAX_GUESTS || !hm_pow2(h->nslots) || h->nslots > 1024)
		return -1;
	uint64_t bs = h->guest_block_size;
	if (h->guest_block_offset < GV_IDC_HEADER_SIZE || bs < sizeof(struct gv_idc_guest_ctl) || bs > size ||
	    h->guest_block_offset + (uint64_t)h->nguests * bs > size)
		return -1;
	for (uint32_t g = 0; g < h->nguests; g++) {
		const struct gv_idc_guest_ctl *c =
			(const struct gv_idc_guest_ctl *)(idc + h->guest_block_offset + (uint64_t)g * bs);
		if (c->req_offset + (uint64_t)h->nslots * sizeof(struct gv_idc_request) > bs ||
		    c->resp_offset + (uint64_t)h->nslots * sizeof(struct gv_idc_response) > bs ||
		    c->rules_offset + (uint64_t)sizeof(struct gv_rule_table) + GV_RULES_MAX * sizeof(struct gv_rule) > bs ||
		    (c->req_offset | c->resp_offset | c->rules_offset) & 7)
			return -1;
	}
	a->idc = idc;
	a->nguests = h->nguests;
	a->nslots = h->nslots;
	a->block_offset = h->guest_block_offset;
	a->block_size = (uint32_t)bs;
	return 0;
}

#endif /* GV_HM_IDC_H */
