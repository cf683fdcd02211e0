/**
 * The VMM's side of the IDC rings (DESIGN.md, IDC). Requests carry the full
 * context record; the health VM answers in response slots. Every response is
 * validated before use: right sequence number, a request we actually sent,
 * a verdict in range, a known rule, and the check word.
 *
 * Publication order: slot contents first, the slot's `seq` last (an atomic
 * store), then the ring's `req_published`; the reader does the reverse.
 *
 * The region is writable by the health VM, so nothing the VMM relies on is
 * read back from it: what was published and what is settled are kept in
 * host memory (IdcHostCounters, shared by the VMM's threads) and only copied
 * into the region for the engine; every loop over ring slots is bounded by
 * the ring size.
 */
import {
  ABI_CONSTANTS as C,
  IDC_GUEST_CTL,
  IDC_HEADER,
  IDC_REQUEST,
  IDC_RESPONSE,
  RULE_TABLE_HEADER,
  type Verdict,
  verdictOf,
} from "../abi/guest-abi.js";
import { GuardvisorError } from "../errors.js";
import { type ContextRecord, encodeContext } from "../model/context.js";
import type { IdcLayout } from "./layout.js";

const HDR = (n: string) => IDC_HEADER.offset(n);
const CTL = (n: string) => IDC_GUEST_CTL.offset(n);
const REQ = (n: string) => IDC_REQUEST.offset(n);
const RESP = (n: string) => IDC_RESPONSE.offset(n);
/** The offsets a waiting decider reads on every poll, looked up once. */
const CTL_RESP_PUBLISHED = CTL("resp_published");
const RESP_SEQ = RESP("seq");
const RESP_VERDICT = RESP("verdict");
const RESP_RULE = RESP("rule");
const RESP_POLICY_HASH = RESP("policy_hash");
const RESP_CHECK = RESP("check");

export type ResponseState =
  | { state: "pending" }
  | { state: "answered"; verdict: Verdict; rule: number; policyHash: number }
  | { state: "invalid"; why: string; unknownPolicy?: boolean };

export function responseCheck(seq: bigint, verdict: number, rule: number, policyHash: number): number {
  return (Number(seq & 0xffffffffn) ^ verdict ^ rule ^ policyHash ^ C.IDC_CHECK_WORD) >>> 0;
}

/** A compiled policy as the channel validates answers against it. */
export interface AcceptedPolicy {
  hash: number;
  nrules: number;
  /** The rules' names and reasons, by rule index: what an answer's rule index means (host-side only). */
  names?: readonly string[];
  reasons?: readonly string[];
}

/**
 * Policies a channel accepts answers for: the current one and a few before it
 * (hot reload), each only for requests published while it was current.
 */
const ACCEPTED_POLICIES = 4;

export interface InjectSpec {
  mode: number;
  at: number;
  slowUs: number;
}

/**
 * Each guest's ring counters as the VMM knows them, in host memory the health
 * VM cannot reach (a SharedArrayBuffer every VMM thread attaches): the last
 * request published, and the request up to which everything is settled.
 */
export class IdcHostCounters {
  private readonly words: BigUint64Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(C.IDC_MAX_GUESTS * 2 * 8)) {
    this.words = new BigUint64Array(buffer);
  }

  published(g: number): bigint {
    return Atomics.load(this.words, g * 2);
  }

  setPublished(g: number, seq: bigint): void {
    Atomics.store(this.words, g * 2, seq);
  }

  settled(g: number): bigint {
    return Atomics.load(this.words, g * 2 + 1);
  }

  /** Raise guest g's settled mark to `seq` (never lowers it); returns the mark. */
  raiseSettled(g: number, seq: bigint): bigint {
    for (;;) {
      const cur = Atomics.load(this.words, g * 2 + 1);
      if (seq <= cur) return cur;
      if (Atomics.compareExchange(this.words, g * 2 + 1, cur, seq) === cur) return seq;
    }
  }
}

/** The whole IDC region as the VMM sees it. */
export class IdcRegion {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** For atomic 64-bit loads and stores (offsets are 8-aligned). */
  readonly words: BigUint64Array;
  /** The same memory as 32-bit words: a load that makes no BigInt (a waiting decider's look). */
  readonly words32: Int32Array;

  constructor(
    buffer: ArrayBuffer,
    readonly layout: IdcLayout,
    /** The host's counters for this region (pass the owner's to every thread that attaches). */
    readonly counters: IdcHostCounters = new IdcHostCounters(),
  ) {
    if (buffer.byteLength < layout.size) throw new GuardvisorError("INTERNAL", "IDC buffer smaller than its layout");
    this.bytes = new Uint8Array(buffer, 0, layout.size);
    this.view = new DataView(buffer, 0, layout.size);
    this.words = new BigUint64Array(buffer, 0, layout.size / 8);
    this.words32 = new Int32Array(buffer, 0, layout.size / 4);
  }

