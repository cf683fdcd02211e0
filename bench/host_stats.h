/*
 * Latency samples for the host benchmarks (host_dispatch.c, host_pingpong.c):
 * a monotonic clock in nanoseconds, nearest-rank percentiles (the definition
 * src/bench/stats.ts uses: the smallest sample with at least ceil(q*n)
 * samples at or below it) and the JSON the bench reads.
 */
#ifndef GV_HOST_STATS_H
#define GV_HOST_STATS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* q in millionths; s sorted, n > 0. */
static uint64_t nearest_rank(const uint64_t *s, uint64_t n, uint64_t q_millionths)
{
	uint64_t rank = (q_millionths * n + 999999) / 1000000;
	if (rank < 1)
		rank = 1;
	return s[rank - 1];
}

/* Sorts `s` and prints "samples", "p50Us", "p99Us", "p999Us" (no braces). */
static void print_pcts(uint64_t *s, uint64_t n)
{
	qsort(s, n, sizeof *s, cmp_u64);
	printf("\"samples\":%llu,\"p50Us\":%.4f,\"p99Us\":%.4f,\"p999Us\":%.4f", (unsigned long long)n,
	       nearest_rank(s, n, 500000) / 1000.0, nearest_rank(s, n, 990000) / 1000.0,
	       nearest_rank(s, n, 999000) / 1000.0);
}

/* What two clock reads back to back cost (the floor of every sample), p50 in ns. */
static uint64_t clock_floor_ns(void)
{
	enum { N = 10001 };
	static uint64_t s[N];
	for (int i = 0; i < N; i++) {
		uint64_t t0 = now_ns();
		s[i] = now_ns() - t0;
	}
	qsort(s, N, sizeof *s, cmp_u64);
	return s[N / 2];
}

/* A positive count from the command line, at most `max`; 0 when malformed. */
static uint64_t parse_count(const char *s, uint64_t max)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	return (*s && !*end && v > 0 && v <= max) ? v : 0;
}

#endif
