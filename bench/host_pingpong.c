/*
 * host-pingpong: the C baseline of the host bench's IDC round trip
 * (src/bench/host-idc.ts). Two threads of one process play the VMM and the
 * health-management engine over one guest's IDC rings, laid out as
 * src/idc/layout.ts lays them out (ring control, request slots, response
 * slots, from gv_abi.h), with the same publication order: slot contents
 * first, the slot's seq last (release), then the ring's counter; the reader
 * the reverse (acquire). The requester publishes a context record and waits,
 * spinning, for the answer, then checks it (seq, verdict, check word); the
 * responder, spinning, copies the request out, answers deny and publishes.
 * Nothing is evaluated and nobody sleeps: the floor of a shared-memory round
 * trip between two cores.
 *
 * Usage: host-pingpong RUN_ID SAMPLES WARMUP
 * Output: {"runId":..,"pid":..,"clockNs":..,"samples":..,"p50Us":..,"p99Us":..,"p999Us":..}
 * Exit codes: 0 done; 2 bad usage; 70 a malformed answer or a thread error.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gv_abi.h"
#include "host_stats.h"

#define ALIGN_UP(x, a) (((x) + (a)-1) & ~((uint64_t)(a)-1))
#define MAX_SAMPLES 10000000ull

static uint8_t *block;
static uint64_t req_off, resp_off, total;

static inline uint64_t ld(volatile uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void st(volatile uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline void relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

static struct gv_idc_guest_ctl *ctl(void)
{
	return (struct gv_idc_guest_ctl *)block;
}

static struct gv_idc_request *req(uint64_t seq)
{
	return (struct gv_idc_request *)(block + req_off) + (seq % GV_IDC_SLOTS);
}

static struct gv_idc_response *resp(uint64_t seq)
{
	return (struct gv_idc_response *)(block + resp_off) + (seq % GV_IDC_SLOTS);
}

static volatile int failed;

static void *responder(void *arg)
{
	(void)arg;
	for (uint64_t seq = 1; seq <= total && !failed; seq++) {
		while (ld(&ctl()->req_published) < seq)
			relax();
		volatile struct gv_idc_request *r = req(seq);
		if (ld(&r->seq) != seq) {
			failed = 1;
			break;
		}
		st(&ctl()->req_consumed, seq);
		struct gv_context c;
		memcpy(&c, (const void *)&r->ctx, sizeof c); /* take the request out of the shared slot */
		uint32_t verdict = GV_VERDICT_DENY, rule = c.kind == GV_EVENT_PROTECTED_WRITE ? 0 : GV_RULE_DEFAULT;
		volatile struct gv_idc_response *a = resp(seq);
		a->verdict = verdict;
		a->rule = rule;
		a->policy_hash = 0;
		a->check = (uint32_t)seq ^ verdict ^ rule ^ GV_IDC_CHECK_WORD;
		st(&a->seq, seq);
		st(&ctl()->resp_published, seq);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: host-pingpong RUN_ID SAMPLES WARMUP\n");
		return 2;
	}
	for (const char *c = argv[1]; *c; c++) {
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || *c == '-')) {
			fprintf(stderr, "host-pingpong: error: the run id takes [0-9a-z-] only\n");
			return 2;
		}
	}
	uint64_t n = parse_count(argv[2], MAX_SAMPLES), warm = parse_count(argv[3], MAX_SAMPLES);
	if (!n || !warm) {
		fprintf(stderr, "host-pingpong: error: SAMPLES and WARMUP are counts from 1\n");
		return 2;
	}
	total = n + warm;
	/* One guest block as src/idc/layout.ts lays it out. */
	req_off = ALIGN_UP(sizeof(struct gv_idc_guest_ctl), 64);
	resp_off = ALIGN_UP(req_off + GV_IDC_SLOTS * sizeof(struct gv_idc_request), 64);
	uint64_t size = ALIGN_UP(resp_off + GV_IDC_SLOTS * sizeof(struct gv_idc_response), 4096);
	block = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t *samples = calloc(n, sizeof(uint64_t));
	if (block == MAP_FAILED || !samples) {
		fprintf(stderr, "host-pingpong: error: out of memory\n");
		return 70;
	}
	ctl()->req_offset = (uint32_t)req_off;
	ctl()->resp_offset = (uint32_t)resp_off;

	struct gv_context tmpl;
	memset(&tmpl, 0, sizeof tmpl);
	tmpl.magic = GV_CTX_MAGIC;
	tmpl.version = GV_CTX_VERSION;
	tmpl.kind = GV_EVENT_PROTECTED_WRITE;
	tmpl.vm_id = 1;

	pthread_t t;
	if (pthread_create(&t, NULL, responder, NULL) != 0) {
		fprintf(stderr, "host-pingpong: error: cannot start the responder thread\n");
		return 70;
	}
	for (uint64_t seq = 1; seq <= total; seq++) {
		uint64_t t0 = now_ns();
		volatile struct gv_idc_request *r = req(seq);
		st(&r->seq, 0); /* invalidate while writing */
		r->guest = 0;
		r->flags = 0;
		tmpl.seq = seq;
		memcpy((void *)&r->ctx, &tmpl, sizeof tmpl);
		st(&r->seq, seq);
		st(&ctl()->req_published, seq);
		while (ld(&ctl()->resp_published) < seq)
			relax();
		volatile struct gv_idc_response *a = resp(seq);
		uint32_t verdict = a->verdict, rule = a->rule, hash = a->policy_hash;
		if (ld(&a->seq) != seq || verdict > GV_VERDICT_HALT ||
		    a->check != ((uint32_t)seq ^ verdict ^ rule ^ hash ^ GV_IDC_CHECK_WORD)) {
			failed = 1;
			fprintf(stderr, "host-pingpong: error: malformed answer to request %llu\n", (unsigned long long)seq);
			return 70;
		}
		st(&ctl()->req_settled, seq);
		uint64_t ns = now_ns() - t0;
		if (seq > warm)
			samples[seq - warm - 1] = ns;
	}
	pthread_join(t, NULL);
	printf("{\"runId\":\"%s\",\"pid\":%d,\"clockNs\":%llu,", argv[1], (int)getpid(),
	       (unsigned long long)clock_floor_ns());
	print_pcts(samples, n);
	printf("}\n");
	return 0;
}