  load64(off: number): bigint {
    return Atomics.load(this.words, off / 8);
  }

  store64(off: number, v: bigint): void {
    Atomics.store(this.words, off / 8, v);
  }

  blockBase(g: number): number {
    return this.layout.blockOffset + g * this.layout.blockSize;
  }

  /** Write the header and every guest's ring control and rule table. */
  initialize(
    ruleTables: readonly (Uint8Array | undefined)[],
    inject: InjectSpec = { mode: C.INJECT_NONE, at: 0, slowUs: 0 },
  ): void {
    const L = this.layout;
    if (ruleTables.length !== L.nguests) throw new GuardvisorError("INTERNAL", "one rule table per guest");
    this.bytes.fill(0);
    const v = this.view;
    v.setUint32(HDR("magic"), C.IDC_MAGIC, true);
    v.setUint32(HDR("version"), C.IDC_VERSION, true);
    v.setUint32(HDR("nguests"), L.nguests, true);
    v.setUint32(HDR("nslots"), L.nslots, true);
    v.setUint32(HDR("guest_block_offset"), L.blockOffset, true);
    v.setUint32(HDR("guest_block_size"), L.blockSize, true);
    this.setInject(inject);
    ruleTables.forEach((t, g) => {
      const b = this.blockBase(g);
      v.setUint32(b + CTL("req_offset"), L.reqOffset, true);
      v.setUint32(b + CTL("resp_offset"), L.respOffset, true);
      v.setUint32(b + CTL("rules_offset"), L.rulesOffset, true);
      if (t) this.installRules(g, t);
    });
  }

  /**
   * Put guest g's compiled rule table where the health VM reads it, before g
   * runs or while it runs (hot reload): `rules_seq` is odd while the table is
   * rewritten, and the engine evaluates again if it changed under it.
   */
  installRules(g: number, table: Uint8Array): void {
    const L = this.layout;
    if (table.length > L.rulesSize) throw new GuardvisorError("CONFIG_INVALID", "rule table larger than its IDC slot");
    const b = this.blockBase(g);
    const seqAt = new Uint32Array(this.bytes.buffer, this.bytes.byteOffset + b + CTL("rules_seq"), 1);
    Atomics.add(seqAt, 0, 1); // odd: being written
    this.bytes.set(table, b + L.rulesOffset);
    this.view.setUint32(b + CTL("rules_size"), table.length, true);
    Atomics.add(seqAt, 0, 1); // even: consistent again
  }

  setTscKhz(khz: number): void {
    this.view.setUint32(HDR("tsc_khz"), khz >>> 0, true);
  }

  setInject(inject: InjectSpec): void {
    this.view.setUint32(HDR("inject_mode"), inject.mode, true);
    this.view.setUint32(HDR("inject_at"), inject.at, true);
    this.view.setUint32(HDR("inject_slow_us"), inject.slowUs, true);
  }

  /** The health VM's view of itself, for core health management. */
  hmStatus(): { state: number; busy: boolean; guest: number; seq: bigint; requests: bigint; heartbeat: bigint } {
    const v = this.view;
    return {
      state: Atomics.load(new Uint32Array(this.bytes.buffer, this.bytes.byteOffset + HDR("hm_state"), 1), 0),
      busy: v.getUint32(HDR("hm_busy"), true) !== 0,
      guest: v.getUint32(HDR("hm_current_guest"), true),
      seq: this.load64(HDR("hm_current_seq")),
      requests: this.load64(HDR("hm_requests")),
      heartbeat: this.load64(HDR("hm_heartbeat")),
    };
  }

  private slotAt(g: number, kind: "req" | "resp", seq: bigint): number {
    const L = this.layout;
    const idx = Number(seq % BigInt(L.nslots));
    return kind === "req"
      ? this.blockBase(g) + L.reqOffset + idx * IDC_REQUEST.size
      : this.blockBase(g) + L.respOffset + idx * IDC_RESPONSE.size;
  }

  /** Flag request `seq` of guest g (if still in its slot) so the engine skips it. Settles nothing. */
  markWithdrawn(g: number, seq: bigint): void {
    const at = this.slotAt(g, "req", seq);
    if (this.load64(at + REQ("seq")) === seq) {
      const flags = this.view.getUint32(at + REQ("flags"), true);
      this.view.setUint32(at + REQ("flags"), flags | C.IDC_REQ_WITHDRAWN, true);
    }
  }

