/**
 * `guardvisor bench`: every verdict path measured against the bare KVM exit,
 * in one process run (docs/performance.md).
 *
 * Every latency is measured the same way for every VMM: the benchmark guest
 * (gv-kernel, scenarios bench-write, bench-ud, bench-benign) times each
 * protected write or ud2 with the TSC in ring 3, so the bare baseline
 * (bench/baseline.c) and Guardvisor with each decider are compared on one
 * scale: what an event costs the guest. Guardvisor's own share (exit to
 * verdict applied, the dispatcher's latencyUs) and the baseline's own host
 * timing are reported next to it.
 */
import { readFileSync } from "node:fs";
import type { DeciderName } from "../decide/decider.js";
import { defaultKernelPath } from "../elf/kernel-file.js";
import { loadElf } from "../elf/kernel-image.js";
import { GuardvisorError, isGuardvisorError } from "../errors.js";
import { HealthManager, HM_DEFAULTS } from "../health/health-manager.js";
import { Kvm } from "../kvm/kvm.js";
import { guestName } from "../names.js";
import { HM_MEM_MIB } from "../run/options.js";
import { timeScale } from "../time-scale.js";
import { MIB } from "../vmm/boot.js";
import { type BaselineOptions, type BaselineRun, runBaseline } from "./baseline.js";
import { type BenchScenario, benchCmdline, benignResult, type TimedResult, timedResult } from "./guest-result.js";
import { TrackedVmBackend } from "./health.js";
import { machineFacts } from "./machine.js";
import { rssMiB, threadCpuPercent } from "./proc.js";
import { type BenchMeasurements, GUEST_COUNTS, type VerdictPath, type Vmm } from "./report.js";
import { type BenchHealth, type GuestRunResult, type GuestRunSpec, runGuardvisor } from "./session.js";
import { cyclesToUs, median, type Pcts, pcts, perSecond } from "./stats.js";

/** How much each measurement runs. */
export interface BenchPlan {
  /** Back-to-back protected writes per verdict path (after `warm` unmeasured ones). */
  writes: number;
  warm: number;
  /** Writes after `coldGapMs` of guest idling each (the cold doorbell). */
  coldWrites: number;
  coldGapMs: number;
  /** Seconds of back-to-back writes per storm. */
  stormSec: number;
  udCount: number;
  udWarm: number;
  /** Rounds of the benign workload per run, and runs per VMM (the median counts). */
  benignRounds: number;
  benignReps: number;
  /** Writes per guest in the several-guests runs. */
  guestWrites: number;
  guestWarm: number;
  /** How long the idle health VM is watched. */
  idleMs: number;
  memMiB: number;
}

export const FULL_PLAN: BenchPlan = {
  writes: 100_000,
  warm: 5000,
  coldWrites: 50,
  coldGapMs: 100,
  stormSec: 10,
  udCount: 2000,
  udWarm: 100,
  benignRounds: 50,
  benignReps: 5,
  guestWrites: 20_000,
  guestWarm: 1000,
  idleMs: 5000,
  memMiB: 32,
};

/** Sized to finish in well under a minute on the slowest host we know (KVM without hardware virtualization). */
export const QUICK_PLAN: BenchPlan = {
  writes: 5000,
  warm: 500,
  coldWrites: 10,
  coldGapMs: 100,
  stormSec: 2,
  udCount: 200,
  udWarm: 20,
  benignRounds: 5,
  benignReps: 3,
  guestWrites: 2000,
  guestWarm: 200,
  idleMs: 1000,
  memMiB: 32,
};

/**
 * A plan for a host `scale` times slower than a KVM host (GV_TIME_SCALE, the
 * lab): the measured counts divided by it, down to floors that still give a
 * p99; durations stay, and so do the warm-up counts: how far V8 has
 * optimised the VMM's code depends on how many exits it has handled, not on
 * how long they took (with the lab's few hundred writes and a warm-up cut to
 * a dozen, the lab measured mostly unoptimised code). On a KVM host (scale 1)
 * it is the plan itself.
 */
