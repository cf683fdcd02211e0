/**
 * The `hm-vm` decider, on a guest's vCPU thread: it sends the context record
 * to the health VM over the IDC channel and waits for a validated verdict,
 * spinning first (answers usually come in microseconds) and then sleeping in
 * short steps. When the health VM is down for good, answers garbage, answers
 * too late or died on this very request, it applies the fail-safe verdict
 * itself (decidedBy "failsafe") and reports the fault; core health management
 * (src/health/health-manager.ts) restarts the health VM.
 */
import type { EventKind } from "../abi/guest-abi.js";
import { attachIdc, type IdcAttach } from "../idc/attach.js";
import type { IdcChannel } from "../idc/channel.js";
import { HM_FAILED, HM_UP, type HmControl } from "../idc/hm-control.js";
import type { ContextRecord } from "../model/context.js";
import { scaled } from "../time-scale.js";
import type { Decider, DecisionResult, ReloadablePolicy } from "./decider.js";
import { FAILSAFE_DEFAULTS } from "./policy.js";
import { acceptedPolicyOf } from "./rule-table.js";

export type HmFaultReason = "timeout" | "garbage" | "down" | "ring-full" | "failed";

/** A health-VM fault seen by a guest's decider, reported to core health management. */
export interface HmFault {
  reason: HmFaultReason;
  guest: number;
  seq: bigint;
  /** The health VM generation the request was sent to. */
  generation: number;
  detail: string;
}

export interface HmVmDeciderOptions {
  timeoutMs: number;
  /** Busy-poll this long before sleeping between polls. */
  spinUs: number;
  /** While the health VM is being restarted, wait this long for it (the guest stays paused: fail-safe). */
  restartWaitMs?: number;
  /** Called when an answer names a policy this decider does not know yet (it may be mid-reload). */
  refresh?: () => void;
}

/** What a thread needs to decide one guest's events through the health VM. */
export interface HmVmDeciderInit {
  idc: IdcAttach;
  guest: number;
  timeoutMs: number;
  spinUs: number;
}

/**
 * The hm-vm decider for one guest on this thread: attach the IDC region, open
 * the guest's channel accepting answers under `policy`, and take a reloaded
 * policy from `takeReload` when an answer names one this thread does not know
 * yet. The one way the vCPU worker and the tests build it.
 */
export function createHmVmDecider(
  init: HmVmDeciderInit,
  policy: ReloadablePolicy,
  onFault: (f: HmFault) => void,
  takeReload: () => ReloadablePolicy | undefined = () => undefined,
): { decider: HmVmDecider; control: HmControl } {
  const { region, control } = attachIdc(init.idc);
  const decider: HmVmDecider = new HmVmDecider(
    policy,
    region.channel(init.guest, acceptedPolicyOf(policy.table)),
    control,
    {
      timeoutMs: init.timeoutMs,
      spinUs: init.spinUs,
      refresh: () => {
        const p = takeReload();
        if (p) decider.reload(p);
      },
    },
    onFault,
  );
  return { decider, control };
}

/** How long a decision waits for a restarted health VM (10 s, times the time scale). */
const DEFAULT_RESTART_WAIT_MS = scaled(10_000);

/** Quick looks at the response slot between two full looks while spinning (a mask: 2^n - 1). */
const QUICK_LOOKS = 15;

export class HmVmDecider implements Decider {
  readonly name = "hm-vm" as const;
  private readonly timeoutNs: bigint;
  private readonly spinNs: bigint;
  private readonly restartWaitNs: bigint;
  private readonly refresh: () => void;

  /** The health VM generation this thread saw fail (-1: none); its answers are not taken. */
  private distrusted = -1;

  constructor(
    policy: ReloadablePolicy,
    private readonly channel: IdcChannel,
    private readonly control: HmControl,
    opts: HmVmDeciderOptions,
    private readonly onFault: (f: HmFault) => void,
  ) {
    this.refresh = opts.refresh ?? (() => {});
    this.reload(policy);
    this.timeoutNs = BigInt(Math.round(opts.timeoutMs * 1e6));
    this.spinNs = BigInt(Math.round(opts.spinUs * 1e3));
    this.restartWaitNs = BigInt(Math.round((opts.restartWaitMs ?? DEFAULT_RESTART_WAIT_MS) * 1e6));
  }

  /** Accept answers under this policy (and, for a while, under the ones before it: the channel keeps them). */
  reload(p: ReloadablePolicy): void {
    this.channel.acceptPolicy({ ...acceptedPolicyOf(p.table), names: p.names, reasons: p.reasons });
  }

