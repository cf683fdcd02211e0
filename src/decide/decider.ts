/**
 * Deciders rule on events. `vmm` evaluates the compiled policy inside the VMM
 * (on the vCPU's own thread); `hm-vm` asks the health-monitoring VM.
 */
import type { ContextRecord } from "../model/context.js";
import { type Decision, evaluate } from "./evaluate.js";
import type { CompiledPolicy } from "./policy.js";
import { decodeRuleTable } from "./rule-table.js";

export const DECIDERS = ["hm-vm", "vmm"] as const;
export type DeciderName = (typeof DECIDERS)[number];
export type DecidedBy = DeciderName | "failsafe";

export interface DecisionResult extends Decision {
  decidedBy: DecidedBy;
}

/** What a hot reload hands a decider (the binary table decides; names and reasons explain). */
export type ReloadablePolicy = Pick<CompiledPolicy, "name" | "table" | "names" | "reasons">;

export interface Decider {
  readonly name: DeciderName;
  decide(ctx: ContextRecord): DecisionResult;
  /** Hot reload: decide by this policy from the next event on. */
  reload(p: ReloadablePolicy): void;
}

/** The in-VMM decider: evaluates the binary rule table on the vCPU's thread. */
export class VmmDecider implements Decider {
  readonly name = "vmm" as const;
  private policy: CompiledPolicy;
  constructor(policy: ReloadablePolicy) {
    // Evaluate what the table says, exactly as the health VM will read it.
    this.policy = { ...policy, ...decodeRuleTable(policy.table) };
  }
  reload(p: ReloadablePolicy): void {
    this.policy = { ...p, ...decodeRuleTable(p.table) };
  }
  decide(ctx: ContextRecord): DecisionResult {
    return { ...evaluate(this.policy, ctx), decidedBy: "vmm" };
  }
}
