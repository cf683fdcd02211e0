/**
 * Deciders rule on events. `vmm` evaluates the compiled policy inside the VMM
 * (on the vCPU's own thread); `hm-vm` asks the health-monitoring VM.
 */
import type { ContextRecord } from "../vmm/context.js";
import { type Decision, evaluate } from "./evaluate.js";
import type { CompiledPolicy } from "./policy.js";

export const DECIDERS = ["vmm"] as const;
export type DeciderName = (typeof DECIDERS)[number];
export type DecidedBy = DeciderName | "hm-vm" | "failsafe";

export interface DecisionResult extends Decision {
  decidedBy: DecidedBy;
}

export interface Decider {
  readonly name: DeciderName;
  decide(ctx: ContextRecord): DecisionResult;
}

export class VmmDecider implements Decider {
  readonly name = "vmm" as const;
  constructor(private readonly policy: CompiledPolicy) {}
  decide(ctx: ContextRecord): DecisionResult {
    return { ...evaluate(this.policy, ctx), decidedBy: "vmm" };
  }
}
