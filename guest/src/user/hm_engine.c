/*
 * The health-management engine (ring 3 of the health VM).
 *
 * It serves every guest's IDC ring in turn: takes the next published request,
 * evaluates the context record against that guest's compiled rule table (the
 * same binary table and the same semantics as src/decide/evaluate.ts, checked
 * by a differential test), and publishes a response. While requests keep
 * coming it spins; after HM_IDLE_SPIN_US without work it rings the doorbell
 * hypercall, where the VMM parks its vCPU until a request is published.
 *
 * Publication order mirrors the VMM's: a slot's contents first, its `seq`
 * last (release), then the ring's counter. x86 is TSO, so acquire/release
 * compile to plain moves; the builtins keep the compiler from reordering.
 *
 * Fault injection (IDC header inject_mode/inject_at) makes the engine crash,
 * hang, answer garbage or answer late at the N-th request, so the VMM's core
 * health management can be tested against a real misbehaving health VM.
 */
#include "gv_abi.h"
#include "user.h"

#ifdef GV_HM_HOSTED
/*
 * Hosted build (hosted/hm_host.c): the same engine as a host process on a
 * shared file mapping, so the IDC protocol and core health management can be
 * tested where no VM can run. Only the two privileged operations differ.
 */
void hm_hosted_idle(void);
__attribute__((noreturn)) void hm_hosted_exit(int code);
#define HM_EXIT(code) hm_hosted_exit(code)
#else
#define HM_EXIT(code) u_exit(code)
#endif

#define HM_IDLE_SPIN_US 50
#define DEFAULT_TSC_KHZ 2000000
#define GARBAGE_VERDICT 0x99
#define EXIT_BAD_RULES 3

struct hm_args hm_args;

