/**
 * Runs guests to their end and reports what happened in the shape of the
 * CLI summary (DESIGN.md, CLI): outcome, integrity, and every event. With the
 * hm-vm decider (the default) one health VM serves every guest.
 */
import { join } from "node:path";
import { ABI_CONSTANTS as C } from "./abi/guest-abi.js";
import { AuditLog, auditRecord } from "./audit.js";
import type { DeciderName } from "./decide/decider.js";
import { DEFAULT_POLICY, type Policy } from "./decide/policy.js";
import { policyHashOf } from "./decide/rule-table.js";
import { defaultKernelPath, readKernelFile } from "./elf/kernel-file.js";
import { configError, GuardvisorError } from "./errors.js";
import { RepeatLog, sameEvent } from "./event-fold.js";
import { VmEngineBackend } from "./health/backends.js";
import { HealthManager, type HmRestart } from "./health/health-manager.js";
import type { InjectSpec } from "./idc/channel.js";
import { Kvm } from "./kvm/kvm.js";
import { packageRoot } from "./kvm/native.js";
import type { SummaryEvent } from "./model/summary-event.js";
import { guestName } from "./names.js";
import { readPolicyKernel } from "./policy/compile-file.js";
import { loadPolicyFile } from "./policy/load.js";
import { type PolicyKernel, resolvePolicy } from "./policy/resolve.js";
import { findScenario, parseResultLine, type Scenario } from "./scenarios.js";
import { scaled } from "./time-scale.js";
import { validateMemMiB } from "./vmm/boot.js";
import type { CapturedEvent, DispatchStats } from "./vmm/dispatcher.js";
import { GuestVm, type Integrity } from "./vmm/guest-vm.js";
import type { VcpuStop } from "./vmm/vcpu-thread.js";

export const DEFAULT_MEM_MIB = 32;
/** How long a run may take (30 s, times the time scale). */
export const DEFAULT_TIMEOUT_MS = scaled(30_000);
export const DEFAULT_DECIDER: DeciderName = "hm-vm";
/** The health VM's RAM (its IDC region is mapped right above it). */
export const HM_MEM_MIB = 4;
/** Restarts of one guest when the policy sets no limit. */
export const DEFAULT_RESTART_LIMIT = 3;
/** A vCPU in KVM_RUN without an exit for this long is hung (3 s, times the time scale). */
export const DEFAULT_HANG_TIMEOUT_MS = scaled(3000);

export interface RunOptions {
  /** One scenario for every guest, or one per guest. */
  scenario?: string;
  scenarios?: string[];
  kernelPath?: string;
  cmdline?: string;
  /** Guests sharing one health VM (default: one per scenario, at least 1). */
  guests?: number;
  decider?: DeciderName;
  policy?: Policy;
  memMiB?: number;
  timeoutMs?: number;
  kvmPath?: string;
  auditPath?: string;
  /** Make the health VM misbehave (tests and demos). */
  injectHmFault?: InjectSpec;
  /**
   * Soak: each guest runs its scenario again and again, taking the given
   * scenarios in turn, until this long has passed (then the running rounds end).
   */
  durationMs?: number;
  /** Crash the health VM at a random request, again after every restart (a soak). */
  hmChaos?: boolean;
  /** Health-VM answer deadline. */
  hmTimeoutMs?: number;
  /** Watchdog: a guest vCPU without an exit for this long is hung (0: off). */
  hangTimeoutMs?: number;
  /** The guest's exception entry (symbol or address) for first-time exception capture. */
  exceptionEntry?: string | bigint;
  /** Filled in by the runner while guests run: reload the policy without restarting them. */
  control?: RunControl;
  onSerial?: (line: string, guest: number) => void;
  onHmSerial?: (line: string) => void;
  onEvent?: (e: SummaryEvent, guest: number) => void;
  /** One more occurrence of the guest's previous event (folded into its count): this occurrence, with that event's seq. */
  onRepeat?: (e: SummaryEvent, guest: number) => void;
  /** A health-VM restart, when it is back up (or given up). */
  onHmRestart?: (r: HmRestart) => void;
  /** A guest (re)started running, is restarting, or ended with this outcome. */
  onGuestState?: (guest: number, state: "running" | "restarting" | "paused" | GuestOutcome) => void;
  /** A guest's cumulative VM-exit count over all its incarnations (at least at the end of each). */
  onExits?: (guest: number, totalExits: number) => void;
}

