/**
 * `guardvisor run --linux BZIMAGE [--initrd FILE] [--cmdline TEXT] [--system-map FILE]`:
 * boot a stock Linux kernel on one vCPU and print its console until it ends
 * (docs/linux-guests.md).
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import type { DeciderName } from "../decide/decider.js";
import { defaultKernelPath, readKernelFile } from "../elf/kernel-file.js";
import { configError, GuardvisorError, isGuardvisorError } from "../errors.js";
import { VmEngineBackend } from "../health/backends.js";
import { HealthManager, type HealthVmStatus } from "../health/health-manager.js";
import { Kvm } from "../kvm/kvm.js";
import { packageRoot } from "../kvm/native.js";
import { hostKvmIsPvm, insideLab, kvmUsable } from "../lab/fallback.js";
import { runInLab } from "../lab/machine.js";
import { DEFAULT_LINUX_CMDLINE, labLinuxCmdline, MIB, validateLinuxMemMiB } from "../linux/boot-params.js";
import { eventCounts, linuxScenarioProblems } from "../linux/linux-scenarios.js";
import { type LinuxRunResult, type LinuxSealReport, LinuxVm } from "../linux/linux-vm.js";
import { parseSystemMap } from "../linux/system-map.js";
import {
  buildLinuxTestGuest,
  LINUX_SCENARIO_DESCRIPTIONS,
  LINUX_SCENARIOS,
  parseResultLine,
} from "../linux/test-guest.js";
import { loadPolicyFile, type PolicyFile } from "../policy/load.js";
import { DEFAULT_RESTART_LIMIT, HM_MEM_MIB } from "../run/options.js";
import { scaled } from "../time-scale.js";

export const DEFAULT_LINUX_MEM_MIB = 256;
/** Default --timeout for a Linux guest (a stock kernel on a slow host takes minutes). */
export const DEFAULT_LINUX_TIMEOUT_S = 600;

export interface LinuxRunFlags {
  linux: string;
  initrd?: string;
  cmdline?: string;
  systemMap?: string;
  /** MiB; undefined: DEFAULT_LINUX_MEM_MIB. */
  mem?: number;
  /** Seconds; undefined: DEFAULT_LINUX_TIMEOUT_S (times the time scale). */
  timeout?: number;
  /** ms a sealed vCPU may spin in ring 0 with interrupts off and no exit; undefined: DEFAULT_LINUX_HANG_TIMEOUT_MS; 0: off. */
  hangTimeout?: number;
  json?: boolean;
  /** Seal the kernel's code and read-only data once user space runs (default policy: writes denied). */
  seal?: boolean;
  /** A Linux test scenario (LINUX_SCENARIOS): run by the test initramfs; implies --seal. */
  scenario?: string;
  /** A policy file (YAML or JSON) for the seal's events; default: the built-in default policy. */
  policy?: string;
  /** Who decides the seal's events (default vmm; hm-vm boots the health VM). */
  decider?: DeciderName;
}

