/**
 * The `hm-vm` decider, on a guest's vCPU thread: it sends the context record
 * to the health VM over the IDC channel and waits for a validated verdict.
 * When the health VM is down, answers garbage or answers too late, it applies
 * the fail-safe verdict itself (decidedBy "failsafe") and reports the fault;
 * core health management restarts the health VM.
 */
import type { EventKind } from "../abi/guest-abi.js";
import { HM_DOWN, type HmControl } from "../health/hm-control.js";
import type { IdcChannel } from "../idc/channel.js";
import type { ContextRecord } from "../vmm/context.js";
import type { Decider, DecisionResult } from "./decider.js";
import type { CompiledPolicy } from "./policy.js";
import { FAILSAFE_DEFAULTS } from "./policy.js";

export type HmFaultReason = "timeout" | "garbage" | "down" | "ring-full";

export interface HmFault {
  reason: HmFaultReason;
  guest: number;
  seq: bigint;
  detail: string;
}

/** How long to spin before sleeping between polls. */
const SPIN_NS = 300_000n;

export class HmVmDecider implements Decider {
  readonly name = "hm-vm" as const;
  private readonly timeoutNs: bigint;

  constructor(
    private readonly policy: CompiledPolicy,
    private readonly channel: IdcChannel,
    private readonly control: HmControl,
    timeoutMs: number,
    private readonly onFault: (f: HmFault) => void,
    private readonly settle: (seq: bigint) => void,
  ) {
    this.timeoutNs = BigInt(Math.round(timeoutMs * 1e6));
  }

  decide(ctx: ContextRecord): DecisionResult {
    const seq = this.channel.submit(ctx);
    if (seq === undefined) return this.failsafe(ctx.kind, "ring-full", 0n, "IDC request ring full");
    this.control.ring();
    const start = process.hrtime.bigint();
    for (let spins = 0; ; spins++) {
      const r = this.channel.poll(seq);
      if (r.state === "answered") {
        this.done(seq);
        return {
          verdict: r.verdict,
          rule: this.ruleName(ctx.kind, r.rule),
          reason: this.policy.reasons[r.rule] ?? `no rule matched; default for ${ctx.kind}`,
          decidedBy: "hm-vm",
        };
      }
      if (r.state === "invalid") {
        this.channel.withdraw(seq);
        this.done(seq);
        return this.failsafe(ctx.kind, "garbage", seq, r.why);
      }
      const state = this.control.state;
      if (state === HM_DOWN && this.control.isPoison(this.channel.guest, seq)) {
        this.done(seq);
        return this.failsafe(ctx.kind, "down", seq, "the health VM died on this request");
      }
      const waited = process.hrtime.bigint() - start;
      if (waited > this.timeoutNs) {
        this.channel.withdraw(seq);
        this.done(seq);
        return this.failsafe(ctx.kind, "timeout", seq, `no answer in ${Number(this.timeoutNs / 1_000_000n)} ms`);
      }
      // Spin while the answer is likely to come in microseconds, then sleep in short steps.
      if (waited > SPIN_NS && spins % 64 === 0) this.control.waitState(state, 0.2);
    }
  }

  private done(seq: bigint): void {
    this.channel.finalize(seq);
    this.settle(seq);
  }

  private ruleName(kind: EventKind, rule: number): string {
    return this.policy.names[rule] ?? `default:${kind}`;
  }

  private failsafe(kind: EventKind, reason: HmFaultReason, seq: bigint, detail: string): DecisionResult {
    // "down" was already reported by whoever saw the health VM die.
    if (reason !== "down") this.onFault({ reason, guest: this.channel.guest, seq, detail });
    const verdict = FAILSAFE_DEFAULTS[kind];
    return {
      verdict,
      rule: "failsafe",
      reason: `health VM ${reason === "down" ? "crashed" : reason}: ${detail}; fail-safe verdict ${verdict}`,
      decidedBy: "failsafe",
    };
  }
}