/** What a caller can do to a run in progress. */
export interface RunControl {
  /** Compile `policy` for every running guest and switch both deciders to it. */
  reloadPolicy?(policy: Policy): { guests: number; hashes: number[] };
  /** Each guest's state now: running, or paused by a `pause` verdict (with why). */
  guests?(): { guest: number; state: "running" | "paused" | "stopped"; detail?: string }[];
  /** Let a guest a `pause` verdict parked go on. False when it is not paused. */
  resume?(guest: number): boolean;
}

export type GuestOutcome = "completed" | "restarted" | "halted" | "crashed";

export type { SummaryEvent } from "./model/summary-event.js";

export interface HealthVmSummary {
  restarts: number;
  /** Requests the health VM answered (0 with the vmm decider: it is not started). */
  requests: number;
  faults: { reason: string; detail: string; downMs: number }[];
}

/** The JSON summary of DESIGN.md (CLI ⚑), for one guest. */
export interface RunSummary {
  scenario: string;
  decider: DeciderName;
  guest: { outcome: GuestOutcome; restarts: number; exitCode: number | null };
  integrity: { protectedBytes: number; intact: boolean };
  healthVm: HealthVmSummary;
  events: SummaryEvent[];
}

/** What a soak run (--duration) did, over every round of every guest. */
export interface SoakSummary {
  durationS: number;
  /** Scenario runs that completed, and those whose checks failed (with the first problems). */
  rounds: number;
  roundsFailed: number;
  problems: string[];
  /** Events by who decided them. */
  events: Record<string, number>;
  /** Requests the guests published to the health VM, and those settled (answered or failed safe) once each. */
  requests: { published: number; settled: number };
  hmRestarts: number;
  /** Every protected region of every round intact at its end. */
  intact: boolean;
  /** The VMM process's resident set size after the first round and at the end. */
  rssMiB: { start: number; end: number };
}

/** With several guests: the single-guest fields per guest; healthVm stays top-level. */
export interface MultiRunSummary {
  decider: DeciderName;
  guests: (Omit<RunSummary, "decider" | "healthVm"> & { vm: string })[];
  healthVm: HealthVmSummary;
  soak?: SoakSummary;
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
  /** Exceptions the guest reported handling that the VMM never captured (a guest that lies, or capture off). */
  unmatchedGuestReports: number;
}

interface GuestLife {
  restarts: number;
  /** When each restart happened (ms since the epoch), for a windowed restart limit. */
  restartTimes: number[];
  /** Exceptions the guest reported that the VMM never captured. */
  unmatchedReports: number;
  /** Every incarnation's protected regions intact at its end. */
  intact: boolean;
  changed: string[];
  serial: string[];
  last?: { stop: VcpuStop & { timedOut: boolean }; integrity: Integrity; vm: GuestVm };
}

export interface MultiRunReport {
  summary: MultiRunSummary;
  guests: RunReport[];
}

/**
 * The checks a run makes before it needs KVM (scenarios, guest count, memory
 * size, the kernel file): the CLI makes them on the host before it moves a
 * run into the lab.
 */
export function checkRunOptions(opts: RunOptions): void {
  guestScenarios(opts);
  checkSoak(opts);
  validateMemMiB(opts.memMiB ?? DEFAULT_MEM_MIB);
  readKernelFile(opts.kernelPath ?? defaultKernelPath());
}

