/**
 * The compiled rule table in its binary form (`gv_rule_table` + `gv_rule`,
 * src/abi/guest-abi.ts). Both deciders load these same bytes: the in-VMM
 * evaluator decodes them here, the health VM's engine reads them in C.
 */
import {
  ABI_CONSTANTS as C,
  EVENT_KINDS,
  type EventKind,
  RULE,
  RULE_TABLE_HEADER,
  VERDICTS,
  type Verdict,
  verdictOf,
} from "../abi/guest-abi.js";
import { GuardvisorError } from "../errors.js";
import type { CompiledRule } from "./policy.js";

const H = (n: string) => RULE_TABLE_HEADER.offset(n);
const R = (n: string) => RULE.offset(n);
const U64_MAX = 0xffffffffffffffffn;
const KNOWN_FLAGS = C.RULE_MATCH_MSR | C.RULE_MATCH_GPA | C.RULE_MATCH_VALUE;

export interface RuleTableContent {
  rules: CompiledRule[];
  defaults: Record<EventKind, Verdict>;
}

/** The policy_hash a compiled table carries (it names the policy in health-VM answers). */
export function policyHashOf(table: Uint8Array): number {
  if (table.length < RULE_TABLE_HEADER.size) return 0;
  return new DataView(table.buffer, table.byteOffset, table.byteLength).getUint32(H("policy_hash"), true);
}

/** What an IDC channel needs to accept answers under a compiled table. */
export function acceptedPolicyOf(table: Uint8Array): { hash: number; nrules: number } {
  const nrules =
    table.length < RULE_TABLE_HEADER.size
      ? 0
      : new DataView(table.buffer, table.byteOffset, table.byteLength).getUint32(H("nrules"), true);
  return { hash: policyHashOf(table), nrules };
}

export function ruleTableSize(nrules: number): number {
  return RULE_TABLE_HEADER.size + nrules * RULE.size;
}

/** FNV-1a over the whole table (policy_hash zero): names what the table decides, defaults included. */
function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

export function encodeRuleTable(t: RuleTableContent): Uint8Array {
  if (t.rules.length > C.RULES_MAX) {
    throw new GuardvisorError("CONFIG_INVALID", `rules: ${t.rules.length} rules, at most ${C.RULES_MAX}`);
  }
  const buf = new Uint8Array(ruleTableSize(t.rules.length));
  const v = new DataView(buf.buffer);
  t.rules.forEach((r, i) => {
    const at = RULE_TABLE_HEADER.size + i * RULE.size;
    v.setUint32(at + R("kind_mask"), r.kindMask, true);
    v.setUint32(at + R("vector_mask"), r.vectorMask, true);
    v.setUint32(at + R("object_mask"), r.objectMask, true);
    v.setUint32(at + R("cpl_mask"), r.cplMask, true);
    const flags =
      (r.msr >= 0 ? C.RULE_MATCH_MSR : 0) |
      (r.gpa ? C.RULE_MATCH_GPA : 0) |
      (r.value !== undefined ? C.RULE_MATCH_VALUE : 0);
    v.setUint32(at + R("flags"), flags, true);
    v.setUint32(at + R("msr"), Math.max(r.msr, 0), true);
    v.setUint32(at + R("verdict"), VERDICTS[r.verdict], true);
    v.setBigUint64(at + R("region_mask"), r.regionMask, true);
    v.setBigUint64(at + R("rip_from"), r.ripFrom, true);
    v.setBigUint64(at + R("rip_to"), r.ripTo, true);
    v.setBigUint64(at + R("gpa_from"), r.gpa?.from ?? 0n, true);
    v.setBigUint64(at + R("gpa_to"), r.gpa?.to ?? 0n, true);
    v.setBigUint64(at + R("value"), BigInt.asUintN(64, r.value ?? 0n), true);
  });
  v.setUint32(H("magic"), C.RULES_MAGIC, true);
  v.setUint32(H("version"), C.RULES_VERSION, true);
  v.setUint32(H("nrules"), t.rules.length, true);
  for (const [kind, n] of Object.entries(EVENT_KINDS)) {
    v.setUint8(H("defaults") + n, VERDICTS[t.defaults[kind as EventKind]]);
  }
  v.setUint32(H("policy_hash"), fnv1a(buf), true);
  return buf;
}

/** Decode and validate a table (the bytes may have been through a guest). */
export function decodeRuleTable(buf: Uint8Array): RuleTableContent {
  const bad = (why: string) => new GuardvisorError("CONFIG_INVALID", `rule table: ${why}`);
  if (buf.length < RULE_TABLE_HEADER.size) throw bad("truncated header");
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (v.getUint32(H("magic"), true) !== C.RULES_MAGIC) throw bad("bad magic");
  if (v.getUint32(H("version"), true) !== C.RULES_VERSION) throw bad("unsupported version");
  const n = v.getUint32(H("nrules"), true);
  if (n > C.RULES_MAX) throw bad(`${n} rules, at most ${C.RULES_MAX}`);
  if (buf.length < ruleTableSize(n)) throw bad("truncated rules");
  const verdict = (x: number, where: string): Verdict => {
    const vd = verdictOf(x);
    if (!vd) throw bad(`${where}: verdict ${x} out of range`);
    return vd;
  };
  const defaults = {} as Record<EventKind, Verdict>;
  for (const [kind, num] of Object.entries(EVENT_KINDS)) {
    defaults[kind as EventKind] = verdict(v.getUint8(H("defaults") + num), `default for ${kind}`);
  }
  const rules: CompiledRule[] = [];
  for (let i = 0; i < n; i++) {
    const at = RULE_TABLE_HEADER.size + i * RULE.size;
    const flags = v.getUint32(at + R("flags"), true);
    if ((flags & ~KNOWN_FLAGS) !== 0) throw bad(`rule ${i}: unknown flags 0x${flags.toString(16)}`);
    if (v.getUint32(at + R("reserved"), true) !== 0) throw bad(`rule ${i}: reserved field not 0`);
    const ripTo = v.getBigUint64(at + R("rip_to"), true);
    const rule: CompiledRule = {
      index: i,
      kindMask: v.getUint32(at + R("kind_mask"), true),
      regionMask: v.getBigUint64(at + R("region_mask"), true),
      vectorMask: v.getUint32(at + R("vector_mask"), true),
      objectMask: v.getUint32(at + R("object_mask"), true),
      cplMask: v.getUint32(at + R("cpl_mask"), true),
      ripFrom: v.getBigUint64(at + R("rip_from"), true),
      ripTo: ripTo === U64_MAX ? U64_MAX : ripTo,
      msr: flags & C.RULE_MATCH_MSR ? v.getUint32(at + R("msr"), true) : -1,
      verdict: verdict(v.getUint32(at + R("verdict"), true), `rule ${i}`),
    };
    if (flags & C.RULE_MATCH_GPA) {
      rule.gpa = { from: v.getBigUint64(at + R("gpa_from"), true), to: v.getBigUint64(at + R("gpa_to"), true) };
    }
    if (flags & C.RULE_MATCH_VALUE) rule.value = v.getBigUint64(at + R("value"), true);
    rules.push(rule);
  }
  return { rules, defaults };
}
