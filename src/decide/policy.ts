/**
 * Policies: ordered rules that map an event (kind, region, vector, CPL, RIP,
 * MSR) to a verdict with a reason. A policy is compiled against one guest's
 * protected regions into numeric rules that deciders evaluate.
 */
import { EVENT_KINDS, type EventKind, type Verdict } from "../abi/guest-abi.js";
import { configError } from "../errors.js";
import type { ProtectedRegion } from "../model/regions.js";
import { encodeRuleTable } from "./rule-table.js";

export interface PolicyRule {
  name: string;
  /** Event kinds this rule matches; all when absent. */
  kinds?: EventKind[];
  /** Protected region names (e.g. ".text"); any when absent. */
  regions?: string[];
  /** CPU exception vectors; any when absent. */
  vectors?: number[];
  /** Integrity objects (INTEGRITY_*: CR0, CR4, IDTR, GDTR, paging, CR3); any when absent. */
  objects?: number[];
  /** Privilege levels; any when absent. */
  cpl?: number[];
  /** Guest RIP range [from, to), as offsets from the policy's `ripBase`; any when absent. */
  rip?: { from: number; to: number };
  /** MSR index; any when absent. */
  msr?: number;
  /**
   * Guest-physical range [from, to) that the whole write must lie in (a symbol
   * or address range inside a protected region); any when absent.
   */
  gpa?: { from: number; to: number };
  /** The value written (at most 8 bytes, little-endian) must be this; any when absent. */
  value?: bigint;
  verdict: Verdict;
  reason: string;
}

/** `audit`: every deny and deny-fault becomes log when the policy is compiled. */
export type PolicyMode = "enforce" | "audit";

/** An MSR the VMM filters writes to, and the verdict for a write. */
export interface MsrObject {
  index: number;
  /** Its architectural name (e.g. "LSTAR"), or the index in hex. */
  name: string;
  action: Verdict;
}

/** A descriptor table (IDT, GDT) the guest may seal; once sealed, writes get `action`. */
export interface SealedTableObject {
  seal: boolean;
  action: Verdict;
}

/** Control-register bits that must stay set once the guest has set them. */
export interface PinnedCrObject {
  /** Bit masks (CR0 and CR4 bits all lie below bit 32). */
  cr0: number;
  cr4: number;
  /** The same bits by name, as written in the policy. */
  cr0Bits: string[];
  cr4Bits: string[];
  action: Verdict;
}

/** Protected objects other than memory regions; enforced by the VMM. */
export interface PolicyObjects {
  msrs: MsrObject[];
  idt?: SealedTableObject;
  gdt?: SealedTableObject;
  /** CR3 and the page-table entries translating protected memory. */
  paging?: SealedTableObject;
  pinnedCr?: PinnedCrObject;
}

/** How often a guest may be restarted, and what happens after that. */
export interface RestartPolicy {
  /** Restarts allowed (within `windowSeconds`, when given). */
  limit: number;
  windowSeconds?: number;
  /** What happens instead of a restart once the limit is used up. */
  exhausted: "halt" | "pause";
}

export interface Policy {
  name: string;
  rules: PolicyRule[];
  /** Verdict when no rule matches, per event kind (fail-closed defaults). */
  defaults: Record<EventKind, Verdict>;
  /** Absent = enforce. */
  mode?: PolicyMode;
  /**
   * A stock Linux guest's own runtime code patching (text_poke at its static
   * key, static call and ftrace sites): absent = "sanctioned", allowed;
   * "immutable" denies it like any other write to sealed code.
   */
  kernelPatching?: "sanctioned" | "immutable";
  /**
   * What the rules' RIP ranges are offsets from (absent: 0). A stock Linux
   * kernel's code lies above 2^63, beyond what a policy's numbers hold: its
   * rules' ranges are offsets from the kernel image's base (linux-vm.ts).
   */
  ripBase?: bigint;
  /** Absent = no MSR filter entries, no sealing, no pinned bits. */
  objects?: PolicyObjects;
  /** Absent = restarts are not limited by the policy. */
  restart?: RestartPolicy;
}

/**
 * The verdict that takes effect under a policy's mode: in audit mode deny and
 * deny-fault become log (for rules, defaults and object actions alike).
 */
export function effectiveVerdict(mode: PolicyMode | undefined, v: Verdict): Verdict {
  return mode === "audit" && (v === "deny" || v === "deny-fault") ? "log" : v;
}

/** Fail-safe verdicts when no decider answers in time (DESIGN.md, Verdicts). */
export const FAILSAFE_DEFAULTS: Record<EventKind, Verdict> = {
  "protected-write": "deny",
  "msr-write": "deny",
  "cpu-exception": "log",
  crash: "restart",
  hang: "restart",
  integrity: "restart",
};