static inline uint64_t ld64(const volatile uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void st64(volatile uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

/* The doorbell: the VMM returns when a request may be waiting (or after a while). */
static inline void doorbell(void)
{
#ifdef GV_HM_HOSTED
	hm_hosted_idle();
#else
	uint64_t rax = GV_HC_DOORBELL;
	__asm__ volatile("outl %%eax, %%dx" : "+a"(rax) : "d"(GV_PORT_HYPERCALL) : "memory");
#endif
}

/* Does rule r match context c? Keep in step with ruleMatches() in evaluate.ts. */
static int rule_matches(const struct gv_rule *r, const struct gv_context *c)
{
	if (c->kind > 31 || !(r->kind_mask & (1u << c->kind)))
		return 0;
	if (r->region_mask && (c->region_id > 63 || !((r->region_mask >> c->region_id) & 1)))
		return 0;
	if (r->vector_mask != 0xffffffffu && (c->vector > 31 || !((r->vector_mask >> c->vector) & 1)))
		return 0;
	if (r->object_mask != 0xffffffffu && (c->object > 31 || !((r->object_mask >> c->object) & 1)))
		return 0;
	if (!((r->cpl_mask >> (c->cpl & 3)) & 1))
		return 0;
	uint64_t rip = c->regs[GV_REG_RIP];
	if (rip < r->rip_from || rip >= r->rip_to)
		return 0;
	/* A rule about who wrote never matches a write whose writer is unknown or untrusted. */
	if ((c->flags & (GV_CTXF_WRITER_UNKNOWN | GV_CTXF_WRITER_UNTRUSTED)) && (r->rip_from != 0 || r->rip_to != ~(uint64_t)0))
		return 0;
	if ((r->flags & GV_RULE_MATCH_MSR) && r->msr != c->msr_index)
		return 0;
	/* The whole write [gpa, gpa + access_len) inside [gpa_from, gpa_to), without computing gpa + len. */
	if ((r->flags & GV_RULE_MATCH_GPA) &&
	    (c->gpa < r->gpa_from || c->gpa >= r->gpa_to || c->access_len > r->gpa_to - c->gpa))
		return 0;
	/* The value written: whole (not one piece of a split store), at most 8 bytes, little-endian. */
	if (r->flags & GV_RULE_MATCH_VALUE) {
		if (c->access_len > 8 || (c->flags & GV_CTXF_DATA_PARTIAL))
			return 0;
		uint64_t v = 0;
		for (uint32_t i = c->access_len; i > 0; i--)
			v = (v << 8) | c->data[i - 1];
		if (v != r->value)
			return 0;
	}
	return 1;
}

/* First matching rule wins; otherwise the kind's default. Returns -1 for a bad table. */
static int evaluate(const struct gv_rule_table *t, uint32_t size, const struct gv_context *c, uint32_t *verdict,
		    uint32_t *rule)
{
	if (size < sizeof(*t) || t->magic != GV_RULES_MAGIC || t->version != GV_RULES_VERSION ||
	    t->nrules > GV_RULES_MAX || size < sizeof(*t) + t->nrules * sizeof(struct gv_rule))
		return -1;
	const struct gv_rule *rules = (const struct gv_rule *)(t + 1);
	for (uint32_t i = 0; i < t->nrules; i++)
		if (rules[i].flags & ~(uint32_t)(GV_RULE_MATCH_MSR | GV_RULE_MATCH_GPA | GV_RULE_MATCH_VALUE))
			return -1; /* a table from a newer compiler: refuse rather than misread it */
	for (uint32_t i = 0; i < t->nrules; i++) {
		if (rule_matches(&rules[i], c)) {
			*verdict = rules[i].verdict;
			*rule = i;
			return 0;
		}
	}
	*verdict = c->kind < sizeof(t->defaults) ? t->defaults[c->kind] : GV_VERDICT_DENY;
	*rule = GV_RULE_DEFAULT;
	return 0;
}

/* Misbehave as the VMM asked, at request number n. Returns the verdict to send (0: normal). */
static uint32_t inject(volatile struct gv_idc_header *h, uint64_t n)
{
	uint32_t mode = h->inject_mode;
	if (mode == GV_INJECT_NONE || n != h->inject_at)
		return 0;
	switch (mode) {
	case GV_INJECT_CRASH:
		__builtin_trap(); /* ud2: #UD in ring 3; the kernel stops the VM */
	case GV_INJECT_HANG:
		for (;;)
			cpu_relax();
	case GV_INJECT_GARBAGE:
		return GARBAGE_VERDICT;
	case GV_INJECT_SCRIBBLE:
		/* A hostile engine: counters the VMM must not trust, then a crash (and a restart). */
		for (uint32_t g = 0; g < hm_args.nguests; g++) {
			volatile struct gv_idc_guest_ctl *ctl =
				(volatile struct gv_idc_guest_ctl *)((uint8_t *)hm_args.idc + hm_args.block_offset +
								     (uint64_t)g * hm_args.block_size);
			st64(&ctl->req_published, 1ull << 63);
			st64(&ctl->req_consumed, 1ull << 63);
			st64(&ctl->resp_published, 1ull << 63);
			st64(&ctl->req_settled, 0);
		}
		__builtin_trap();
	case GV_INJECT_SLOW: {
		uint64_t khz = h->tsc_khz ? h->tsc_khz : DEFAULT_TSC_KHZ;
		uint64_t until = rdtsc() + (uint64_t)h->inject_slow_us * khz / 1000;
		while (rdtsc() < until)
			cpu_relax();
		return 0;
	}
	default:
		return 0;
	}
}

/* Serve one request of guest g if one is waiting. 1: did work, 0: none, -1: bad rule table. */
static int serve(volatile struct gv_idc_header *h, uint32_t g)
{
	uint8_t *block = (uint8_t *)hm_args.idc + hm_args.block_offset + (uint64_t)g * hm_args.block_size;
	volatile struct gv_idc_guest_ctl *ctl = (volatile struct gv_idc_guest_ctl *)block;
	uint64_t seq = ld64(&ctl->req_consumed) + 1;
	if (seq > ld64(&ctl->req_published))
		return 0;
	uint32_t mask = hm_args.nslots - 1;
	/* Offsets were checked by the kernel at boot; re-mask them anyway. */
	uint32_t req_off = ctl->req_offset % hm_args.block_size;
	uint32_t resp_off = ctl->resp_offset % hm_args.block_size;
	volatile struct gv_idc_request *req =
		(volatile struct gv_idc_request *)(block + req_off) + (seq & mask);
	if (ld64(&req->seq) != seq)
		return 0; /* published counter ahead of the slot: not visible yet */

	/* Take a private copy: evaluate what we validated, whatever happens to the slot. */
	struct gv_context ctx;
	__builtin_memcpy(&ctx, (const void *)&req->ctx, sizeof(ctx));
	uint32_t flags = req->flags;
	st64(&ctl->req_consumed, seq);
	if (flags & GV_IDC_REQ_WITHDRAWN)
		return 1; /* settled by the VMM already: no answer */

	h->hm_current_guest = g;
	st64(&h->hm_current_seq, seq);
	h->hm_busy = 1;
	uint64_t n = h->hm_requests + 1;
	uint32_t verdict = GV_VERDICT_DENY, rule = GV_RULE_DEFAULT, policy_hash = 0;
	uint32_t rules_off = ctl->rules_offset % hm_args.block_size;
	const struct gv_rule_table *table = (const struct gv_rule_table *)(block + rules_off);
	/* The VMM may swap the table (hot reload): rules_seq is odd while it writes; evaluate again if it moved. */
	for (;;) {
		uint32_t s1 = __atomic_load_n(&ctl->rules_seq, __ATOMIC_ACQUIRE);
		if (s1 & 1) {
			cpu_relax();
			continue;
		}
		uint32_t rules_size = ctl->rules_size;
		if (rules_size > hm_args.block_size - rules_off)
			return -1;
		int bad = evaluate(table, rules_size, &ctx, &verdict, &rule);
		policy_hash = table->policy_hash;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&ctl->rules_seq, __ATOMIC_RELAXED) != s1)
			continue;
		if (bad < 0)
			return -1;
		break;
	}
	uint32_t forced = inject(h, n);
	if (forced)
		verdict = forced;

	volatile struct gv_idc_response *resp =
		(volatile struct gv_idc_response *)(block + resp_off) + (seq & mask);
	resp->verdict = verdict;
	resp->rule = rule;
	resp->policy_hash = policy_hash;
	resp->check = (uint32_t)seq ^ verdict ^ rule ^ policy_hash ^ GV_IDC_CHECK_WORD;
	st64(&resp->seq, seq);
	st64(&ctl->resp_published, seq);
	h->hm_requests = n;
	h->hm_busy = 0;
	return 1;
}

void user_hm_engine_task(uint64_t arg)
{
	(void)arg;
	volatile struct gv_idc_header *h = (volatile struct gv_idc_header *)hm_args.idc;
	uint64_t khz = h->tsc_khz ? h->tsc_khz : DEFAULT_TSC_KHZ;
	uint64_t spin = HM_IDLE_SPIN_US * khz / 1000;
	uint64_t idle_since = 0;
	h->hm_busy = 0;
	__atomic_store_n(&h->hm_state, GV_HM_STATE_READY, __ATOMIC_RELEASE);
	for (;;) {
		int worked = 0;
		h->hm_heartbeat = h->hm_heartbeat + 1;
		for (uint32_t g = 0; g < hm_args.nguests; g++) {
			int r = serve(h, g);
			if (r < 0)
				HM_EXIT(EXIT_BAD_RULES);
			worked |= r;
		}
		if (worked) {
			idle_since = 0;
			continue;
		}
		uint64_t now = rdtsc();
		if (!idle_since) {
			idle_since = now;
		} else if (now - idle_since > spin) {
			doorbell();
			idle_since = 0;
		} else {
			cpu_relax();
		}
	}
}
