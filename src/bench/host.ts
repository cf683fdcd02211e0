/**
 * `guardvisor bench --host`: the software Guardvisor runs per VM exit,
 * measured at native speed with no KVM, each path against a C baseline
 * measured in the same run (docs/performance.md, "Host bench"):
 *  - the dispatcher path (host-dispatch.ts) against bench/host_dispatch.c,
 *    which decodes the same kvm_run pages and drops the write;
 *  - the IDC round trip (host-idc.ts) against bench/host_pingpong.c, two
 *    threads ping-ponging over the same ring layout.
 * A run with a fail-safe verdict, a missed writer, a write that landed or a
 * baseline from another run is not a measurement: it fails (GUEST_FAULT).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import type { DecisionResult } from "../decide/decider.js";
import { defaultKernelPath, readKernelFile } from "../elf/kernel-file.js";
import { GuardvisorError } from "../errors.js";
import type { InjectSpec } from "../idc/channel.js";
import { kernelLayout, packageRoot } from "../kvm/native.js";
import { DISPATCH_KINDS, type DispatchKind, dispatchFixture } from "./host-dispatch.js";
import { idcRoundTrips } from "./host-idc.js";
import { machineFacts } from "./machine.js";
import { percentile, round } from "./stats.js";

export interface HostBenchOptions {
  quick?: boolean;
  kernelPath?: string;
  /** Make the health-management engine misbehave (tests: a run with fail-safe verdicts is refused). */
  inject?: InjectSpec;
  /** The bench's C programs and the hosted engine (default: the built ones). */
  toolDir?: string;
  enginePath?: string;
  onProgress?: (line: string) => void;
}

export interface HostPlan {
  dispatchSamples: number;
  dispatchWarmup: number;
  idcSamples: number;
  idcWarmup: number;
}

export const HOST_FULL_PLAN: HostPlan = {
  dispatchSamples: 20_000,
  dispatchWarmup: 2_000,
  idcSamples: 50_000,
  idcWarmup: 5_000,
};
export const HOST_QUICK_PLAN: HostPlan = {
  dispatchSamples: 2_000,
  dispatchWarmup: 500,
  idcSamples: 5_000,
  idcWarmup: 1_000,
};

/** Percentiles of one latency distribution, µs. */
export interface Tail {
  samples: number;
  p50Us: number;
  p99Us: number;
  p999Us: number;
}

export interface HostPath extends Tail {
  baseline: Tail;
  /** Ours over the baseline's, at p50 and p99. */
  ratioP50: number;
  ratioP99: number;
}

/** Which C program measured a baseline, in this run. */
export interface BaselineProof {
  program: string;
  pid: number;
  runId: string;
  /** Two clock reads back to back, p50, ns: the floor of every sample. */
  clockNs: number;
}

export interface HostTarget {
  name: string;
  limit: string;
  value: number;
  met: boolean;
}

export interface HostBenchJson {
  host: "native";
  runId: string;
  quick: boolean;
  /** `load1`: the 1-minute load average when the run ended (other work on the CPUs skews the IDC figures most). */
  machine: { cpu: string; cpus: number; kernel: string; node: string; load1: number };
  plan: HostPlan;
  dispatch: Record<DispatchKind, HostPath>;
  idc: HostPath;
  decidedBy: {
    dispatch: Record<DecisionResult["decidedBy"], number>;
    idc: Record<DecisionResult["decidedBy"], number>;
  };
  verdicts: { dispatch: Record<string, number>; idc: Record<string, number> };
  events: { posted: number; received: number };
  baselines: { dispatch: BaselineProof; idc: BaselineProof };
  /** Two hrtime reads back to back in this process, p50, ns. */
  clockNs: number;
  targets: HostTarget[];
}

function tail(values: ArrayLike<number>): Tail {
  return {
    samples: values.length,
    p50Us: percentile(values, 0.5),
    p99Us: percentile(values, 0.99),
    p999Us: percentile(values, 0.999),
  };
}

