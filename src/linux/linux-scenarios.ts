/**
 * What each Linux test scenario must show (src/linux/test-guest.ts runs them
 * in the guest): the result line the guest prints, and the events Guardvisor
 * records, from a run's report as `run --linux --scenario NAME --json` prints
 * it. Used by `run --scenario all` and by the lab tests, so both hold a run
 * to the same expectations.
 */
import { SANCTIONED_RULE } from "./linux-seal.js";
import type { LinuxScenario } from "./test-guest.js";

/** An event as the report lists it. */
export interface ReportEvent {
  kind: string;
  verdict: string;
  decidedBy?: string;
  rule?: string;
  note?: string;
  target?: string;
}

/** The fields of a run's JSON report the checks read (anything else is ignored). */
export interface LinuxReport {
  result?: Record<string, string> | null;
  restarts?: number;
  restarted?: { seal?: { events?: ReportEvent[] } }[];
  integrity?: { intact?: boolean; changed?: string[] };
  seal?: { events?: ReportEvent[] };
}

const eventsOf = (r: LinuxReport): ReportEvent[] => r.seal?.events ?? [];

/** Events by "kind:verdict", counted (for a summary row). */
export function eventCounts(report: Record<string, unknown>): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const e of eventsOf(report as LinuxReport))
    counts[`${e.kind}:${e.verdict}`] = (counts[`${e.kind}:${e.verdict}`] ?? 0) + 1;
  return counts;
}

type Check = (r: LinuxReport, p: string[]) => void;

/** The result line says `field=want`. */
const says =
  (field: string, want: string): Check =>
  (r, p) => {
    const got = r.result?.[field];
    if (got !== want) p.push(`the guest's result line says ${field}=${got ?? "(nothing)"}, expected ${want}`);
  };

/** Every event is of `kind` with `verdict`, and there is at least one (or exactly `n`). */
const only =
  (kind: string, verdict: string, n?: number): Check =>
  (r, p) => {
    const ev = eventsOf(r);
    const bad = ev.filter((e) => e.kind !== kind || e.verdict !== verdict);
    if (bad.length > 0) p.push(`unexpected events: ${bad.map((e) => `${e.kind} ${e.verdict}`).join(", ")}`);
    if (n === undefined ? ev.length === 0 : ev.length !== n) {
      p.push(`${ev.length} events, expected ${n ?? "at least one"} ${kind} ${verdict}`);
    }
  };

/** At least one event of `kind` with `verdict`. */
const some =
  (kind: string, verdict: string): Check =>
  (r, p) => {
    if (!eventsOf(r).some((e) => e.kind === kind && e.verdict === verdict)) p.push(`no ${kind} event with ${verdict}`);
  };

/** No event at all. */
const none: Check = (r, p) => {
  const ev = eventsOf(r);
  if (ev.length > 0) p.push(`${ev.length} events, expected none`);
};

/** One restart, and the first boot ended with exactly one `kind` event with verdict restart. */
const restartedOnceFor =
  (kind: string): Check =>
  (r, p) => {
    if (r.restarts !== 1) p.push(`${r.restarts ?? 0} restarts, expected 1`);
    const first = r.restarted?.[0]?.seal?.events ?? [];
    const n = first.filter((e) => e.kind === kind && e.verdict === "restart").length;
    if (n !== 1) p.push(`the first boot has ${n} ${kind} events with restart, expected 1`);
  };

/** What each scenario must show. */
export const LINUX_SCENARIO_CHECKS: Readonly<Record<LinuxScenario, readonly Check[]>> = {
  "linux-benign": [says("status", "ok"), none],
  "linux-static-key": [
    says("schedstats", "1"),
    only("protected-write", "allow"),
    (r, p) => {
      if (eventsOf(r).some((e) => e.rule !== SANCTIONED_RULE)) p.push(`a write not allowed as ${SANCTIONED_RULE}`);
    },
  ],
  "linux-text-patch": [says("landed", "no"), only("protected-write", "deny")],
  "linux-syscall-hook": [says("landed", "no"), only("protected-write", "deny")],
  "linux-wp-bypass": [
    says("landed", "no"),
    some("integrity", "deny"),
    some("protected-write", "deny"),
    (r, p) => {
      const other = eventsOf(r).filter((e) => e.verdict !== "deny");
      if (other.length > 0) p.push(`events not denied: ${other.map((e) => `${e.kind} ${e.verdict}`).join(", ")}`);
    },
  ],
  "linux-lstar-hook": [says("landed", "no"), only("msr-write", "deny-fault", 1)],
  "linux-oops": [says("oopsed", "yes"), only("cpu-exception", "log", 1)],
  "linux-panic": [says("restarted", "1"), restartedOnceFor("crash"), none],
  "linux-hang": [says("restarted", "1"), restartedOnceFor("hang"), none],
};

/**
 * What is wrong with a Linux scenario's run (empty: it shows what it must).
 * `decider`: who should have decided every event but the kernel's own
 * sanctioned patching, which the VMM recognises itself.
 */
export function linuxScenarioProblems(name: LinuxScenario, report: Record<string, unknown>, decider: string): string[] {
  const r = report as LinuxReport;
  const p: string[] = [];
  if (!r.result) p.push("the guest printed no result line");
  else if (r.result.status !== "ok") p.push(`the guest's result: status=${r.result.status}`);
  if (r.integrity && r.integrity.intact !== true) {
    p.push(`sealed bytes changed at ${(r.integrity.changed ?? []).join(", ")}`);
  }
  for (const check of LINUX_SCENARIO_CHECKS[name]) check(r, p);
  const all = [...eventsOf(r), ...(r.restarted ?? []).flatMap((b) => b.seal?.events ?? [])];
  const wrong = all.filter((e) => e.rule !== SANCTIONED_RULE && e.decidedBy !== undefined && e.decidedBy !== decider);
  if (wrong.length > 0) p.push(`${wrong.length} events decided by ${wrong[0]?.decidedBy}, not ${decider}`);
  return p;
}
