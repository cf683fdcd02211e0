/*
 * host-dispatch: the C baseline of the host bench's dispatcher path
 * (src/bench/host-dispatch.ts). It replays the same recorded kvm_run pages
 * the bench replays through Guardvisor's dispatcher and does what a minimal
 * VMM does with them: decode the exit and drop the write (an MMIO write is
 * ignored, a filtered MSR write refused, a debug exit resumed). No context,
 * no decision, no event. Each sample is timed like the bench's: the page is
 * copied in (KVM's part), then the clock runs around the decode.
 *
 * Usage: host-dispatch RUN_ID SAMPLES WARMUP FILE KIND:PAGES...
 *   FILE holds the pages back to back, sizeof(struct kvm_run) bytes each,
 *   the kinds' pages in the order given; a sample of a kind replays its
 *   PAGES pages in turn. Kinds are interleaved, SAMPLES of each after WARMUP.
 *
 * Output: one JSON object on stdout:
 *   {"runId":..,"pid":..,"pageSize":..,"clockNs":..,"kinds":{"KIND":{"samples":..,
 *    "p50Us":..,"p99Us":..,"p999Us":..},..}}
 * Exit codes: 0 done; 2 bad usage or input; 70 an exit it cannot decode.
 */
#define _GNU_SOURCE
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host_stats.h"

#define MAX_KINDS 16
#define MAX_PAGES 4
#define MAX_SAMPLES 10000000ull

struct kind {
	char name[32];
	unsigned npages;
	struct kvm_run *pages[MAX_PAGES];
	uint64_t *samples;
};

static volatile uint64_t sink;

/* A minimal VMM's handling of one exit: decode, drop. */
static int handle(struct kvm_run *run)
{
	switch (run->exit_reason) {
	case KVM_EXIT_MMIO: {
		uint32_t len = run->mmio.len > 8 ? 8 : run->mmio.len;
		if (!run->mmio.is_write) {
			memset(run->mmio.data, 0xff, len);
			return 0;
		}
		uint64_t v = 0;
		memcpy(&v, run->mmio.data, len);
		sink = run->mmio.phys_addr ^ v; /* dropped */
		return 0;
	}
	case KVM_EXIT_X86_WRMSR:
		run->msr.error = 1; /* refused */
		return 0;
	case KVM_EXIT_DEBUG:
		sink = run->debug.arch.pc ^ run->debug.arch.dr6;
		return 0;
	default:
		return -1;
	}
}

static int usage(const char *why)
{
	fprintf(stderr, "host-dispatch: error: %s\nusage: host-dispatch RUN_ID SAMPLES WARMUP FILE KIND:PAGES...\n", why);
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 6 || argc - 5 > MAX_KINDS)
		return usage("wrong number of arguments");
	const char *run_id = argv[1];
	for (const char *c = run_id; *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || *c == '-'))
			return usage("the run id takes [0-9a-z-] only");
	uint64_t n = parse_count(argv[2], MAX_SAMPLES), warm = parse_count(argv[3], MAX_SAMPLES);
	if (!n || !warm)
		return usage("SAMPLES and WARMUP are counts from 1");
	FILE *f = fopen(argv[4], "rb");
	if (!f)
		return usage("cannot open the page file");
	int nkinds = argc - 5;
	struct kind kinds[MAX_KINDS];
	memset(kinds, 0, sizeof kinds);
	for (int k = 0; k < nkinds; k++) {
		const char *colon = strrchr(argv[5 + k], ':');
		size_t len = colon ? (size_t)(colon - argv[5 + k]) : 0;
		uint64_t np = colon ? parse_count(colon + 1, MAX_PAGES) : 0;
		if (!len || len >= sizeof kinds[k].name || !np)
			return usage("a kind is NAME:PAGES with 1 to 4 pages");
		memcpy(kinds[k].name, argv[5 + k], len);
		for (const char *c = kinds[k].name; *c; c++)
			if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || *c == '-'))
				return usage("a kind's name takes [0-9a-z-] only");
		kinds[k].npages = (unsigned)np;
		for (unsigned p = 0; p < np; p++) {
			kinds[k].pages[p] = aligned_alloc(4096, (sizeof(struct kvm_run) + 4095) & ~4095ul);
			if (!kinds[k].pages[p] || fread(kinds[k].pages[p], sizeof(struct kvm_run), 1, f) != 1)
				return usage("the page file is shorter than the pages named");
		}
		kinds[k].samples = calloc(n, sizeof(uint64_t));
		if (!kinds[k].samples)
			return usage("out of memory");
	}
	if (fgetc(f) != EOF)
		return usage("the page file is longer than the pages named (another struct kvm_run size?)");
	fclose(f);

	struct kvm_run *run = aligned_alloc(4096, (sizeof(struct kvm_run) + 4095) & ~4095ul);
	if (!run)
		return usage("out of memory");
	for (uint64_t i = 0; i < warm + n; i++) {
		for (int k = 0; k < nkinds; k++) {
			uint64_t ns = 0;
			for (unsigned p = 0; p < kinds[k].npages; p++) {
				memcpy(run, kinds[k].pages[p], sizeof *run); /* KVM fills the page */
				uint64_t t0 = now_ns();
				int rc = handle(run);
				ns += now_ns() - t0;
				if (rc < 0) {
					fprintf(stderr, "host-dispatch: error: exit reason %u in %s\n", run->exit_reason,
						kinds[k].name);
					return 70;
				}
			}
			if (i >= warm)
				kinds[k].samples[i - warm] = ns;
		}
	}
	printf("{\"runId\":\"%s\",\"pid\":%d,\"pageSize\":%zu,\"clockNs\":%llu,\"kinds\":{", run_id, (int)getpid(),
	       sizeof(struct kvm_run), (unsigned long long)clock_floor_ns());
	for (int k = 0; k < nkinds; k++) {
		printf("%s\"%s\":{", k ? "," : "", kinds[k].name);
		print_pcts(kinds[k].samples, n);
		printf("}");
	}
	printf("}}\n");
	return 0;
}