function readInput(path: string, field: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new GuardvisorError("IO", `${field}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
}

/**
 * The options checked before anything runs (and before a move into the lab):
 * clear errors naming the option. Returns the policy file, loaded and checked.
 */
export function checkLinuxFlags(flags: LinuxRunFlags): PolicyFile | undefined {
  validateLinuxMemMiB(flags.mem ?? DEFAULT_LINUX_MEM_MIB);
  if (flags.timeout !== undefined && (!Number.isInteger(flags.timeout) || flags.timeout <= 0)) {
    throw configError("--timeout", "must be a positive number of seconds");
  }
  if (flags.hangTimeout !== undefined && (!Number.isInteger(flags.hangTimeout) || flags.hangTimeout < 0)) {
    throw configError("--hang-timeout", "must be a whole number of ms, 0 or more");
  }
  const scenario = flags.scenario;
  if (scenario !== undefined && scenario !== "all" && !(LINUX_SCENARIOS as readonly string[]).includes(scenario)) {
    throw configError(
      "--scenario",
      `with --linux, one of ${LINUX_SCENARIOS.join(", ")}; got ${JSON.stringify(scenario)}`,
    );
  }
  if (flags.policy && !flags.seal && scenario === undefined) {
    throw configError("--policy", "with --linux, it governs the seal: give --seal or --scenario");
  }
  return flags.policy ? loadPolicyFile(flags.policy) : undefined; // a bad file is a clear error now, not after a boot
}

/** One Linux run's outcome as `run --linux --json` prints it, and whether it ended cleanly. */
export interface LinuxRunReport {
  json: Record<string, unknown>;
  /** The guest reset (or exited with 0) without a kernel panic. */
  clean: boolean;
}

/**
 * Boot the guest (again after each restart verdict, up to the policy's
 * limit) and report how it ended. `onConsole`: each console line as it comes;
 * `sayErr`: progress for people.
 */
export async function runLinuxGuest(
  flags: LinuxRunFlags,
  sayErr: (m: string) => void,
  onConsole?: (line: string) => void,
  shared?: SharedHost,
): Promise<LinuxRunReport> {
  const policyFile = checkLinuxFlags(flags);
  const memMiB = flags.mem ?? DEFAULT_LINUX_MEM_MIB;
  const kernel = readInput(flags.linux, "--linux");
  const scenario = flags.scenario;
  // A scenario runs in the test initramfs (built when missing: npm run build:linux-guest).
  const initrdPath = flags.initrd ?? (scenario ? buildLinuxTestGuest().initrd : undefined);
  const initrd = initrdPath ? readInput(initrdPath, "--initrd") : undefined;
  const seal = flags.seal === true || scenario !== undefined;
  const systemMap = flags.systemMap
    ? parseSystemMap(readInput(flags.systemMap, "--system-map"), flags.systemMap)
    : undefined;
  if (systemMap) sayErr(`System.map: ${systemMap.symbols.length} symbols`);
  const extra = [scenario ? `gv.scenario=${scenario}` : "", flags.cmdline ?? ""].join(" ");
  const cmdline = `${DEFAULT_LINUX_CMDLINE}${labLinuxCmdline()} ${extra}`.replace(/ +/g, " ").trim();
  const timeoutMs = flags.timeout !== undefined ? flags.timeout * 1000 : scaled(DEFAULT_LINUX_TIMEOUT_S * 1000);
  const kvm = shared?.kvm ?? Kvm.open();
  let vm: LinuxVm | undefined;
  let health: HealthManager | undefined;
  try {
    if (flags.decider === "hm-vm" && seal && !shared) health = await startHealthVm(kvm);
    const hm = shared ? shared.health : health;
    /** Earlier boots that a verdict restarted: what each ended with and saw. */
    const earlier: Record<string, unknown>[] = [];
    let end: LinuxRunResult;
    let lastSeq = 0; // event numbers go on across restarts (one sequence per guest)
    for (let restarts = 0; ; restarts++) {
      vm = await LinuxVm.build(kvm, {
        kernel,
        kernelName: flags.linux,
        initrd,
        // A new boot after a restart verdict says which it is (the test init acts on it).
        cmdline: restarts > 0 ? `${cmdline} gv.restart=${restarts}` : cmdline,
        memSize: memMiB * MIB,
        seal,
        systemMap,
        policyFile,
        decider: hm ? hm.deciderFor(0) : { kind: "vmm" },
        firstSeq: lastSeq,
        hangTimeoutMs: flags.hangTimeout,
        onPolicy: (p) => hm?.installRules(0, p.table),
        onHmFault: (f) => hm?.reportFault(f),
        onSerial: onConsole,
      });
      const restartLimit = vm.policy.restart?.limit ?? DEFAULT_RESTART_LIMIT;
      end = await vm.runToEnd(timeoutMs);
      lastSeq = end.counters.lastSeq ?? lastSeq;
      await vm.destroy();
      vm = undefined;
      if (end.outcome !== "restart") break;
      if (restarts >= restartLimit) {
        end = { ...end, outcome: "halt", detail: `${end.detail}; restart limit ${restartLimit} reached: halt` };
        break;
      }
      earlier.push({
        outcome: end.outcome,
        detail: end.detail,
        elapsedMs: Math.round(end.elapsedMs),
        ...(end.seal ? { seal: sealSummary(end.seal) } : {}),
      });
      sayErr(`the Linux guest is restarted (${restarts + 1} of at most ${restartLimit}): ${end.detail}`);
    }
    const json = {
      outcome: end.outcome,
      code: end.code,
      detail: end.detail,
      elapsedMs: Math.round(end.elapsedMs),
      exits: end.exits,
      panicked: end.panicked,
      decider: hm ? "hm-vm" : "vmm",
      ...(hm ? { healthVm: hm.status() } : {}),
      restarts: earlier.length,
      ...(earlier.length ? { restarted: earlier } : {}),
      counters: end.counters,
      console: end.console,
      ...(scenario ? { scenario, result: scenarioResult(end.console) ?? null } : {}),
      ...(end.seal ? { integrity: end.seal.integrity, seal: sealSummary(end.seal) } : {}),
    };
    if (!flags.json) {
      sayErr(
        `the Linux guest ended (${end.outcome}) after ${(end.elapsedMs / 1000).toFixed(1)} s and ${end.exits} exits: ${end.detail}`,
      );
      if (end.seal) sayErr(sealLine(end.seal));
    }
    const clean = (end.outcome === "reset" || (end.outcome === "exit" && end.code === 0)) && !end.panicked;
    return { json, clean };
  } finally {
    await vm?.destroy();
    await health?.stop();
    if (!shared) kvm.close();
  }
}

/** What the runs of `--scenario all` share: one KVM handle, and one health VM for all of them (hm-vm). */
export interface SharedHost {
  kvm: Kvm;
  health?: HealthManager;
}

/** The health VM for one Linux guest at a time. */
function startHealthVm(kvm: Kvm): Promise<HealthManager> {
  return HealthManager.start({
    backend: new VmEngineBackend(kvm, readKernelFile(defaultKernelPath()), defaultKernelPath(), HM_MEM_MIB),
    nguests: 1,
  });
}

/** Boot, stream the console to stdout, and return the process exit code (0: the guest reset or exited with 0). */
export async function runLinuxCommand(flags: LinuxRunFlags, sayErr: (m: string) => void): Promise<number> {
  if (flags.scenario === "all") return runAllLinux(flags, sayErr);
  const r = await runLinuxGuest(flags, sayErr, (line) => {
    if (!flags.json) process.stdout.write(`${line}\n`);
  });
  if (flags.json) process.stdout.write(`${JSON.stringify(r.json)}\n`);
  return r.clean ? 0 : 1;
}

/** One row of `--scenario all`: what was expected, what was seen, and whether they agree. */
export interface ScenarioRow {
  scenario: string;
  expected: unknown;
  observed: unknown;
  pass: boolean;
  /** Why it could not run here (it then counts as neither pass nor failure). */
  skipped?: string;
}

/**
 * Every Linux scenario in turn (`run --linux BZIMAGE --scenario all`), one
 * verdict each; with hm-vm, what the one health VM that served them all did.
 */
export async function linuxScenarioRows(
  flags: LinuxRunFlags,
  sayErr: (m: string) => void,
): Promise<{ rows: ScenarioRow[]; healthVm?: HealthVmStatus }> {
  // One health VM serves every scenario in turn, as it serves a production host's guests one after another.
  const kvm = Kvm.open();
  try {
    const health = flags.decider === "hm-vm" ? await startHealthVm(kvm) : undefined;
    try {
      const rows = await scenarioRows(flags, sayErr, { kvm, health });
      return health ? { rows, healthVm: health.status() } : { rows };
    } finally {
      await health?.stop();
    }
  } finally {
    kvm.close();
  }
}

async function scenarioRows(flags: LinuxRunFlags, sayErr: (m: string) => void, shared: SharedHost) {
  const rows: ScenarioRow[] = [];
  for (const name of LINUX_SCENARIOS) {
    let problems: string[];
    let observed: unknown;
    try {
      const r = await runLinuxGuest({ ...flags, scenario: name, json: true }, sayErr, undefined, shared);
      problems = linuxScenarioProblems(name, r.json, flags.decider ?? "vmm");
      if (!r.clean) problems.push(`the run did not end cleanly (${String(r.json.outcome)}: ${String(r.json.detail)})`);
      observed = {
        outcome: r.json.outcome,
        restarts: r.json.restarts,
        result: r.json.result,
        events: eventCounts(r.json),
        intact: (r.json.integrity as { intact?: boolean } | undefined)?.intact,
        problems,
      };
    } catch (e) {
      if (!isGuardvisorError(e)) throw e;
      problems = [`${e.code}: ${e.message}`];
      observed = { error: problems[0] };
    }
    rows.push({ scenario: name, expected: LINUX_SCENARIO_DESCRIPTIONS[name], observed, pass: problems.length === 0 });
  }
  return rows;
}

async function runAllLinux(flags: LinuxRunFlags, sayErr: (m: string) => void): Promise<number> {
  const { rows, healthVm } = await linuxScenarioRows(flags, sayErr);
  if (flags.json) process.stdout.write(`${JSON.stringify({ scenarios: rows, ...(healthVm ? { healthVm } : {}) })}\n`);
  else {
    printRows(rows);
    if (healthVm) {
      process.stdout.write(
        `health VM: one for every scenario, ${healthVm.requests} requests answered, ${healthVm.restarts} restarts\n`,
      );
    }
  }
  return rows.every((r) => r.pass) ? 0 : 1;
}

/** `pass  NAME`, `FAIL  NAME: problems` or `skip  NAME: why`, one line per row. */
export function printRows(rows: readonly ScenarioRow[]): void {
  for (const r of rows) {
    if (r.skipped) {
      process.stdout.write(`skip  ${r.scenario}: ${r.skipped}\n`);
      continue;
    }
    const problems = (r.observed as { problems?: string[]; error?: string }) ?? {};
    const why = problems.error ?? problems.problems?.join("; ") ?? "";
    process.stdout.write(`${r.pass ? "pass" : "FAIL"}  ${r.scenario}${r.pass ? "" : `: ${why}`}\n`);
  }
}

/**
 * The Linux rows of `run --scenario all`: every Linux scenario with the test
 * guest (the host's Debian kernel), here where KVM can run a stock kernel,
 * else in the lab (one lab run for all of them; `lab` false refuses it).
 * Rows that cannot run say why (skipped).
 */
export async function linuxRowsForAll(
  o: { decider: DeciderName; lab: boolean },
  say: (m: string) => void,
): Promise<ScenarioRow[]> {
  const skip = (why: string): ScenarioRow[] =>
    LINUX_SCENARIOS.map((scenario) => ({ scenario, expected: null, observed: null, pass: true, skipped: why }));
  let kernel: string;
  try {
    kernel = buildLinuxTestGuest().kernel; // built here: a module build inside the lab is slow
  } catch (e) {
    if (!isGuardvisorError(e)) throw e;
    return skip(`no Linux test guest: ${e.message}`);
  }
  if (insideLab() || (kvmUsable() && !hostKvmIsPvm())) {
    return (await linuxScenarioRows({ linux: kernel, decider: o.decider, json: true }, say)).rows;
  }
  if (!o.lab) return skip("this host's KVM cannot run a stock Linux kernel, and --no-lab refuses the lab");
  say(`the Linux scenarios need hardware virtualisation: running them in the lab`);
  let out = "";
  const sink = new Writable({
    write(chunk, _enc, done) {
      out += String(chunk);
      done();
    },
  });
  const bin = join(packageRoot(), "bin", "guardvisor.js");
  const command = [process.execPath, bin, "run", "--linux", kernel, "--scenario", "all"];
  const r = await runInLab({ command: [...command, "--decider", o.decider, "--json", "--no-lab"], stdout: sink });
  const rows = parseRows(out.trim().split("\n").at(-1) ?? "");
  if (!rows) {
    const failed = `the lab run gave no scenario rows (exit ${r.exitCode})`;
    return LINUX_SCENARIOS.map((scenario) => ({ scenario, expected: null, observed: { error: failed }, pass: false }));
  }
  return rows;
}

/** `{"scenarios": [...]}` from a lab run, checked row by row (undefined when it is not that). */
function parseRows(line: string): ScenarioRow[] | undefined {
  let j: unknown;
  try {
    j = JSON.parse(line);
  } catch {
    return undefined;
  }
  const rows = (j as { scenarios?: unknown })?.scenarios;
  if (!Array.isArray(rows)) return undefined;
  const ok = rows.every(
    (r) => typeof r === "object" && r !== null && typeof r.scenario === "string" && typeof r.pass === "boolean",
  );
  return ok ? (rows as ScenarioRow[]) : undefined;
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** The test init's result line, fields by name (undefined: it printed none). */
function scenarioResult(console: readonly string[]): Record<string, string> | undefined {
  for (const line of console) {
    const r = parseResultLine(line);
    if (r) return r;
  }
  return undefined;
}

/** The seal's report as JSON: when it was armed, what it covers, each write that hit it. */
function sealSummary(s: LinuxSealReport): Record<string, unknown> {
  const a = s.armed;
  return {
    source: s.ranges.source,
    symbols: s.symbols ?? null,
    patchSites: s.patchSites,
    crashBreakpoints: Object.fromEntries(Object.entries(s.crashBreakpoints).map(([k, v]) => [k, hex(v)])),
    ranges: s.ranges.ranges.map((r) => ({ name: r.name, start: hex(r.start), end: hex(r.end) })),
    armed: a
      ? {
          afterMs: Math.round(a.elapsedMs),
          exits: a.exits,
          rip: hex(a.rip),
          protectedBytes: a.protectedBytes,
          readOnlyBytes: a.readOnlyBytes,
        }
      : null,
    events: s.events.map((e) => ({
      seq: e.seq,
      kind: e.kind,
      target: e.target,
      rip: hex(e.rip),
      ...(e.writer ? { writer: e.writer } : {}),
      verdict: e.verdict,
      decidedBy: e.decidedBy,
      rule: e.rule,
      ...(e.note ? { note: e.note } : {}),
    })),
  };
}

function sealLine(s: LinuxSealReport): string {
  const a = s.armed;
  if (!a) return "seal: never armed (the guest was not seen in ring 3)";
  const denied = s.events.filter((e) => e.verdict === "deny").length;
  const lines = [
    `seal: armed after ${(a.elapsedMs / 1000).toFixed(1)} s at exit ${a.exits}, ${a.protectedBytes} bytes of ` +
      `${s.ranges.ranges.map((r) => r.name).join(" and ")}; ${s.events.length} event(s), ${denied} denied; ` +
      `sealed bytes ${s.integrity.intact ? "intact" : `changed at ${s.integrity.changed.join(", ")}`}`,
  ];
  for (const e of s.events) {
    lines.push(
      `  #${e.seq} ${e.kind} ${e.target}${e.writer ? ` by ${e.writer}` : ""}: ${e.verdict} (${e.rule})${e.note ? `: ${e.note}` : ""}`,
    );
  }
  return lines.join("\n");
}
