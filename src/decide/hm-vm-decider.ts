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
import { HM_DOWN, HM_FAILED, HM_UP, type HmControl } from "../health/hm-control.js";
import type { IdcChannel } from "../idc/channel.js";
import type { ContextRecord } from "../vmm/context.js";
import type { Decider, DecisionResult } from "./decider.js";
import type { CompiledPolicy } from "./policy.js";
import { FAILSAFE_DEFAULTS } from "./policy.js";

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
}

const DEFAULT_RESTART_WAIT_MS = 10_000;

export class HmVmDecider implements Decider {
  readonly name = "hm-vm" as const;
  private readonly timeoutNs: bigint;
  private readonly spinNs: bigint;
  private readonly restartWaitNs: bigint;

  constructor(
    private readonly policy: CompiledPolicy,
    private readonly channel: IdcChannel,
    private readonly control: HmControl,
    opts: HmVmDeciderOptions,
    private readonly onFault: (f: HmFault) => void,
  ) {
    this.timeoutNs = BigInt(Math.round(opts.timeoutMs * 1e6));
    this.spinNs = BigInt(Math.round(opts.spinUs * 1e3));
    this.restartWaitNs = BigInt(Math.round((opts.restartWaitMs ?? DEFAULT_RESTART_WAIT_MS) * 1e6));
  }

  decide(ctx: ContextRecord): DecisionResult {
    let generation = this.control.generation;
    if (this.control.state === HM_FAILED) {
      return this.failsafe(ctx.kind, "failed", 0n, generation, "the health VM is out of restarts");
    }
    const seq = this.channel.submit(ctx);
    if (seq === undefined) return this.failsafe(ctx.kind, "ring-full", 0n, generation, "IDC request ring full");
    this.control.ring();
    const first = process.hrtime.bigint();
    // The answer deadline runs while the health VM is up; a restart resets it.
    let start = first;
    for (let spins = 0; ; spins++) {
      const r = this.channel.poll(seq);
      if (r.state === "answered") {
        this.channel.finalize(seq);
        return {
          verdict: r.verdict,
          rule: this.policy.names[r.rule] ?? `default:${ctx.kind}`,
          reason: this.policy.reasons[r.rule] ?? `no rule matched; default for ${ctx.kind}`,
          decidedBy: "hm-vm",
        };
      }
      if (r.state === "invalid") {
        this.channel.withdraw(seq);
        return this.failsafe(ctx.kind, "garbage", seq, generation < 0 ? this.control.generation : generation, r.why);
      }
      const state = this.control.state;
      if ((state === HM_DOWN || state === HM_FAILED) && this.control.isPoison(this.channel.guest, seq)) {
        this.channel.withdraw(seq);
        return this.failsafe(ctx.kind, "down", seq, generation, "the health VM died on this request");
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
      if ((waited > this.spinNs || state !== HM_UP) && spins % 16 === 0) this.control.waitState(state, 0.2);
    }
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