function path(ours: Tail, baseline: Tail): HostPath {
  const ratio = (a: number, b: number) => (b > 0 ? a / b : Number.POSITIVE_INFINITY);
  return {
    ...ours,
    baseline,
    ratioP50: ratio(ours.p50Us, baseline.p50Us),
    ratioP99: ratio(ours.p99Us, baseline.p99Us),
  };
}

function toolPath(dir: string | undefined, name: string): string {
  const p = join(dir ?? join(packageRoot(), "bench", "out"), name);
  if (!existsSync(p)) {
    throw new GuardvisorError("CONFIG_INVALID", `the host bench's baseline ${p} is not built (run 'npm run build')`);
  }
  return p;
}

/** Run a baseline program; its one JSON line, checked to come from this run. */
function runTool(file: string, args: string[], runId: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { maxBuffer: 1 << 20, timeout: 600_000 }, (err, stdout, stderr) => {
      if (err) {
        const why = stderr.trim().split("\n")[0] || err.message;
        reject(new GuardvisorError("GUEST_FAULT", `baseline ${file} failed: ${why}`));
        return;
      }
      let v: unknown;
      try {
        v = JSON.parse(stdout.trim().split("\n").at(-1) ?? "");
      } catch {
        reject(new GuardvisorError("INTERNAL", `baseline ${file} printed no JSON result`));
        return;
      }
      const o = v as Record<string, unknown>;
      if (typeof o !== "object" || o === null || o.runId !== runId) {
        reject(new GuardvisorError("INTERNAL", `baseline ${file} answered for another run`));
        return;
      }
      resolve(o);
    });
  });
}

function num(o: Record<string, unknown>, field: string, what: string): number {
  const v = o[field];
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
    throw new GuardvisorError("INTERNAL", `${what}: field ${field} missing or not a number`);
  }
  return v;
}

function tailOf(o: unknown, what: string, samples: number): Tail {
  if (typeof o !== "object" || o === null) throw new GuardvisorError("INTERNAL", `${what}: no result`);
  const r = o as Record<string, unknown>;
  const t = {
    samples: num(r, "samples", what),
    p50Us: num(r, "p50Us", what),
    p99Us: num(r, "p99Us", what),
    p999Us: num(r, "p999Us", what),
  };
  if (t.samples !== samples) throw new GuardvisorError("INTERNAL", `${what}: ${t.samples} samples, not ${samples}`);
  return t;
}

function proof(o: Record<string, unknown>, program: string, runId: string): BaselineProof {
  return { program, pid: num(o, "pid", program), runId, clockNs: num(o, "clockNs", program) };
}

function hrtimeFloorNs(): number {
  const s = new Float64Array(10_001);
  for (let i = 0; i < s.length; i++) {
    const t0 = process.hrtime.bigint();
    s[i] = Number(process.hrtime.bigint() - t0);
  }
  return percentile(s, 0.5);
}

export function hostTargets(j: Pick<HostBenchJson, "dispatch" | "idc">): HostTarget[] {
  const kinds = Object.values(j.dispatch);
  const worstP50 = Math.max(...kinds.map((k) => k.p50Us));
  const worstP99 = Math.max(...kinds.map((k) => k.p99Us));
  return [
    { name: "dispatcher path p50 (worst kind)", limit: "≤ 1 µs", value: worstP50, met: worstP50 <= 1 },
    { name: "dispatcher path p99 (worst kind)", limit: "≤ 5 µs", value: worstP99, met: worstP99 <= 5 },
    { name: "IDC round trip p50", limit: "≤ 1 µs", value: j.idc.p50Us, met: j.idc.p50Us <= 1 },
    { name: "IDC round trip p50 / C ping-pong", limit: "≤ 3×", value: j.idc.ratioP50, met: j.idc.ratioP50 <= 3 },
    { name: "IDC round trip p99", limit: "≤ 20 µs", value: j.idc.p99Us, met: j.idc.p99Us <= 20 },
  ];
}

