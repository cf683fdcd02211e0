/**
 * Deciders rule on events. `vmm` evaluates the compiled policy inside the VMM
 * (on the vCPU's own thread); `hm-vm` asks the health-monitoring VM.
 */
import { EVENT_KINDS, type EventKind } from "../abi/guest-abi.js";
import { GuardvisorError } from "../errors.js";
import type { ContextRecord } from "../model/context.js";
import { type Decision, defaultDecision, firstMatch, ruleDecision } from "./evaluate.js";
import type { CompiledPolicy, CompiledRule } from "./policy.js";
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

const EVENT_KIND_LIST = Object.keys(EVENT_KINDS) as EventKind[];

/**
 * The in-VMM decider: evaluates the binary rule table on the vCPU's thread.
 * Its answers are made once per rule and per kind's default, and shared
 * (frozen): an answer is built on every event otherwise.
 */
export class VmmDecider implements Decider {
  readonly name = "vmm" as const;
  private policy!: CompiledPolicy;
  private byRule = new Map<CompiledRule, DecisionResult>();
  private byDefault = new Map<EventKind, DecisionResult>();
  constructor(policy: ReloadablePolicy) {
    this.reload(policy);
  }
  reload(p: ReloadablePolicy): void {
    // Evaluate what the table says, exactly as the health VM will read it.
    const policy: CompiledPolicy = { ...p, ...decodeRuleTable(p.table) };
    const answer = (d: Decision): DecisionResult => Object.freeze({ ...d, decidedBy: "vmm" as const });
    this.byRule = new Map(policy.rules.map((r) => [r, answer(ruleDecision(policy, r))]));
    this.byDefault = new Map(EVENT_KIND_LIST.map((k) => [k, answer(defaultDecision(policy, k))]));
    this.policy = policy;
  }
  decide(ctx: ContextRecord): DecisionResult {
    const r = firstMatch(this.policy, ctx);
    const answer = r ? this.byRule.get(r) : this.byDefault.get(ctx.kind);
    if (!answer) throw new GuardvisorError("INTERNAL", `no answer made for a ${ctx.kind} event`);
    return answer;
  }
}
