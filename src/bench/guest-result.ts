/**
 * The benchmark scenarios' GV-RESULT lines (guest/src/scenarios/bench_*.c):
 *   GV-RESULT scenario=bench-write n=.. cycles=.. p50=.. p99=.. min=.. max=.. faulted=0
 *   GV-RESULT scenario=bench-ud    (the same keys)
 *   GV-RESULT scenario=bench-benign n=.. cycles=.. tasks=.. syscalls=.. faulted=0
 * Cycles are guest TSC cycles, measured in the guest.
 */
import { GuardvisorError } from "../errors.js";
import { parseResultLine } from "../scenarios.js";

export const BENCH_SCENARIOS = ["bench-write", "bench-ud", "bench-benign"] as const;
export type BenchScenario = (typeof BENCH_SCENARIOS)[number];

/** Per-iteration timing from bench-write and bench-ud. */
export interface TimedResult {
  n: number;
  cycles: number;
  p50: number;
  p99: number;
  min: number;
  max: number;
}

export interface BenignResult {
  n: number;
  cycles: number;
  tasks: number;
  syscalls: number;
}

const TIMED_KEYS = ["n", "cycles", "p50", "p99", "min", "max"] as const;
const BENIGN_KEYS = ["n", "cycles", "tasks", "syscalls"] as const;

function numbers<K extends string>(
  lines: readonly string[],
  scenario: BenchScenario,
  keys: readonly K[],
  who: string,
): Record<K, number> {
  const r = parseResultLine(lines);
  if (!r) throw new GuardvisorError("GUEST_FAULT", `${who}: the guest printed no GV-RESULT line`);
  if (r.scenario !== scenario) {
    throw new GuardvisorError("GUEST_FAULT", `${who}: GV-RESULT is for scenario ${r.scenario}, expected ${scenario}`);
  }
  if (r.error) throw new GuardvisorError("GUEST_FAULT", `${who}: the guest reports error=${r.error}`);
  if (r.faulted !== "0") {
    throw new GuardvisorError("GUEST_FAULT", `${who}: the benchmark task faulted (faulted=${r.faulted ?? "missing"})`);
  }
  const out = {} as Record<K, number>;
  for (const k of keys) {
    const v = r[k];
    if (v === undefined || !/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) {
      throw new GuardvisorError("GUEST_FAULT", `${who}: GV-RESULT ${k}=${v ?? "(missing)"} is not a count`);
    }
    out[k] = Number(v);
  }
  return out;
}

/** The result of bench-write or bench-ud; `who` names the run in errors. */
export function timedResult(lines: readonly string[], scenario: "bench-write" | "bench-ud", who: string): TimedResult {
  const r = numbers(lines, scenario, TIMED_KEYS, who);
  if (r.n === 0) throw new GuardvisorError("GUEST_FAULT", `${who}: the guest measured nothing (n=0)`);
  return r;
}

export function benignResult(lines: readonly string[], who: string): BenignResult {
  const r = numbers(lines, "bench-benign", BENIGN_KEYS, who);
  if (r.tasks !== 3 * r.n) {
    throw new GuardvisorError("GUEST_FAULT", `${who}: ${r.tasks} of ${3 * r.n} benign tasks exited normally`);
  }
  return r;
}

/** The guest command-line words for a benchmark scenario. */
export function benchCmdline(scenario: BenchScenario, args: Record<string, number>): string {
  const words = [`scenario=${scenario}`, "role=guest"];
  for (const [k, v] of Object.entries(args)) {
    if (!Number.isSafeInteger(v) || v < 0) throw new GuardvisorError("INTERNAL", `bench argument ${k}=${v}`);
    words.push(`${k}=${v}`);
  }
  return words.join(" ");
}