export function planForScale(plan: BenchPlan, scale: number): BenchPlan {
  if (scale <= 1) return plan;
  const div = (n: number, floor: number) => Math.max(Math.min(n, floor), Math.round(n / scale));
  return {
    ...plan,
    writes: div(plan.writes, 200),
    coldWrites: div(plan.coldWrites, 5),
    udCount: div(plan.udCount, 50),
    benignRounds: div(plan.benignRounds, 2),
    guestWrites: div(plan.guestWrites, 100),
  };
}

/** A started health VM, and its vCPU thread when it could be told apart. */
export interface StartedHealthVm {
  hm: BenchHealth;
  vcpuTid: number | undefined;
  /** Why vcpuTid is undefined. */
  tidProblem: string;
}

/**
 * Everything the bench does to the outside world. `kvmDriver` is the real
 * one; the unit tests drive the whole sequence with a simulated guest.
 */
export interface BenchDriver {
  openKvm(path?: string): Kvm;
  baseline(o: BaselineOptions): Promise<BaselineRun>;
  guardvisor(spec: GuestRunSpec): Promise<GuestRunResult[]>;
  startHealthVm(
    kvm: Kvm,
    kernel: Uint8Array,
    kernelName: string,
    nguests: number,
    timeoutMs?: number,
  ): Promise<StartedHealthVm>;
  threadCpuPercent(tid: number, ms: number): Promise<number>;
  rssMiB(): number;
}

export const kvmDriver: BenchDriver = {
  openKvm,
  baseline: runBaseline,
  guardvisor: runGuardvisor,
  async startHealthVm(kvm, kernel, kernelName, nguests, timeoutMs) {
    const backend = new TrackedVmBackend(kvm, kernel, kernelName, HM_MEM_MIB);
    const hm = await HealthManager.start({ backend, nguests, timeoutMs });
    return {
      hm,
      get vcpuTid() {
        return backend.vcpuTid;
      },
      get tidProblem() {
        return backend.tidProblem;
      },
    };
  },
  threadCpuPercent,
  rssMiB,
};

export interface BenchOptions {
  quick?: boolean;
  plan?: BenchPlan;
  kvmPath?: string;
  kernelPath?: string;
  baselinePath?: string;
  /** The health VM's answer deadline (default HM_DEFAULTS.timeoutMs); a later answer makes the run invalid. */
  hmTimeoutMs?: number;
  /** One line per step, for people watching. */
  onProgress?: (line: string) => void;
  /** Default: kvmDriver. */
  driver?: BenchDriver;
}

/** Per-run time limit: generous, so only a stuck guest hits it. */
const RUN_TIMEOUT_S = 300;
const EXCEPTION_ENTRY = "gv_exception_entry";