export async function runHostBench(o: HostBenchOptions = {}): Promise<HostBenchJson> {
  const plan = o.quick ? HOST_QUICK_PLAN : HOST_FULL_PLAN;
  const say = o.onProgress ?? (() => {});
  const runId = `${Date.now().toString(36)}-${process.pid}-${randomBytes(4).toString("hex")}`;
  const dispatchTool = toolPath(o.toolDir, "host-dispatch");
  const pingpongTool = toolPath(o.toolDir, "host-pingpong");
  const kernel = readKernelFile(o.kernelPath ?? defaultKernelPath());
  const clockNs = hrtimeFloorNs();

  const fx = dispatchFixture(kernel);
  const dir = mkdtempSync(join(tmpdir(), "guardvisor-host-bench-"));
  try {
    say(`dispatcher replay: ${plan.dispatchSamples} exits of each kind after ${plan.dispatchWarmup}`);
    const replay = await fx.replay(plan.dispatchSamples, plan.dispatchWarmup);
    if (replay.decidedBy.failsafe > 0 || replay.decidedBy.vmm !== replay.eventsPosted) {
      throw new GuardvisorError("GUEST_FAULT", `dispatcher replay: decisions ${JSON.stringify(replay.decidedBy)}`);
    }
    if (replay.wrongRip > 0) {
      throw new GuardvisorError("GUEST_FAULT", `dispatcher replay: ${replay.wrongRip} events named the wrong writer`);
    }
    if (!fx.textIntact()) throw new GuardvisorError("GUEST_FAULT", "dispatcher replay: a denied write landed");
    const context = fx.lastContext("write-8");
    if (!context) throw new GuardvisorError("INTERNAL", "dispatcher replay: no write was captured");

    say("dispatcher baseline (bench/host_dispatch.c): the same pages, decoded and dropped");
    const pages = join(dir, "pages");
    writeFileSync(pages, Buffer.concat(fx.exits.flatMap((e) => e.pages)));
    const cd = await runTool(
      dispatchTool,
      [
        runId,
        String(plan.dispatchSamples),
        String(plan.dispatchWarmup),
        pages,
        ...fx.exits.map((e) => `${e.kind}:${e.pages.length}`),
      ],
      runId,
    );
    if (num(cd, "pageSize", "host-dispatch") !== kernelLayout("kvm_run").size) {
      throw new GuardvisorError("INTERNAL", "host-dispatch: its struct kvm_run is not the addon's");
    }
    const dispatch = {} as Record<DispatchKind, HostPath>;
    for (const k of DISPATCH_KINDS) {
      const ours = replay.samples.get(k)?.values() ?? new Float64Array(0);
      const base = tailOf(
        (cd.kinds as Record<string, unknown> | undefined)?.[k],
        `host-dispatch ${k}`,
        plan.dispatchSamples,
      );
      dispatch[k] = path(tail(ours), base);
    }

    say(`IDC round trip: ${plan.idcSamples} requests after ${plan.idcWarmup}, answered by the hosted engine`);
    const idc = await idcRoundTrips({
      samples: plan.idcSamples,
      warmup: plan.idcWarmup,
      policy: fx.policy,
      context,
      inject: o.inject,
      enginePath: o.enginePath,
    });
    if (idc.decidedBy.failsafe > 0 || idc.decidedBy["hm-vm"] !== plan.idcSamples + plan.idcWarmup) {
      throw new GuardvisorError("GUEST_FAULT", `IDC round trip: decisions ${JSON.stringify(idc.decidedBy)}`);
    }
    say("IDC baseline (bench/host_pingpong.c): two threads, the same ring layout");
    const cp = await runTool(pingpongTool, [runId, String(plan.idcSamples), String(plan.idcWarmup)], runId);

    const m = machineFacts();
    const out: Omit<HostBenchJson, "targets"> = {
      host: "native",
      runId,
      quick: o.quick === true,
      machine: { cpu: m.cpu, cpus: m.cpus, kernel: m.kernel, node: m.node, load1: round(loadavg()[0] ?? 0, 2) },
      plan,
      dispatch,
      idc: path(tail(idc.samples.values()), tailOf(cp, "host-pingpong", plan.idcSamples)),
      decidedBy: { dispatch: replay.decidedBy, idc: idc.decidedBy },
      verdicts: { dispatch: replay.verdicts, idc: idc.verdicts },
      events: { posted: replay.eventsPosted, received: replay.eventsReceived },
      baselines: {
        dispatch: proof(cd, "bench/out/host-dispatch", runId),
        idc: proof(cp, "bench/out/host-pingpong", runId),
      },
      clockNs,
    };
    return { ...out, targets: hostTargets(out) };
  } finally {
    fx.release();
    rmSync(dir, { recursive: true, force: true });
  }
}