export const DEFAULT_POLICY: Policy = {
  name: "default",
  rules: [
    {
      name: "protect-kernel-regions",
      kinds: ["protected-write"],
      verdict: "deny",
      reason: "write to a protected kernel region",
    },
    {
      name: "restore-pinned-cr",
      kinds: ["integrity"],
      objects: [0, 4],
      verdict: "deny",
      reason: "a pinned CR0/CR4 bit was cleared: set it back",
    },
    {
      name: "protect-page-tables",
      kinds: ["integrity"],
      objects: [18, 19],
      verdict: "deny",
      reason: "would remap sealed kernel memory: the page-table entry or CR3 is set back",
    },
    {
      name: "protect-syscall-msrs",
      kinds: ["msr-write"],
      verdict: "deny-fault",
      reason: "write to a sealed system-call or EFER MSR: refused with #GP",
    },
  ],
  defaults: FAILSAFE_DEFAULTS,
};

/** A rule in numeric form (the `gv_rule` layout): what both deciders evaluate. */
export interface CompiledRule {
  index: number;
  /** Bit (1 << kind number) per matching event kind. */
  kindMask: number;
  /** Bit per region id 1..63; 0n = any. */
  regionMask: bigint;
  /** Bit per vector 0..31; 0xffffffff = any. */
  vectorMask: number;
  /** Bit per integrity object 0..31; 0xffffffff = any. */
  objectMask: number;
  /** Bit per CPL 0..3; 0xf = any. */
  cplMask: number;
  ripFrom: bigint;
  ripTo: bigint;
  /** -1 = any. */
  msr: number;
  /**
   * Guest-physical range [from, to) that the whole write must lie in
   * (`GV_RULE_MATCH_GPA`); any when absent.
   */
  gpa?: { from: bigint; to: bigint };
  /** The value written (at most 8 bytes, little-endian) must be this (`GV_RULE_MATCH_VALUE`); any when absent. */
  value?: bigint;
  verdict: Verdict;
}

/** Region ids fit a 64-bit mask (bit 0 unused). */
export const MAX_REGIONS = 63;

export interface CompiledPolicy {
  name: string;
  /** The binary rule table (rule-table.ts): what both deciders load. */
  table: Uint8Array;
  rules: CompiledRule[];
  /** Rule names and reasons, by rule index (kept host-side for the audit). */
  names: string[];
  reasons: string[];
  defaults: Record<EventKind, Verdict>;
}

const ALL_KINDS = Object.values(EVENT_KINDS).reduce((m, k) => m | (1 << k), 0);

/**
 * Compiles a policy against one guest's protected regions. In audit mode every
 * deny and deny-fault (rules and defaults) is compiled as log, and the rule's
 * reason says what it would have been.
 */
export function compilePolicy(p: Policy, regions: readonly ProtectedRegion[]): CompiledPolicy {
  const rules = p.rules.map((r, index): CompiledRule => {
    let regionMask = 0n;
    for (const name of r.regions ?? []) {
      const found = regions.filter((g) => g.name === name);
      if (found.length === 0) throw configError(`rules[${index}].regions`, `no protected region named ${name}`);
      for (const g of found) {
        if (g.id > MAX_REGIONS)
          throw configError(`rules[${index}].regions`, `region ${name} has id ${g.id} > ${MAX_REGIONS}`);
        regionMask |= 1n << BigInt(g.id);
      }
    }
    const rule: CompiledRule = {
      index,
      kindMask: r.kinds ? r.kinds.reduce((m, k) => m | (1 << EVENT_KINDS[k]), 0) : ALL_KINDS,
      regionMask,
      vectorMask: r.vectors ? r.vectors.reduce((m, v) => (m | (1 << v)) >>> 0, 0) : 0xffffffff,
      objectMask: r.objects ? r.objects.reduce((m, o) => (m | (1 << o)) >>> 0, 0) : 0xffffffff,
      cplMask: r.cpl ? r.cpl.reduce((m, c) => m | (1 << c), 0) : 0xf,
      ripFrom: r.rip ? (p.ripBase ?? 0n) + BigInt(r.rip.from) : 0n,
      ripTo: r.rip ? (p.ripBase ?? 0n) + BigInt(r.rip.to) : 0xffffffffffffffffn,
      msr: r.msr ?? -1,
      verdict: effectiveVerdict(p.mode, r.verdict),
    };
    if (r.gpa) rule.gpa = { from: BigInt(r.gpa.from), to: BigInt(r.gpa.to) };
    if (r.value !== undefined) rule.value = r.value;
    return rule;
  });
  const defaults = { ...p.defaults };
  for (const k of Object.keys(defaults) as EventKind[]) defaults[k] = effectiveVerdict(p.mode, defaults[k]);
  return {
    name: p.name,
    table: encodeRuleTable({ rules, defaults }),
    rules,
    names: p.rules.map((r) => r.name),
    reasons: p.rules.map((r, i) =>
      rules[i]?.verdict === r.verdict ? r.reason : `${r.reason} (audit mode: would ${r.verdict})`,
    ),
    defaults,
  };
}
