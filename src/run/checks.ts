/**
 * Checks before a run (its options) and after it (a scenario's expectations).
 */
import { ABI_CONSTANTS as C } from "../abi/guest-abi.js";
import { defaultKernelPath, readKernelFile } from "../elf/kernel-file.js";
import { configError, GuardvisorError } from "../errors.js";
import { findScenario, type Scenario } from "../scenarios.js";
import { validateMemMiB } from "../vmm/boot.js";
import type { VcpuStop } from "../vmm/vcpu-thread.js";
import { DEFAULT_MEM_MIB, type GuestOutcome, type RunOptions, type RunSummary } from "./options.js";

export function checkRunOptions(opts: RunOptions): void {
  guestScenarios(opts);
  checkSoak(opts);
  validateMemMiB(opts.memMiB ?? DEFAULT_MEM_MIB);
  readKernelFile(opts.kernelPath ?? defaultKernelPath());
}

export function checkSoak(opts: RunOptions): void {
  const d = opts.durationMs;
  if (d !== undefined && (!Number.isInteger(d) || d < 1000 || d > 7 * 24 * 3600 * 1000)) {
    throw configError("--duration", `${d / 1000} s: must be 1 to 604800 seconds`);
  }
  if (d !== undefined && opts.kernelPath) throw configError("--duration", "soaks run built-in scenarios, not --kernel");
  if (opts.hmChaos && opts.injectHmFault) throw configError("--hm-chaos", "not with --inject-hm-fault");
}

/** The scenario each guest runs first (undefined: a custom kernel). */
export function guestScenarios(opts: RunOptions): (Scenario | undefined)[] {
  const names = opts.scenarios ?? (opts.scenario ? [opts.scenario] : []);
  if (names.length === 0 && !opts.kernelPath)
    throw new GuardvisorError("CONFIG_INVALID", "give a scenario or a kernel");
  if (names.length > 0 && opts.kernelPath) {
    throw new GuardvisorError("CONFIG_INVALID", "give either scenarios or a kernel, not both");
  }
  const n = opts.guests ?? Math.max(1, names.length);
  if (!Number.isInteger(n) || n < 1 || n > C.IDC_MAX_GUESTS) {
    throw configError("--guests", `${n}: must be 1 to ${C.IDC_MAX_GUESTS}`);
  }
  if (names.length > 1 && names.length !== n && opts.durationMs === undefined) {
    throw configError(
      "--guests",
      `${n} guests but ${names.length} scenarios: give one scenario, or one per guest (or a mix with --duration)`,
    );
  }
  const found = names.map(findScenario);
  return Array.from({ length: n }, (_, g) => (found.length === 0 ? undefined : found[g % found.length]));
}

export function outcomeOf(stop: VcpuStop): GuestOutcome {
  switch (stop.outcome) {
    case "exit":
      return "completed";
    case "crash":
      return "crashed";
    case "restart":
      return "restarted";
    default:
      return "halted";
  }
}

/** Compare a run with what its scenario expects; returns the problems found. */
export function checkScenario(s: Scenario, sum: RunSummary, result: Record<string, string> | undefined): string[] {
  const problems: string[] = [];
  if (sum.guest.outcome !== "completed") problems.push(`guest outcome is ${sum.guest.outcome}, expected completed`);
  if (sum.guest.exitCode !== null && sum.guest.exitCode !== 0) problems.push(`guest exit code ${sum.guest.exitCode}`);
  if (!sum.integrity.intact) problems.push("protected regions changed");
  if (!result) problems.push("the guest printed no GV-RESULT line");
  else {
    if (result.scenario !== s.name) problems.push(`GV-RESULT is for scenario ${result.scenario}, expected ${s.name}`);
    for (const [k, v] of Object.entries(s.result)) {
      if (result[k] !== v) problems.push(`GV-RESULT ${k}=${result[k] ?? "(missing)"}, expected ${k}=${v}`);
    }
  }
  if (sum.guest.restarts !== (s.restarts ?? 0)) {
    problems.push(`${sum.guest.restarts} restarts, expected ${s.restarts ?? 0}`);
  }
  if (s.events.length === 0 && sum.events.length > 0) problems.push(`${sum.events.length} events, expected none`);
  for (const want of s.events) {
    const matching = sum.events.filter(
      (e) =>
        e.kind === want.kind &&
        e.verdict === want.verdict &&
        (!want.region || e.region === want.region) &&
        (want.vector === undefined || e.vector === want.vector) &&
        (want.object === undefined || e.object === want.object),
    );
    const n = matching.reduce((sum, e) => sum + (e.count ?? 1), 0);
    const where = `${want.region ? ` in ${want.region}` : ""}${want.vector === undefined ? "" : ` on vector ${want.vector}`}${want.object === undefined ? "" : ` on ${want.object}`}`;
    if (n < want.min) {
      problems.push(`${n} ${want.kind} events${where} with verdict ${want.verdict}, expected at least ${want.min}`);
    }
    if (want.max !== undefined && n > want.max) {
      problems.push(`${n} ${want.kind} events${where} with verdict ${want.verdict}, expected at most ${want.max}`);
    }
    if (want.writer !== undefined) {
      const writer = result?.[want.writer];
      const expected = writer !== undefined && /^0x[0-9a-f]+$/i.test(writer) ? BigInt(writer) : undefined;
      for (const e of matching) {
        if (expected === undefined || BigInt(e.rip) !== expected) {
          problems.push(
            `${want.kind} event #${e.seq} names the instruction at ${e.rip}, expected ${want.writer}=${writer}`,
          );
        }
      }
    }
  }
  return problems;
}