const f2 = (v: number) => round(v, 2).toFixed(2);
const f1 = (v: number) => `${round(v, 1).toFixed(1)}×`;

/** The results as markdown tables (docs/performance.md, "Host bench"). */
export function formatHostMarkdown(j: HostBenchJson): string {
  const row = (name: string, p: HostPath) =>
    `| ${name} | ${f2(p.p50Us)} | ${f2(p.p99Us)} | ${f2(p.p999Us)} | ${f2(p.baseline.p50Us)} | ${f2(p.baseline.p99Us)} | ${f2(p.baseline.p999Us)} | ${f1(p.ratioP50)} | ${f1(p.ratioP99)} |`;
  return [
    `Measured on: ${j.machine.cpu}, ${j.machine.cpus} CPUs (load ${j.machine.load1}), Linux ${j.machine.kernel}, Node ${j.machine.node}${j.quick ? " (--quick)" : ""}; run ${j.runId}.`,
    "",
    "| path | p50 µs | p99 µs | p99.9 µs | C p50 µs | C p99 µs | C p99.9 µs | p50 ratio | p99 ratio |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...DISPATCH_KINDS.map((k) => row(`dispatch ${k}`, j.dispatch[k])),
    row("IDC round trip", j.idc),
    "",
    "| target | limit | measured | |",
    "| --- | --- | ---: | --- |",
    ...j.targets.map(
      (t) =>
        `| ${t.name} | ${t.limit} | ${t.name.includes("/") ? f1(t.value) : `${f2(t.value)} µs`} | ${t.met ? "met" : "MISSED"} |`,
    ),
    "",
  ].join("\n");
}

/** The readable report. */
export function formatHostReport(j: HostBenchJson): string {
  const p = (x: HostPath) =>
    `p50 ${f2(x.p50Us)} µs  p99 ${f2(x.p99Us)} µs  p99.9 ${f2(x.p999Us)} µs   C: ${f2(x.baseline.p50Us)} / ${f2(x.baseline.p99Us)} / ${f2(x.baseline.p999Us)} µs   ratio ${f1(x.ratioP50)} / ${f1(x.ratioP99)}`;
  return [
    `Host bench (native, no KVM), run ${j.runId}`,
    `${j.machine.cpu}, ${j.machine.cpus} CPUs (load ${j.machine.load1}), Node ${j.machine.node}; clock floor ${j.clockNs} ns (C ${j.baselines.dispatch.clockNs} ns)`,
    "",
    "Dispatcher path (per exit; exception = capture + step), against bench/host_dispatch.c:",
    ...DISPATCH_KINDS.map((k) => `  ${k.padEnd(10)} ${p(j.dispatch[k])}`),
    `  decided by: ${JSON.stringify(j.decidedBy.dispatch)}; events posted ${j.events.posted}, received ${j.events.received}`,
    "",
    "IDC round trip (hm-vm decider, hosted engine), against bench/host_pingpong.c:",
    `  ${"round trip".padEnd(10)} ${p(j.idc)}`,
    `  decided by: ${JSON.stringify(j.decidedBy.idc)}`,
    "",
    "Targets:",
    ...j.targets.map(
      (t) =>
        `  ${t.met ? "met    " : "MISSED "} ${t.name} ${t.limit}: ${t.name.includes("/") ? f1(t.value) : `${f2(t.value)} µs`}`,
    ),
    "",
  ].join("\n");
}