function checkSoak(opts: RunOptions): void {
  const d = opts.durationMs;
  if (d !== undefined && (!Number.isInteger(d) || d < 1000 || d > 7 * 24 * 3600 * 1000)) {
    throw configError("--duration", `${d / 1000} s: must be 1 to 604800 seconds`);
  }
  if (d !== undefined && opts.kernelPath) throw configError("--duration", "soaks run built-in scenarios, not --kernel");
  if (opts.hmChaos && opts.injectHmFault) throw configError("--hm-chaos", "not with --inject-hm-fault");
}

/** The scenario each guest runs first (undefined: a custom kernel). */
function guestScenarios(opts: RunOptions): (Scenario | undefined)[] {
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

function outcomeOf(stop: VcpuStop): GuestOutcome {
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

/** Run one guest (the JSON summary of DESIGN.md). */
export async function runGuest(opts: RunOptions): Promise<RunReport> {
  const r = await runGuests(opts);
  const first = r.guests[0];
  if (!first || r.guests.length !== 1) throw new GuardvisorError("INTERNAL", "runGuest ran more than one guest");
  return first;
}

/** Run one or more guests, sharing one health VM, to their end. */
export async function runGuests(opts: RunOptions): Promise<MultiRunReport> {
  const scenarios = guestScenarios(opts);
  checkSoak(opts);
  const soak = opts.durationMs === undefined ? undefined : new Soak(opts, scenarios.length);
  const memSize = validateMemMiB(opts.memMiB ?? DEFAULT_MEM_MIB);
  const kernelPath = opts.kernelPath ?? defaultKernelPath();
  const kernel = readKernelFile(kernelPath);
  const decider = opts.decider ?? DEFAULT_DECIDER;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  const audit = opts.auditPath ? new AuditLog(opts.auditPath) : undefined;
  let kvm: Kvm;
  try {
    kvm = Kvm.open(opts.kvmPath);
  } catch (e) {
    audit?.close();
    throw e;
  }
  let health: HealthManager | undefined;
  const vms: (GuestVm | undefined)[] = [];
  /** A scenario that ships its own policy runs with it unless the caller gave one. */
  const policyFor = (sc: Scenario | undefined): Policy =>
    opts.policy ??
    (sc?.policy ? resolvePolicy(loadPolicyFile(join(packageRoot(), sc.policy)), policyKernel()) : DEFAULT_POLICY);
  let kernelForPolicy: PolicyKernel | undefined;
  const policyKernel = () => {
    kernelForPolicy ??= readPolicyKernel(kernelPath);
    return kernelForPolicy;
  };
  try {
    if (decider === "hm-vm") {
      // The health VM always runs gv-kernel, whatever kernel the guests run.
      const hmKernel = kernelPath === defaultKernelPath() ? kernel : readKernelFile(defaultKernelPath());
      health = await HealthManager.start({
        backend: new VmEngineBackend(kvm, hmKernel, defaultKernelPath(), HM_MEM_MIB, opts.onHmSerial),
        nguests: scenarios.length,
        inject: opts.injectHmFault,
        ...(opts.hmChaos ? { chaos: randomCrash } : {}),
        timeoutMs: opts.hmTimeoutMs,
        onRestart: (r) => {
          audit?.append({
            time: new Date(r.timeMs).toISOString(),
            vm: "health-vm",
            kind: "hm-restart",
            reason: r.reason,
            detail: r.detail,
            generation: r.generation,
            poison: r.poison ? { guest: r.poison.guest, seq: Number(r.poison.seq) } : null,
            resent: r.resent,
            downMs: r.downMs,
          });
          opts.onHmRestart?.(r);
        },
      });
    }
    const events: SummaryEvent[][] = scenarios.map(() => []);
    let reloaded: Policy | undefined;
    let aborted = false;
    const repeats = new RepeatLog((g, ev, count, lastMs) =>
      audit?.append({
        time: new Date(lastMs).toISOString(),
        vm: guestName(g),
        kind: "repeat",
        of: ev.seq,
        event: ev.kind,
        ...(ev.vector === undefined ? {} : { vector: ev.vector }),
        symbol: ev.symbol,
        verdict: ev.verdict,
        repeats: count,
      }),
    );
    // A soak's rounds start until its duration is up; the last ones then have the usual time limit.
    const deadline = Date.now() + (soak ? soak.durationMs : 0) + timeoutMs;
    /** One guest from boot to its end, restarted (a new VM, `restart=N`) when a verdict says so. */
    const runLife = async (g: number): Promise<GuestLife> => {
      let scenario = scenarios[g];
      let guestPolicy = policyFor(scenario);
      const life: GuestLife = {
        restarts: 0,
        restartTimes: [],
        intact: true,
        changed: [],
        serial: [],
        unmatchedReports: 0,
      };
      let exitsBefore = 0; // earlier incarnations' exits
      for (;;) {
        if (aborted) return life;
        let foldPrev: { raw: CapturedEvent; summary: SummaryEvent } | undefined; // repeats fold within one incarnation only
        const cmdline = [
          scenario ? `scenario=${scenario.name}` : "",
          "role=guest",
          life.restarts > 0 ? `restart=${life.restarts}` : "",
          opts.cmdline ?? "",
        ]
          .filter(Boolean)
          .join(" ");
        const hm = health;
        if (reloaded) guestPolicy = reloaded; // a restart keeps the reloaded policy
        const bySeq = new Map<number, SummaryEvent>(); // this incarnation's event numbers
        const vm = await GuestVm.build(kvm, {
          vmId: g,
          kernel,
          kernelName: kernelPath,
          memSize,
          cmdline,
          policy: guestPolicy,
          decider: hm ? hm.deciderFor(g) : { kind: "vmm" },
          hangTimeoutMs: opts.hangTimeoutMs ?? DEFAULT_HANG_TIMEOUT_MS,
          exceptionEntry: opts.exceptionEntry,
          onPolicy: (p) => hm?.installRules(g, p.table),
          onHmFault: (f) => hm?.reportFault(f),
          onPaused: (detail) => {
            life.serial.push(`--- guardvisor: ${guestName(g)} paused: ${detail} ---`);
            opts.onGuestState?.(g, "paused");
          },
          onGuestReport: (r) => {
            // Both views of one exception: what the VMM captured, what the guest says it did.
            const ev = r.seq === undefined ? undefined : bySeq.get(r.seq);
            if (ev) ev.guest = r.action;
            else life.unmatchedReports++;
            audit?.append({
              time: new Date().toISOString(),
              vm: guestName(g),
              kind: "guest-report",
              seq: ev?.seq ?? null,
              vector: r.vector,
              rip: `0x${r.rip.toString(16)}`,
              action: r.action,
              matched: ev !== undefined,
            });
          },
          onSerial: opts.onSerial ? (line) => opts.onSerial?.(line, g) : undefined,
          onEvent: (e) => {
            // vms[g] is set before the guest runs its first instruction.
            const self = vms[g] as GuestVm;
            const list = events[g] as SummaryEvent[];
            const n = { ...e, seq: list.length + 1 }; // numbered per guest across restarts
            const s = toSummary(n, self);
            const prev = foldPrev;
            if (prev && sameEvent(prev.raw, e)) {
              // A storm of one event: counted, not stored again (memory stays bounded).
              const folded = prev.summary;
              folded.count = (folded.count ?? 1) + 1;
              bySeq.set(e.seq, folded);
              repeats.note(g, folded, e.timeMs);
              opts.onRepeat?.({ ...s, seq: folded.seq }, g);
              return;
            }
            repeats.flush(g);
            list.push(s);
            foldPrev = { raw: e, summary: s };
            bySeq.set(e.seq, s);
            audit?.append(auditRecord(n, self, guestName(g)));
            opts.onEvent?.(s, g);
          },
        });
        vms[g] = vm;
        // A reload that came while this guest was being built did not reach it: hand it over before it runs.
        if (reloaded && reloaded !== guestPolicy) {
          try {
            reloadGuest(vm, g, reloaded);
            guestPolicy = reloaded;
          } catch (e) {
            // Checked against the guests running then, not this one (an MSR this VM does not filter).
            life.serial.push(
              `--- guardvisor: ${guestName(g)} keeps policy ${guestPolicy.name}: ${(e as Error).message} ---`,
            );
          }
        }
        opts.onGuestState?.(g, "running");
        // Exits so far, live (the vCPU thread counts them in shared memory), for exits/s.
        const before = exitsBefore;
        const sampler = opts.onExits ? setInterval(() => opts.onExits?.(g, before + vm.exitCount()), 1000) : undefined;
        sampler?.unref();
        const stop = await vm.runToEnd(Math.max(1, deadline - Date.now())).finally(() => clearInterval(sampler));
        exitsBefore += stop.stats?.exits ?? vm.exitCount();
        opts.onExits?.(g, exitsBefore);
        const integrity = vm.integrity();
        life.intact &&= integrity.intact;
        life.changed.push(...integrity.changed);
        life.serial.push(...vm.serial);
        life.last = { stop, integrity, vm };
        if (soak && scenario && stop.outcome === "exit" && !stop.timedOut && !aborted) {
          // A soak round done: check it, keep its counts, and start the next scenario in a new VM.
          soak.round(scenario, life.intact, events[g] ?? [], life.serial, stop.code ?? 0, life.restarts);
          if (soak.over()) return life;
          scenario = soak.next(g);
          guestPolicy = reloaded ?? policyFor(scenario);
          scenarios[g] = scenario;
          events[g] = [];
          life.serial = [];
          life.intact = true;
          life.restarts = 0;
          life.restartTimes = [];
          await vm.destroy();
          continue;
        }
        if (stop.outcome !== "restart" || stop.timedOut || aborted) return life;
        const rp = guestPolicy.restart;
        const restartLimit = rp?.limit ?? DEFAULT_RESTART_LIMIT;
        // With a window, only the restarts within the last windowSeconds count against the limit.
        const now = Date.now();
        const counted = rp?.windowSeconds
          ? life.restartTimes.filter((t) => now - t < (rp.windowSeconds ?? 0) * 1000).length
          : life.restarts;
        if (counted >= restartLimit) {
          const then = rp?.exhausted ?? "halt";
          const within = rp?.windowSeconds ? ` within ${rp.windowSeconds} s` : "";
          life.last.stop = {
            ...stop,
            outcome: "halt",
            detail: `${stop.detail}; restart limit ${restartLimit}${within} reached: ${then}`,
          };
          return life;
        }
        life.restarts++;
        life.restartTimes.push(now);
        opts.onGuestState?.(g, "restarting");
        life.serial.push(`--- guardvisor: ${guestName(g)} restarted (${life.restarts}): ${stop.detail} ---`);
        await vm.destroy();
      }
    };
    /** Hand a running guest a new policy; returns its rule-table hash. */
    const reloadGuest = (vm: GuestVm, g: number, p: Policy): number => {
      const compiled = vm.reloadPolicy(p);
      const hash = policyHashOf(compiled.table);
      audit?.append({
        time: new Date().toISOString(),
        vm: guestName(g),
        kind: "policy-reload",
        policy: p.name,
        hash: `0x${hash.toString(16)}`,
        rules: compiled.rules.length,
      });
      return hash;
    };
    if (opts.control) {
      opts.control.reloadPolicy = (p: Policy) => {
        for (const vm of vms) vm?.checkReload(p); // all or none
        const hashes: number[] = [];
        vms.forEach((vm, g) => {
          if (vm) hashes.push(reloadGuest(vm, g, p));
        });
        reloaded = p;
        return { guests: hashes.length, hashes };
      };
      opts.control.guests = () =>
        vms.map((vm, g) => {
          const detail = vm?.pausedBy;
          if (detail !== undefined) return { guest: g, state: "paused", detail };
          return { guest: g, state: vm && !vm.hasStopped ? "running" : "stopped" };
        });
      opts.control.resume = (g) => {
        const ok = vms[g]?.resumePaused() ?? false;
        if (ok) opts.onGuestState?.(g, "running");
        return ok;
      };
    }
    // If one guest fails to build or run, stop the others and wait for them all
    // before anything is torn down (their threads use memory the teardown frees).
    const results = await Promise.allSettled(
      scenarios.map((_, g) =>
        runLife(g).then(
          (life) => {
            if (life.last) opts.onGuestState?.(g, outcomeOf(life.last.stop));
            return life;
          },
          (e: unknown) => {
            aborted = true; // no guest starts or restarts from now on
            for (const vm of vms) vm?.stop();
            throw e;
          },
        ),
      ),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
    const lives = results.map((r) => (r as PromiseFulfilledResult<GuestLife>).value);
    if (opts.control) {
      opts.control.reloadPolicy = undefined;
      opts.control.guests = undefined;
      opts.control.resume = undefined;
    }
    for (let g = 0; g < scenarios.length; g++) repeats.flush(g);
    await health?.settled(); // a restart still running counts
    const hmStatus = health?.status();
    const healthVm: HealthVmSummary = {
      restarts: hmStatus?.restarts ?? 0,
      requests: hmStatus?.requests ?? 0,
      faults: (hmStatus?.faults ?? []).map((f) => ({ reason: f.reason, detail: f.detail, downMs: f.downMs })),
    };
    if (soak) {
      // A soak's summary keeps counts, not every fault.
      healthVm.faults = healthVm.faults.slice(-10);
    }
    const guests = lives.map((life, g): RunReport => {
      const last = life.last as NonNullable<GuestLife["last"]>;
      const stop = last.stop;
      const scenario = scenarios[g];
      const summary: RunSummary = {
        scenario: scenario?.name ?? "custom",
        decider,
        guest: {
          outcome: outcomeOf(stop),
          restarts: life.restarts,
          exitCode: stop.outcome === "exit" ? (stop.code ?? 0) : null,
        },
        integrity: { protectedBytes: last.integrity.protectedBytes, intact: life.intact },
        healthVm,
        events: events[g] ?? [],
      };
      const result = parseResultLine(life.serial);
      return {
        summary,
        detail: stop.timedOut ? `stopped after the ${timeoutMs} ms time limit` : stop.detail,
        result,
        problems: scenario ? checkScenario(scenario, summary, result) : [],
        serial: life.serial,
        stats: stop.stats,
        changedRegions: [...new Set(life.changed)],
        unmatchedGuestReports: life.unmatchedReports,
      };
    });
    return {
      guests,
      summary: {
        decider,
        guests: guests.map(({ summary: { decider: _d, healthVm: _h, ...rest } }, g) => ({ vm: guestName(g), ...rest })),
        healthVm,
        ...(soak ? { soak: soak.summary(health, healthVm.restarts) } : {}),
      },
    };
  } finally {
    // Guests first: their vCPU threads use the IDC region the health VM owns.
    for (const vm of vms) await vm?.destroy();
    await health?.stop();
    audit?.close();
    kvm.close();
  }
}

/** A random crash of the health VM within its next 1..20 requests. */
function randomCrash(answered: number): InjectSpec {
  return { mode: C.INJECT_CRASH, at: answered + 1 + Math.floor(Math.random() * 20), slowUs: 0 };
}

/** The rounds of a soak run (--duration): what each guest runs next, and the counts. */
class Soak {
  readonly durationMs: number;
  private readonly end: number;
  private readonly mix: Scenario[];
  private readonly turns: number[];
  private rounds = 0;
  private failed = 0;
  private readonly problems: string[] = [];
  private readonly byDecider: Record<string, number> = {};
  private intact = true;
  private rssStart: number | undefined;

  constructor(opts: RunOptions, nguests: number) {
    this.durationMs = opts.durationMs ?? 0;
    this.end = Date.now() + this.durationMs;
    const names = opts.scenarios ?? (opts.scenario ? [opts.scenario] : []);
    this.mix = names.map(findScenario);
    this.turns = new Array(nguests).fill(0);
  }

  over(): boolean {
    return Date.now() >= this.end;
  }

  /** Guest g's next scenario: the mix in turn, each guest starting at its own place. */
  next(g: number): Scenario {
    this.turns[g] = (this.turns[g] ?? 0) + 1;
    return this.mix[(g + (this.turns[g] ?? 0)) % this.mix.length] as Scenario;
  }

  round(sc: Scenario, intact: boolean, events: SummaryEvent[], serial: string[], code: number, restarts: number): void {
    this.rounds++;
    this.intact &&= intact;
    for (const e of events) this.byDecider[e.decidedBy] = (this.byDecider[e.decidedBy] ?? 0) + (e.count ?? 1);
    const sum: RunSummary = {
      scenario: sc.name,
      decider: "hm-vm",
      // A fail-safe verdict may be the policy's restart (integrity, crash): a restart then is by design.
      guest: {
        outcome: "completed",
        restarts: events.some((e) => e.decidedBy === "failsafe") ? (sc.restarts ?? 0) : restarts,
        exitCode: code,
      },
      integrity: { protectedBytes: 0, intact },
      healthVm: { restarts: 0, requests: 0, faults: [] },
      events: [],
    };
    // Under random health-VM crashes a verdict may be fail-safe: the scenario's own checks
    // on the guest (its result line, its bytes) must hold, event verdicts may differ.
    const problems = checkScenario({ ...sc, events: [] }, sum, parseResultLine(serial));
    if (problems.length > 0) {
      this.failed++;
      if (this.problems.length < 10) this.problems.push(`${sc.name}: ${problems.join("; ")}`);
    }
    this.rssStart ??= process.memoryUsage().rss;
  }

  summary(health: HealthManager | undefined, hmRestarts: number): SoakSummary {
    const requests = { published: 0, settled: 0 };
    for (let g = 0; g < this.turns.length; g++) {
      const c = health?.requestCounts(g);
      requests.published += c?.published ?? 0;
      requests.settled += c?.settled ?? 0;
    }
    const mib = (b: number) => Math.round((b / (1024 * 1024)) * 10) / 10;
    const rss = process.memoryUsage().rss;
    return {
      durationS: Math.round(this.durationMs / 1000),
      rounds: this.rounds,
      roundsFailed: this.failed,
      problems: this.problems,
      events: this.byDecider,
      requests,
      hmRestarts,
      intact: this.intact,
      rssMiB: { start: mib(this.rssStart ?? rss), end: mib(rss) },
    };
  }
}

function toSummary(e: CapturedEvent, g: GuestVm): SummaryEvent {
  return {
    seq: e.seq,
    kind: e.kind,
    ...(e.kind === "cpu-exception" || e.kind === "integrity" ? { vector: e.vector } : {}),
    ...(e.kind === "msr-write" ? { msr: `0x${e.msrIndex.toString(16)}` } : {}),
    ...(e.note ? { note: e.note } : {}),
    region: g.regionName(e.regionId) ?? null,
    symbol: e.kind === "protected-write" ? g.symbolizePhys(e.gpa) : g.symbolizer.format(Number(e.rip)),
    rip: `0x${e.rip.toString(16)}`,
    verdict: e.verdict,
    decidedBy: e.decidedBy,
    latencyUs: Math.round(e.latencyUs * 10) / 10,
  };
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
        (want.vector === undefined || e.vector === want.vector),
    );
    const n = matching.reduce((sum, e) => sum + (e.count ?? 1), 0);
    const where = `${want.region ? ` in ${want.region}` : ""}${want.vector === undefined ? "" : ` on vector ${want.vector}`}`;
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