/** Open KVM, or fail with "KVM is unavailable: ..." (exit code 3). */
export function openKvm(path?: string): Kvm {
  try {
    return Kvm.open(path);
  } catch (e) {
    if (isGuardvisorError(e) && e.code === "KVM_UNAVAILABLE") {
      throw new GuardvisorError("KVM_UNAVAILABLE", `KVM is unavailable: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

function readKernel(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new GuardvisorError(
      "IO",
      `cannot read kernel ${path}: ${err.code === "ENOENT" ? "no such file (build it with 'npm run build')" : err.message}`,
    );
  }
}

/** The benchmark kernel's exception entry (for the baseline's breakpoint); checks it has the bench scenarios. */
export function benchKernelInfo(kernel: Uint8Array, memMiB: number): { exceptionEntry: bigint } {
  const { image, regions } = loadElf(kernel, memMiB * MIB);
  const sym = (name: string) => image.symbols.find((s) => s.name === name);
  if (!sym("scenario_bench_write") || !regions.some((r) => r.name === ".benchpage")) {
    throw new GuardvisorError(
      "CONFIG_INVALID",
      "the kernel has no benchmark scenarios (rebuild it with 'npm run build')",
    );
  }
  const entry = sym(EXCEPTION_ENTRY);
  if (!entry) throw new GuardvisorError("CONFIG_INVALID", `the kernel has no symbol ${EXCEPTION_ENTRY}`);
  return { exceptionEntry: BigInt(entry.value) };
}

const fmt = (n: number) => n.toLocaleString("en-US");

class Bench {
  private readonly plan: BenchPlan;
  private readonly say: (line: string) => void;
  private readonly kernelPath: string;
  private readonly kernel: Uint8Array;
  private readonly exceptionEntry: bigint;
  private tscKhz = 0;

  constructor(
    private readonly kvm: Kvm,
    private readonly o: BenchOptions,
    private readonly driver: BenchDriver,
  ) {
    this.plan = o.plan ?? planForScale(o.quick ? QUICK_PLAN : FULL_PLAN, timeScale());
    this.say = o.onProgress ?? (() => {});
    this.kernelPath = o.kernelPath ?? defaultKernelPath();
    this.kernel = readKernel(this.kernelPath);
    this.exceptionEntry = benchKernelInfo(this.kernel, this.plan.memMiB).exceptionEntry;
  }

  private us(cycles: number): number {
    return cyclesToUs(cycles, this.tscKhz);
  }

  private pctsOf(r: TimedResult): Pcts {
    return { p50: this.us(r.p50), p99: this.us(r.p99) };
  }

  private cycles(ms: number): number {
    return Math.round(ms * this.tscKhz);
  }

  /** Guest cycles are converted with the baseline's TSC rate: Guardvisor's guests must tick at the same rate. */
  private checkTsc(khz: number, what: string): void {
    if (khz > 0 && Math.abs(khz - this.tscKhz) > this.tscKhz / 1000) {
      throw new GuardvisorError(
        "GUEST_FAULT",
        `${what}: the guest TSC runs at ${khz} kHz, the baseline's at ${this.tscKhz} kHz: cycles are not comparable`,
      );
    }
  }

  // ---- the baseline ----

  private async bare(scenario: BenchScenario, args: Record<string, number>, breakAt?: bigint): Promise<BaselineRun> {
    return this.driver.baseline({
      kernelPath: this.kernelPath,
      cmdline: benchCmdline(scenario, args),
      memMiB: this.plan.memMiB,
      breakAt,
      timeoutSec: RUN_TIMEOUT_S + (args.dur ? Math.ceil(args.dur / (this.tscKhz * 1000)) : 0),
      kvmPath: this.o.kvmPath,
      path: this.o.baselinePath,
    });
  }

  /** A bare timed run, checked to have exited once per measured iteration. */
  private async bareTimed(
    scenario: "bench-write" | "bench-ud",
    args: Record<string, number>,
    breakAt?: bigint,
  ): Promise<{ run: BaselineRun; result: TimedResult }> {
    const run = await this.bare(scenario, args, breakAt);
    if (!this.tscKhz) this.tscKhz = run.host.tscKhz;
    const result = timedResult(run.serial, scenario, `baseline ${scenario}`);
    const want = (args.warm ?? 0) + result.n;
    if (run.host.exits < want) {
      throw new GuardvisorError(
        "GUEST_FAULT",
        `baseline ${scenario}: ${run.host.exits} exits for ${want} ${scenario === "bench-write" ? "protected writes" : "exceptions"}: the target is not protected`,
      );
    }
    return { run, result };
  }

  // ---- Guardvisor ----

  private async gv(
    scenario: BenchScenario,
    args: Record<string, number>,
    decider: DeciderName,
    health: BenchHealth | undefined,
    guests = 1,
    hooks: { onBuilt?: () => void; onSample?: () => void } = {},
  ) {
    const expect =
      scenario === "bench-write"
        ? { kind: "protected-write" as const, region: ".benchpage" }
        : scenario === "bench-ud"
          ? { kind: "cpu-exception" as const }
          : undefined;
    const what = `${scenario} under Guardvisor (${decider}${guests > 1 ? `, ${guests} guests` : ""})`;
    const runs = await this.driver.guardvisor({
      kvm: this.kvm,
      kernel: this.kernel,
      kernelName: this.kernelPath,
      memMiB: this.plan.memMiB,
      cmdline: benchCmdline(scenario, args),
      guests,
      decider,
      health,
      timeoutMs: (RUN_TIMEOUT_S + (args.dur ? Math.ceil(args.dur / (this.tscKhz * 1000)) : 0)) * 1000,
      expect,
      what,
      ...hooks,
    });
    if (health) {
      await health.settled();
      const st = health.status();
      if (st.restarts > 0) {
        const f = st.faults[0];
        throw new GuardvisorError(
          "GUEST_FAULT",
          `${what}: the health VM restarted during the measurement (${f?.reason}: ${f?.detail})`,
        );
      }
    }
    for (const r of runs) this.checkTsc(r.tscKhz, what);
    return runs.map((r, g) => ({ ...r, what: guests > 1 ? `${what}, ${guestName(g)}` : what }));
  }

  /** A timed Guardvisor run: the guest's numbers and the dispatcher's latencies of the measured events. */
  private async gvTimed(
    scenario: "bench-write" | "bench-ud",
    args: Record<string, number>,
    decider: DeciderName,
    health?: BenchHealth,
    guests = 1,
    hooks: { onBuilt?: () => void; onSample?: () => void } = {},
  ) {
    const runs = await this.gv(scenario, args, decider, health, guests, hooks);
    return runs.map((r) => {
      const result = timedResult(r.serial, scenario, r.what);
      const warm = args.warm ?? 0;
      if (r.latencies.length !== warm + result.n) {
        throw new GuardvisorError(
          "GUEST_FAULT",
          `${r.what}: ${r.latencies.length} events for ${warm + result.n} ${scenario === "bench-write" ? "protected writes" : "exceptions"}`,
        );
      }
      return { result, decide: pcts(r.latencies.values(warm), `${r.what} latencies`) };
    });
  }

  private startHealthVm(nguests: number): Promise<StartedHealthVm> {
    return this.driver.startHealthVm(this.kvm, this.kernel, this.kernelPath, nguests, this.o.hmTimeoutMs);
  }

  async run(): Promise<BenchMeasurements> {
    const p = this.plan;
    const say = this.say;
    const write = { n: p.writes, warm: p.warm };
    const ud = { n: p.udCount, warm: p.udWarm };
    const benign = { n: p.benignRounds };

    say(`bare exit: the baseline VMM, ${fmt(p.writes)} protected writes`);
    const bw = await this.bareTimed("bench-write", write);
    const stormArgs = () => ({ warm: p.warm, dur: this.cycles(p.stormSec * 1000) });
    say(`storm: the baseline VMM, ${p.stormSec} s`);
    const bs = (await this.bareTimed("bench-write", stormArgs())).result;
    say(`#UD: the baseline VMM, ${fmt(p.udCount)} exceptions`);
    const bu = (await this.bareTimed("bench-ud", ud, this.exceptionEntry)).result;
    const benignBare: number[] = [];
    for (let i = 0; i < p.benignReps; i++) {
      say(`benign workload: the baseline VMM, run ${i + 1} of ${p.benignReps}`);
      const run = await this.bare("bench-benign", benign);
      benignBare.push(benignResult(run.serial, "baseline bench-benign").cycles / this.tscKhz);
    }

    const verdict = {} as Record<VerdictPath, Pcts>;
    const decide = {} as Record<VerdictPath, Pcts>;
    const storm = { bare: perSecond(bs.n, bs.cycles, this.tscKhz) } as Record<Vmm, number>;
    const exception = { bare: this.pctsOf(bu) } as Record<Vmm, Pcts>;

    say(`verdict, vmm decider: ${fmt(p.writes)} protected writes`);
    const vw = (await this.gvTimed("bench-write", write, "vmm"))[0]!;
    verdict.vmm = this.pctsOf(vw.result);
    decide.vmm = vw.decide;
    say(`storm, vmm decider: ${p.stormSec} s`);
    const vs = (await this.gvTimed("bench-write", stormArgs(), "vmm"))[0]!.result;
    storm.vmm = perSecond(vs.n, vs.cycles, this.tscKhz);
    say(`#UD, vmm decider: ${fmt(p.udCount)} exceptions`);
    exception.vmm = this.pctsOf((await this.gvTimed("bench-ud", ud, "vmm"))[0]!.result);

    say("starting a health VM");
    let idleHmCpuPct: number;
    const benignGv: number[] = [];
    const one = await this.startHealthVm(1);
    try {
      say(`verdict, hm-vm decider, busy: ${fmt(p.writes)} protected writes`);
      const hw = (await this.gvTimed("bench-write", write, "hm-vm", one.hm))[0]!;
      verdict["hm-vm"] = this.pctsOf(hw.result);
      decide["hm-vm"] = hw.decide;
      say(`verdict, hm-vm decider, cold: ${p.coldWrites} writes, each after ${p.coldGapMs} ms of idling`);
      const cold = { n: p.coldWrites, warm: Math.min(p.warm, 100), gap: this.cycles(p.coldGapMs) };
      const hc = (await this.gvTimed("bench-write", cold, "hm-vm", one.hm))[0]!;
      verdict["hm-vm-cold"] = this.pctsOf(hc.result);
      decide["hm-vm-cold"] = hc.decide;
      say(`storm, hm-vm decider: ${p.stormSec} s`);
      const hs = (await this.gvTimed("bench-write", stormArgs(), "hm-vm", one.hm))[0]!.result;
      storm["hm-vm"] = perSecond(hs.n, hs.cycles, this.tscKhz);
      say(`#UD, hm-vm decider: ${fmt(p.udCount)} exceptions`);
      exception["hm-vm"] = this.pctsOf((await this.gvTimed("bench-ud", ud, "hm-vm", one.hm))[0]!.result);
      for (let i = 0; i < p.benignReps; i++) {
        say(`benign workload: Guardvisor (hm-vm), run ${i + 1} of ${p.benignReps}`);
        const run = (await this.gv("bench-benign", benign, "hm-vm", one.hm))[0]!;
        benignGv.push(benignResult(run.serial, run.what).cycles / this.tscKhz);
      }
      say(`idle health VM: watching its vCPU thread for ${p.idleMs} ms`);
      const tid = one.vcpuTid;
      if (tid === undefined) {
        throw new GuardvisorError("GUEST_FAULT", `bench: idle health-VM CPU cannot be measured: ${one.tidProblem}`);
      }
      idleHmCpuPct = await this.driver.threadCpuPercent(tid, p.idleMs);
    } finally {
      await one.hm.stop();
    }

    say("starting a health VM for 8 guests");
    const guests: BenchMeasurements["guests"] = [];
    let baseMiB = 0;
    let peakMiB = 0;
    const eight = await this.startHealthVm(8);
    try {
      for (const n of GUEST_COUNTS) {
        say(`${n} guest${n > 1 ? "s" : ""} on one health VM: ${fmt(p.guestWrites)} protected writes each`);
        const track = (): void => {
          peakMiB = Math.max(peakMiB, this.driver.rssMiB());
        };
        if (n === 8) baseMiB = this.driver.rssMiB();
        const runs = await this.gvTimed(
          "bench-write",
          { n: p.guestWrites, warm: p.guestWarm },
          "hm-vm",
          eight.hm,
          n,
          n === 8 ? { onBuilt: track, onSample: track } : {},
        );
        guests.push({ n, perGuest: runs.map((r) => this.pctsOf(r.result)) });
      }
    } finally {
      await eight.hm.stop();
    }

    return {
      quick: this.o.quick === true,
      hmTimeoutMs: this.o.hmTimeoutMs ?? HM_DEFAULTS.timeoutMs,
      tscKhz: this.tscKhz,
      bareExit: this.pctsOf(bw.result),
      bareHostExit: { p50: bw.run.host.p50Us, p99: bw.run.host.p99Us },
      verdict,
      decide,
      exception,
      storm,
      benignMs: { bare: median(benignBare), guardvisor: median(benignGv) },
      guests,
      rss: { baseMiB, perGuestMiB: Math.max(0, peakMiB - baseMiB) / 8 },
      idleHmCpuPct,
      machine: machineFacts(),
    };
  }
}

/** Take every measurement; throws (KVM_UNAVAILABLE, GUEST_FAULT, …) when one cannot be taken. */
export async function runBench(o: BenchOptions = {}): Promise<BenchMeasurements> {
  const driver = o.driver ?? kvmDriver;
  const kvm = driver.openKvm(o.kvmPath);
  try {
    return await new Bench(kvm, o, driver).run();
  } finally {
    kvm.close();
  }
}
