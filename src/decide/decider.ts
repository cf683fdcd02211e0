/**
 * Deciders rule on events. `vmm` evaluates the compiled policy inside the VMM
 * (on the vCPU's own thread); `hm-vm` asks the health-monitoring VM.
 */
import type { ContextRecord } from "../vmm/context.js";
import { type Decision, evaluate } from "./evaluate.js";
import type { CompiledPolicy } from "./policy.js";
import { decodeRuleTable } from "./rule-table.js";

export const DECIDERS = ["hm-vm", "vmm"] as const;
export type DeciderName = (typeof DECIDERS)[number];
export type DecidedBy = DeciderName | "failsafe";

export interface DecisionResult extends Decision {
  decidedBy: DecidedBy;
}

export interface Decider {
  readonly name: DeciderName;
  decide(ctx: ContextRecord): DecisionResult;
}

/** The in-VMM decider: evaluates the binary rule table on the vCPU's thread. */
export class VmmDecider implements Decider {
  readonly name = "vmm" as const;
  private readonly policy: CompiledPolicy;
  constructor(policy: CompiledPolicy) {
    // Evaluate what the table says, exactly as the health VM will read it.
    this.policy = { ...policy, ...decodeRuleTable(policy.table) };
  }
  decide(ctx: ContextRecord): DecisionResult {
    return { ...evaluate(this.policy, ctx), decidedBy: "vmm" };
  }
}
