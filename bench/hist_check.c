/*
 * hist-check: feeds whitespace-separated unsigned integers from stdin into
 * the benchmark histogram (guest/include/bench_hist.h) and prints
 * "count p50 p99 min max". The unit tests compare it with an exact
 * percentile, so the guest's and the baseline's p50/p99 are known to be
 * within the histogram's resolution.
 */
#include <stdio.h>
#include "bench_hist.h"

int main(void)
{
	static struct bench_hist h;
	unsigned long long v;
	while (scanf("%llu", &v) == 1)
		bh_add(&h, v);
	if (!feof(stdin)) {
		fputs("hist-check: error: expected unsigned integers\n", stderr);
		return 2;
	}
	printf("%llu %llu %llu %llu %llu\n", (unsigned long long)h.count, (unsigned long long)bh_quantile(&h, 500),
	       (unsigned long long)bh_quantile(&h, 990), (unsigned long long)(h.count ? h.min : 0),
	       (unsigned long long)h.max);
	return 0;
}
