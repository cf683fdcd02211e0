/**
 * Runs one guest to its end and reports what happened in the shape of the
 * CLI summary (DESIGN.md, CLI): outcome, integrity, and every event.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { EventKind, Verdict } from "./abi/guest-abi.js";
import { AuditLog, auditRecord } from "./audit.js";
import type { DeciderName } from "./decide/decider.js";
import { DEFAULT_POLICY, type Policy } from "./decide/policy.js";
import { GuardvisorError } from "./errors.js";
import { Kvm } from "./kvm/kvm.js";
import { packageRoot } from "./kvm/native.js";
import { findScenario, parseResultLine, type Scenario } from "./scenarios.js";
import { validateMemMiB } from "./vmm/boot.js";
import type { CapturedEvent, DispatchStats } from "./vmm/dispatcher.js";
import { GuestVm } from "./vmm/guest-vm.js";

export const DEFAULT_MEM_MIB = 32;
export const DEFAULT_TIMEOUT_MS = 30_000;

export interface RunOptions {
  scenario?: string;
  kernelPath?: string;
  cmdline?: string;
  decider?: DeciderName;
  policy?: Policy;
  memMiB?: number;
  timeoutMs?: number;
  kvmPath?: string;
  auditPath?: string;
  onSerial?: (line: string) => void;
  onEvent?: (e: SummaryEvent) => void;
}

export type GuestOutcome = "completed" | "restarted" | "halted" | "crashed";

export interface SummaryEvent {
  seq: number;
  kind: EventKind;
  region: string | null;
  symbol: string | null;
  verdict: Verdict;
  decidedBy: string;
  latencyUs: number;
}

/** The JSON summary of DESIGN.md (CLI ⚑). */
export interface RunSummary {
  scenario: string;
  decider: DeciderName;
  guest: { outcome: GuestOutcome; restarts: number; exitCode: number | null };
  integrity: { protectedBytes: number; intact: boolean };
  healthVm: { restarts: number };
  events: SummaryEvent[];
}

export interface RunReport {
  summary: RunSummary;
  /** Why the guest stopped, in words. */
  detail: string;
  /** The scenario's GV-RESULT pairs, when it printed one. */
  result: Record<string, string> | undefined;
  /** Problems found when checking a built-in scenario's expectations; empty = pass. */
  problems: string[];
  serial: string[];
  stats: DispatchStats | undefined;
  changedRegions: string[];
}

export function defaultKernelPath(): string {
  return join(packageRoot(), "guest", "out", "gv-kernel.elf");
}

function readKernel(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT" ? "no such file" : (err.message ?? String(e));
    const hint = path === defaultKernelPath() ? " (build the guest with 'npm run build')" : "";
    throw new GuardvisorError("IO", `cannot read kernel ${path}: ${why}${hint}`);
  }
}

export async function runGuest(opts: RunOptions): Promise<RunReport> {
  if (!opts.scenario && !opts.kernelPath) throw new GuardvisorError("CONFIG_INVALID", "give a scenario or a kernel");
  const scenario: Scenario | undefined = opts.scenario ? findScenario(opts.scenario) : undefined;
  const memSize = validateMemMiB(opts.memMiB ?? DEFAULT_MEM_MIB);
  const kernelPath = opts.kernelPath ?? defaultKernelPath();
  const kernel = readKernel(kernelPath);
  const cmdline = [scenario ? `scenario=${scenario.name}` : "", "role=guest", opts.cmdline ?? ""]
    .filter(Boolean)
    .join(" ");
  const decider = opts.decider ?? "vmm";

  const kvm = Kvm.open(opts.kvmPath);
  const audit = opts.auditPath ? new AuditLog(opts.auditPath) : undefined;
  let vm: GuestVm | undefined;
  try {
    const events: SummaryEvent[] = [];
    const toSummary = (e: CapturedEvent, g: GuestVm): SummaryEvent => ({
      seq: e.seq,
      kind: e.kind,
      region: g.regionName(e.regionId) ?? null,
      symbol: e.kind === "protected-write" ? g.symbolizePhys(e.gpa) : g.symbolizer.format(Number(e.rip)),
      verdict: e.verdict,
      decidedBy: e.decidedBy,
      latencyUs: Math.round(e.latencyUs * 10) / 10,
    });
    const built = await GuestVm.build(kvm, {
      vmId: 0,
      kernel,
      kernelName: kernelPath,
      memSize,
      cmdline,
      policy: opts.policy ?? DEFAULT_POLICY,
      onSerial: opts.onSerial,
      onEvent: (e) => {
        // `vm` is set before the guest runs its first instruction.
        const g = vm as GuestVm;
        const s = toSummary(e, g);
        events.push(s);
        audit?.append(auditRecord(e, g, "guest0"));
        opts.onEvent?.(s);
      },
    });
    vm = built;
    const stop = await built.runToEnd(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const integrity = built.integrity();
    const outcome: GuestOutcome =
      stop.outcome === "exit"
        ? "completed"
        : stop.outcome === "crash"
          ? "crashed"
          : stop.outcome === "restart"
            ? "restarted"
            : "halted";
    const summary: RunSummary = {
      scenario: scenario?.name ?? "custom",
      decider,
      guest: { outcome, restarts: 0, exitCode: stop.outcome === "exit" ? (stop.code ?? 0) : null },
      integrity: { protectedBytes: integrity.protectedBytes, intact: integrity.intact },
      healthVm: { restarts: 0 },
      events,
    };
    const result = parseResultLine(built.serial);
    const detail = stop.timedOut
      ? `stopped after the ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms time limit`
      : stop.detail;
    return {
      summary,
      detail,
      result,
      problems: scenario ? checkScenario(scenario, summary, result) : [],
      serial: built.serial,
      stats: stop.stats,
      changedRegions: integrity.changed,
    };
  } finally {
    await vm?.destroy();
    audit?.close();
    kvm.close();
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
  if (s.events.length === 0 && sum.events.length > 0) problems.push(`${sum.events.length} events, expected none`);
  for (const want of s.events) {
    const n = sum.events.filter(
      (e) => e.kind === want.kind && e.verdict === want.verdict && (!want.region || e.region === want.region),
    ).length;
    if (n < want.min) {
      problems.push(
        `${n} ${want.kind} events with verdict ${want.verdict}${want.region ? ` in ${want.region}` : ""}, expected at least ${want.min}`,
      );
    }
  }
  return problems;
}