  /**
   * Make the (new) engine take guest g's requests again from the first one
   * not settled, clearing stale answers and putting back the counters a dead
   * engine may have scribbled over, all from the host's counters. Returns how
   * many published requests it will take again (at most the ring size).
   */
  rewindRing(g: number): number {
    const b = this.blockBase(g);
    const settled = this.counters.settled(g);
    const published = this.counters.published(g);
    const n = published > settled ? published - settled : 0n;
    const again = Number(n < BigInt(this.layout.nslots) ? n : BigInt(this.layout.nslots));
    for (let i = 1; i <= again; i++) this.store64(this.slotAt(g, "resp", settled + BigInt(i)) + RESP("seq"), 0n);
    this.store64(b + CTL("req_published"), published);
    this.store64(b + CTL("req_settled"), settled);
    this.store64(b + CTL("req_consumed"), settled);
    this.store64(b + CTL("resp_published"), settled);
    return again;
  }

  /** True when some guest has published a request the health VM has not taken. */
  pendingRequests(): boolean {
    for (let g = 0; g < this.layout.nguests; g++) {
      if (this.counters.published(g) > this.load64(this.blockBase(g) + CTL("req_consumed"))) return true;
    }
    return false;
  }

  /** Forget what a dead health VM wrote about itself (before a restart). */
  resetHmState(): void {
    const v = this.view;
    v.setUint32(HDR("hm_state"), C.HM_STATE_BOOTING, true);
    v.setUint32(HDR("hm_busy"), 0, true);
    v.setUint32(HDR("hm_current_guest"), 0, true);
    this.store64(HDR("hm_current_seq"), 0n);
  }

  /**
   * Guest g's channel, accepting answers under `policy` (the guest's own
   * compiled table: the region is writable by the health VM, so its copy is
   * not trusted); without one, the table now in the region.
   */
  channel(g: number, policy?: AcceptedPolicy): IdcChannel {
    if (!Number.isInteger(g) || g < 0 || g >= this.layout.nguests) {
      throw new GuardvisorError("INTERNAL", `no IDC channel for guest ${g}`);
    }
    return new IdcChannel(this, g, policy);
  }
}

/** One guest's request and response rings. */
export class IdcChannel {
  private readonly base: number;
  private readonly nslots: number;
  /** hash -> the policy, and the first request published after it was replaced. */
  private readonly policies = new Map<number, AcceptedPolicy & { replacedAt?: bigint }>();
  /** Requests sent and not yet finalized (answered, failed safe, or abandoned). */
  private readonly outstanding = new Set<bigint>();
  private nextSeq: bigint;

  constructor(
    private readonly region: IdcRegion,
    readonly guest: number,
    policy?: AcceptedPolicy,
  ) {
    this.base = region.blockBase(guest);
    this.nslots = region.layout.nslots;
    this.nextSeq = region.counters.published(guest) + 1n;
    const rulesAt = this.base + region.layout.rulesOffset;
    this.acceptPolicy(
      policy ?? {
        hash: region.view.getUint32(rulesAt + RULE_TABLE_HEADER.offset("policy_hash"), true),
        nrules: region.view.getUint32(rulesAt + RULE_TABLE_HEADER.offset("nrules"), true),
      },
    );
  }

  /**
   * Accept answers computed under this policy from now on; the one it
   * replaces stays acceptable only for requests already published (the
   * newest few are kept).
   */
  acceptPolicy(p: AcceptedPolicy): void {
    for (const old of this.policies.values()) old.replacedAt ??= this.nextSeq;
    this.policies.delete(p.hash);
    this.policies.set(p.hash, { ...p });
    while (this.policies.size > ACCEPTED_POLICIES) {
      const oldest = this.policies.keys().next().value as number;
      this.policies.delete(oldest);
    }
  }

  /** An accepted policy's rule names and reasons (what an answer's rule index means), if known. */
  explain(hash: number): { names: readonly string[]; reasons: readonly string[] } | undefined {
    const p = this.policies.get(hash);
    return p?.names && p.reasons ? { names: p.names, reasons: p.reasons } : undefined;
  }

  private slot(kind: "req" | "resp", seq: bigint): number {
    // Sequence numbers stay far below 2^53: the slot index in Number arithmetic, no BigInt made.
    const n = Number(seq);
    const idx = n <= Number.MAX_SAFE_INTEGER ? n % this.nslots : Number(seq % BigInt(this.nslots));
    const L = this.region.layout;
    return kind === "req"
      ? this.base + L.reqOffset + idx * IDC_REQUEST.size
      : this.base + L.respOffset + idx * IDC_RESPONSE.size;
  }

  get published(): bigint {
    return this.region.counters.published(this.guest);
  }

  get consumed(): bigint {
    return this.region.load64(this.base + CTL("req_consumed"));
  }

  /**
   * True when no slot may be written: every slot holds a request that is not
   * settled (host count), or that the health VM says it has not taken yet.
   */
  get full(): boolean {
    const inFlight = this.nextSeq - 1n;
    const n = BigInt(this.nslots);
    return inFlight - this.settled >= n || inFlight - this.consumed >= n;
  }