  decide(ctx: ContextRecord): DecisionResult {
    if (this.distrusted >= 0 && !this.awaitSuccessor()) {
      return this.failsafe(ctx.kind, "failed", 0n, this.control.generation, "the health VM did not come back");
    }
    const submitted = this.control.generation;
    let generation = submitted;
    if (this.control.state === HM_FAILED) {
      return this.failsafe(ctx.kind, "failed", 0n, generation, "the health VM is out of restarts");
    }
    const seq = this.channel.submit(ctx);
    if (seq === undefined) return this.failsafe(ctx.kind, "ring-full", 0n, generation, "IDC request ring full");
    this.control.ring();
    const first = process.hrtime.bigint();
    // The answer deadline runs while the health VM is up; a restart resets it.
    let start = first;
    let refreshed = false;
    for (let spins = 0; ; spins++) {
      // While spinning, between two full looks (validation, the health VM's state, the clock),
      // only the response slot's seq word is read: the sooner an answer is seen.
      if ((spins & QUICK_LOOKS) !== 0 && !this.channel.answerLanded(seq)) continue;
      const r = this.channel.poll(seq);
      if (r.state === "answered") {
        this.channel.finalize(seq);
        const x = this.channel.explain(r.policyHash);
        return {
          verdict: r.verdict,
          rule: x?.names[r.rule] ?? `default:${ctx.kind}`,
          reason: x?.reasons[r.rule] ?? `no rule matched; default for ${ctx.kind}`,
          decidedBy: "hm-vm",
        };
      }
      if (r.state === "invalid" && r.unknownPolicy && !refreshed) {
        // A reload reached the health VM before this thread: take it, then look again.
        refreshed = true;
        this.refresh();
        continue;
      }
      if (r.state === "invalid") {
        this.channel.withdraw(seq);
        return this.failsafe(ctx.kind, "garbage", seq, generation < 0 ? this.control.generation : generation, r.why);
      }
      const state = this.control.state;
      // Down, or restarted since the request went out (this thread may have slept through the whole restart).
      const restarted = state !== HM_UP || this.control.generation !== submitted;
      if (restarted && this.control.isPoison(this.channel.guest, seq)) {
        this.channel.withdraw(seq);
        // Charged to the generation it went out under: the next decision waits for a later one.
        return this.failsafe(ctx.kind, "down", seq, submitted, "the health VM died on this request");
      }
      if (state === HM_FAILED) {
        this.channel.withdraw(seq);
        return this.failsafe(ctx.kind, "failed", seq, generation, "the health VM is out of restarts");
      }
      const now = process.hrtime.bigint();
      if (state !== HM_UP) {
        // The deadline (and the generation a fault is reported against) starts again when it is back.
        generation = -1;
        start = now;
        if (now - first > this.restartWaitNs) {
          this.channel.withdraw(seq);
          return this.failsafe(ctx.kind, "failed", seq, generation, "the health VM did not come back");
        }
      }
      if (generation < 0) generation = this.control.generation;
      const waited = now - start;
      if (waited > this.timeoutNs) {
        this.channel.withdraw(seq);
        const ms = Number(this.timeoutNs / 1_000_000n);
        return this.failsafe(
          ctx.kind,
          "timeout",
          seq,
          generation,
          `no answer in ${ms} ms (${this.channel.describe()})`,
        );
      }
      // Spin while the answer is likely to come in microseconds, then sleep in short steps.
      if (waited > this.spinNs || state !== HM_UP) {
        this.control.waitState(state, 0.2);
        spins |= QUICK_LOOKS; // sleeping: a full look after every sleep
      }
    }
  }

  /**
   * After this thread saw the health VM fail, no answer from that instance is
   * trusted: wait (up to the restart wait) until its successor is up, or the
   * health VM is out of restarts. False when it did not come back in time.
   */
  private awaitSuccessor(): boolean {
    const start = process.hrtime.bigint();
    while (this.control.generation <= this.distrusted && this.control.state !== HM_FAILED) {
      if (process.hrtime.bigint() - start > this.restartWaitNs) return false;
      this.control.waitState(this.control.state, 0.2);
    }
    this.distrusted = -1;
    return true;
  }

  private failsafe(
    kind: EventKind,
    reason: HmFaultReason,
    seq: bigint,
    generation: number,
    detail: string,
  ): DecisionResult {
    // A death is reported by whoever saw the VM stop; "failed" needs no restart.
    if (reason !== "down" && reason !== "failed") {
      this.onFault({ reason, guest: this.channel.guest, seq, generation, detail });
    }
    // The instance that failed is replaced; until then none of its answers count.
    if (reason !== "failed" && reason !== "ring-full" && generation >= 0) this.distrusted = generation;
    const verdict = FAILSAFE_DEFAULTS[kind];
    const what = reason === "down" ? "crashed" : reason;
    return {
      verdict,
      rule: "failsafe",
      reason: `health VM ${what}: ${detail}; fail-safe verdict ${verdict}`,
      decidedBy: "failsafe",
    };
  }
}
