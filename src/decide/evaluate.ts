/**
 * The policy evaluator: a pure function from a context record to a decision.
 * Fail-closed: it starts from the kind's default verdict and the first
 * matching rule, in order, replaces it.
 */
import { CONTEXT_FLAGS, EVENT_KINDS, type EventKind, type Verdict } from "../abi/guest-abi.js";
import type { ContextRecord } from "../model/context.js";
import type { CompiledPolicy, CompiledRule } from "./policy.js";

export interface Decision {
  verdict: Verdict;
  /** The rule that matched, or "default:<kind>". */
  rule: string;
  reason: string;
}

/** rip_to of a rule without a RIP range. */
const RIP_ANY_TO = 0xffffffffffffffffn;

export function ruleMatches(r: CompiledRule, c: ContextRecord): boolean {
  if ((r.kindMask & (1 << EVENT_KINDS[c.kind])) === 0) return false;
  if (r.regionMask !== 0n && (c.regionId > 63 || ((r.regionMask >> BigInt(c.regionId)) & 1n) === 0n)) return false;
  if (r.vectorMask !== 0xffffffff && (c.vector > 31 || ((r.vectorMask >>> c.vector) & 1) === 0)) return false;
  if (r.objectMask !== 0xffffffff && (c.object > 31 || ((r.objectMask >>> c.object) & 1) === 0)) return false;
  if (((r.cplMask >> (c.cpl & 3)) & 1) === 0) return false;
  const rip = c.regs.rip;
  if (rip < r.ripFrom || rip >= r.ripTo) return false;
  // A rule about who wrote never matches a write whose writer is unknown or untrusted.
  const unnamed = CONTEXT_FLAGS.WRITER_UNKNOWN | CONTEXT_FLAGS.WRITER_UNTRUSTED;
  if (c.flags & unnamed && (r.ripFrom !== 0n || r.ripTo !== RIP_ANY_TO)) return false;
  if (r.msr >= 0 && r.msr !== c.msrIndex) return false;
  if (r.gpa) {
    // The whole write [gpa, gpa + access_len) lies in [from, to), tested without computing gpa + access_len.
    const gpa = BigInt(c.gpa);
    if (gpa < r.gpa.from || gpa >= r.gpa.to || BigInt(c.accessLen ?? c.data.length) > r.gpa.to - gpa) return false;
  }
  if (r.value !== undefined && writtenValue(c) !== r.value) return false;
  return true;
}

/** The value a write of at most 8 bytes stores (little-endian), or undefined for a longer one. */
function writtenValue(c: ContextRecord): bigint | undefined {
  const n = c.accessLen ?? c.data.length;
  if (n > 8 || c.flags & CONTEXT_FLAGS.DATA_PARTIAL) return undefined;
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(c.data[i] ?? 0);
  return v;
}

/** The first rule that matches, in order; undefined: the kind's default applies. */
export function firstMatch(p: CompiledPolicy, c: ContextRecord): CompiledRule | undefined {
  for (const r of p.rules) if (ruleMatches(r, c)) return r;
  return undefined;
}

/** The decision a matched rule gives. */
export function ruleDecision(p: CompiledPolicy, r: CompiledRule): Decision {
  return { verdict: r.verdict, rule: p.names[r.index] ?? `rule-${r.index}`, reason: p.reasons[r.index] ?? "" };
}

/** The decision when no rule matches an event of `kind`. */
export function defaultDecision(p: CompiledPolicy, kind: EventKind): Decision {
  return { verdict: p.defaults[kind], rule: `default:${kind}`, reason: `no rule matched; default for ${kind}` };
}

export function evaluate(p: CompiledPolicy, c: ContextRecord): Decision {
  const r = firstMatch(p, c);
  return r ? ruleDecision(p, r) : defaultDecision(p, c.kind);
}
