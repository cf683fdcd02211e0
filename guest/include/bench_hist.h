/*
 * A log-linear latency histogram, header-only and freestanding, shared by the
 * benchmark guest's ring-3 tasks (cycles per protected write or #UD), the
 * baseline VMM (bench/baseline.c, nanoseconds per exit) and a host check
 * program (bench/hist_check.c) that the unit tests compare with an exact
 * percentile.
 *
 * Values below 128 have a bucket each; above that, every power of two is
 * split into 64 buckets, so a reported quantile is within 1/128 of the true
 * value (the bucket midpoint is reported, clamped to the exact min and max).
 * Quantiles use the nearest-rank definition: the smallest value with at least
 * ceil(q * count) values at or below it. No floating point (the guest kernel
 * is built with -mgeneral-regs-only): q is given in parts per thousand.
 */
#ifndef GV_BENCH_HIST_H
#define GV_BENCH_HIST_H
#include <stdint.h>

#define BH_SUB_BITS 6
#define BH_SUB (1u << BH_SUB_BITS)
#define BH_MAX_EXP 47 /* values of 2^48 and above share the last bucket */
#define BH_BUCKETS (BH_SUB + (BH_MAX_EXP - BH_SUB_BITS + 1) * BH_SUB)

struct bench_hist {
	uint64_t count, min, max, sum;
	uint32_t bucket[BH_BUCKETS];
};

static inline unsigned bh_index(uint64_t v)
{
	if (v < BH_SUB)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);
	if (e > BH_MAX_EXP)
		return BH_BUCKETS - 1;
	unsigned sub = (unsigned)(v >> (e - BH_SUB_BITS)) & (BH_SUB - 1);
	return BH_SUB + (e - BH_SUB_BITS) * BH_SUB + sub;
}

/* The value reported for bucket i: its midpoint. */
static inline uint64_t bh_value(unsigned i)
{
	if (i < BH_SUB)
		return i;
	unsigned k = i - BH_SUB;
	unsigned shift = k / BH_SUB;
	uint64_t low = (uint64_t)(BH_SUB + k % BH_SUB) << shift;
	return low + (((uint64_t)1 << shift) - 1) / 2;
}

static inline void bh_add(struct bench_hist *h, uint64_t v)
{
	if (h->count == 0 || v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
	h->count++;
	h->sum += v;
	uint32_t *b = &h->bucket[bh_index(v)];
	if (*b != UINT32_MAX)
		(*b)++;
}

/* Nearest-rank quantile, q in parts per thousand (500 = p50, 990 = p99); 0 when empty. */
static inline uint64_t bh_quantile(const struct bench_hist *h, unsigned permille)
{
	if (h->count == 0)
		return 0;
	uint64_t rank = (h->count * permille + 999) / 1000;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < BH_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			uint64_t v = bh_value(i);
			return v < h->min ? h->min : v > h->max ? h->max : v;
		}
	}
	return h->max;
}

#endif /* GV_BENCH_HIST_H */