  /** Publish a request; returns its sequence number, or undefined when the ring is full. */
  submit(ctx: ContextRecord, flags = 0): bigint | undefined {
    if (this.full || this.outstanding.size >= this.nslots) return undefined;
    const seq = this.nextSeq++;
    const at = this.slot("req", seq);
    const r = this.region;
    r.store64(at + REQ("seq"), 0n); // invalidate while writing
    r.view.setUint32(at + REQ("guest"), this.guest, true);
    r.view.setUint32(at + REQ("flags"), flags, true);
    encodeContext(ctx, r.bytes, at + REQ("ctx"));
    r.store64(at + REQ("seq"), seq);
    r.counters.setPublished(this.guest, seq);
    r.store64(this.base + CTL("req_published"), seq);
    this.outstanding.add(seq);
    return seq;
  }

  /**
   * A cheap look for a waiting decider: has something landed in the response
   * slot of `seq` (the low 32 bits of its seq are `seq`'s)? Nothing is
   * validated and nothing allocated: poll() does the validating, and is
   * what a decider acts on.
   */
  answerLanded(seq: bigint): boolean {
    const at = this.slot("resp", seq) + RESP_SEQ;
    return Atomics.load(this.region.words32, at >> 2) === ((Number(seq) % 0x1_0000_0000) | 0);
  }

  /** Look for the response to `seq` and validate it. */
  poll(seq: bigint): ResponseState {
    if (!this.outstanding.has(seq)) return { state: "invalid", why: `request ${seq} is not outstanding` };
    const r = this.region;
    const publishedResp = r.load64(this.base + CTL_RESP_PUBLISHED);
    if (publishedResp >= this.nextSeq) {
      return { state: "invalid", why: `response for unknown request ${publishedResp}` };
    }
    const at = this.slot("resp", seq);
    const got = r.load64(at + RESP_SEQ);
    if (got !== seq) {
      // An older answer still in the slot is normal; anything else is garbage.
      if (got === 0n || got + BigInt(this.nslots) <= seq) return { state: "pending" };
      return { state: "invalid", why: `response slot holds seq ${got}, expected ${seq}` };
    }
    const vnum = r.view.getUint32(at + RESP_VERDICT, true);
    const rule = r.view.getUint32(at + RESP_RULE, true);
    const policyHash = r.view.getUint32(at + RESP_POLICY_HASH, true);
    const check = r.view.getUint32(at + RESP_CHECK, true);
    if (check !== responseCheck(seq, vnum, rule, policyHash)) {
      return { state: "invalid", why: `bad check word for request ${seq}` };
    }
    const verdict = verdictOf(vnum);
    if (!verdict) return { state: "invalid", why: `verdict ${vnum} out of range` };
    const policy = this.policies.get(policyHash);
    if (policy === undefined) {
      return { state: "invalid", why: `answer under unknown policy 0x${policyHash.toString(16)}`, unknownPolicy: true };
    }
    if (policy.replacedAt !== undefined && seq >= policy.replacedAt) {
      return {
        state: "invalid",
        why: `answer to request ${seq} under policy 0x${policyHash.toString(16)}, replaced before it was sent`,
      };
    }
    const nrules = policy.nrules;
    if (rule !== C.RULE_DEFAULT && rule >= nrules) {
      return { state: "invalid", why: `rule ${rule} out of range (${nrules} rules)` };
    }
    return { state: "answered", verdict, rule, policyHash };
  }

  /**
   * The request is settled (answered or failed safe): stop accepting answers
   * for it, and advance `req_settled` (a restarted health VM starts after it).
   */
  finalize(seq: bigint): void {
    this.outstanding.delete(seq);
    let low = this.nextSeq;
    for (const s of this.outstanding) if (s < low) low = s;
    const mark = this.region.counters.raiseSettled(this.guest, low - 1n);
    this.region.store64(this.base + CTL("req_settled"), mark);
  }

  /** The ring's counters, for diagnostics. */
  describe(): string {
    const r = this.region;
    const f = (n: string) => r.load64(this.base + CTL(n));
    return `published ${f("req_published")}, taken ${f("req_consumed")}, answered ${f("resp_published")}, settled ${f("req_settled")}`;
  }

  /** Every request up to here is settled (the host's count). */
  get settled(): bigint {
    return this.region.counters.settled(this.guest);
  }

  /**
   * Withdraw a request that must not be re-sent (it is settled by a fail-safe
   * verdict, e.g. the one that crashed the health VM): the engine skips it.
   */
  withdraw(seq: bigint): void {
    this.finalize(seq);
    this.region.markWithdrawn(this.guest, seq);
  }
}
