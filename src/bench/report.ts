/**
 * The benchmark result: the JSON object `guardvisor bench --json` prints
 * (docs/performance.md), built from the measurements with every field
 * checked, the readable table, and the targets from the benchmark issue.
 */
import { GuardvisorError } from "../errors.js";
import { HM_DEFAULTS } from "../health/health-manager.js";
import type { MachineFacts } from "./machine.js";
import { type Pcts, round } from "./stats.js";

export type VerdictPath = "vmm" | "hm-vm" | "hm-vm-cold";
export type Vmm = "bare" | "vmm" | "hm-vm";

/** Everything one `guardvisor bench` run measured (microseconds unless named otherwise). */
export interface BenchMeasurements {
  quick: boolean;
  /** The health VM's answer deadline the run used, ms. */
  hmTimeoutMs: number;
  /** Guest TSC rate the guest-measured cycles are converted with. */
  tscKhz: number;
  /** One protected write, measured in the guest, under the baseline VMM. */
  bareExit: Pcts;
  /** The same exits timed by the baseline itself (KVM_RUN round trip, host clock). */
  bareHostExit: Pcts;
  /** One protected write, measured in the guest, under Guardvisor. */
  verdict: Record<VerdictPath, Pcts>;
  /** Guardvisor's share of it: exit to verdict applied, on the vCPU thread (event latencyUs). */
  decide: Record<VerdictPath, Pcts>;
  /** One ud2 from ring 3 (exception entry breakpoint, step over, guest handler), measured in the guest. */
  exception: Record<Vmm, Pcts>;
  /** Protected writes per second, sustained (guest-measured). */
  storm: Record<Vmm, number>;
  /** Benign workload wall time (guest TSC), median of the repetitions, milliseconds. */
  benignMs: { bare: number; guardvisor: number };
  /** Guests sharing one health VM: each guest's write latency. */
  guests: { n: number; perGuest: Pcts[] }[];
  rss: { baseMiB: number; perGuestMiB: number };
  /** CPU the idle health VM's vCPU thread used, percent of one core. */
  idleHmCpuPct: number;
  machine: MachineFacts;
}

/** `guardvisor bench --json`: the fields first, then the additions (docs/performance.md). */
export interface BenchJson {
  bareExitUs: Pcts;
  verdictUs: Record<VerdictPath, Pcts>;
  ratio: { vmm: number; "hm-vm": number };
  stormPerSec: Record<Vmm, number>;
  benignOverheadPct: number;
  guests: { n: number; p50: number; p99: number }[];
  rssMiB: { base: number; perGuest: number };
  exceptionUs: Record<Vmm, Pcts>;
  decideUs: Record<VerdictPath, Pcts>;
  bareHostExitUs: Pcts;
  benignMs: { bare: number; guardvisor: number };
  idleHmCpuPct: number;
  tscKhz: number;
  quick: boolean;
  hmTimeoutMs: number;
  machine: MachineFacts;
}

export const GUEST_COUNTS = [1, 2, 4, 8] as const;

function need(v: unknown, path: string, positive = false): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || (positive && v === 0)) {
    throw new GuardvisorError("GUEST_FAULT", `bench: ${path} was not measured (${String(v)})`);
  }
  return v;
}

function us(p: Pcts | undefined, path: string): Pcts {
  return { p50: round(need(p?.p50, `${path}.p50`, true), 2), p99: round(need(p?.p99, `${path}.p99`, true), 2) };
}

function usPaths<K extends string>(rec: Record<K, Pcts> | undefined, keys: readonly K[], path: string) {
  return Object.fromEntries(keys.map((k) => [k, us(rec?.[k], `${path}.${k}`)])) as Record<K, Pcts>;
}

const VERDICT_PATHS = ["vmm", "hm-vm", "hm-vm-cold"] as const;
const VMMS = ["bare", "vmm", "hm-vm"] as const;

/** The JSON object; throws if any measurement is missing or not a number. */
export function buildBenchJson(m: BenchMeasurements): BenchJson {
  const bareExitUs = us(m.bareExit, "bareExitUs");
  const verdictUs = usPaths(m.verdict, VERDICT_PATHS, "verdictUs");
  const storm = Object.fromEntries(
    VMMS.map((k) => [k, Math.round(need(m.storm?.[k], `stormPerSec.${k}`, true))]),
  ) as Record<Vmm, number>;
  const benignBare = need(m.benignMs?.bare, "benignMs.bare", true);
  const benignGv = need(m.benignMs?.guardvisor, "benignMs.guardvisor", true);
  const counts = (m.guests ?? []).map((g) => g.n);
  if (counts.join() !== GUEST_COUNTS.join()) {
    throw new GuardvisorError("GUEST_FAULT", `bench: guests were measured for [${counts}], not [${GUEST_COUNTS}]`);
  }
  const guests = m.guests.map((g) => {
    if (g.perGuest.length !== g.n) {
      throw new GuardvisorError("GUEST_FAULT", `bench: guests[n=${g.n}] has ${g.perGuest.length} guests measured`);
    }
    const each = g.perGuest.map((p, i) => us(p, `guests[n=${g.n}][${i}]`));
    // The worst guest: the highest p50 and the highest p99 among the n guests.
    return { n: g.n, p50: Math.max(...each.map((p) => p.p50)), p99: Math.max(...each.map((p) => p.p99)) };
  });
  return {
    bareExitUs,
    verdictUs,
    ratio: {
      vmm: round(verdictUs.vmm.p50 / bareExitUs.p50, 3),
      "hm-vm": round(verdictUs["hm-vm"].p50 / bareExitUs.p50, 3),
    },
    stormPerSec: storm,
    benignOverheadPct: round(((benignGv - benignBare) / benignBare) * 100, 2),
    guests,
    rssMiB: {
      base: round(need(m.rss?.baseMiB, "rssMiB.base", true), 1),
      perGuest: round(need(m.rss?.perGuestMiB, "rssMiB.perGuest"), 2),
    },
    exceptionUs: usPaths(m.exception, VMMS, "exceptionUs"),
    decideUs: usPaths(m.decide, VERDICT_PATHS, "decideUs"),
    bareHostExitUs: us(m.bareHostExit, "bareHostExitUs"),
    benignMs: { bare: round(benignBare, 2), guardvisor: round(benignGv, 2) },
    idleHmCpuPct: round(need(m.idleHmCpuPct, "idleHmCpuPct"), 2),
    tscKhz: Math.round(need(m.tscKhz, "tscKhz", true)),
    quick: m.quick === true,
    hmTimeoutMs: need(m.hmTimeoutMs, "hmTimeoutMs", true),
    machine: machine(m.machine),
  };
}

function machine(f: MachineFacts | undefined): MachineFacts {
  if (!f || typeof f.cpu !== "string" || typeof f.kernel !== "string" || typeof f.kvmModule !== "string") {
    throw new GuardvisorError("GUEST_FAULT", "bench: the machine was not described");
  }
  return {
    cpu: f.cpu,
    cpus: need(f.cpus, "machine.cpus", true),
    memGiB: need(f.memGiB, "machine.memGiB"),
    kernel: f.kernel,
    kvmModule: f.kvmModule,
    node: String(f.node),
    host: f.host === "lab" || f.host === "pvm" ? f.host : "native",
    emulated: f.host === "lab" || f.host === "pvm",
  };
}

export type TargetId = "hm-vm-p50" | "hm-vm-p99" | "vmm-p50" | "guests8-p99" | "storm" | "benign" | "idle";

export interface TargetCheck {
  id: TargetId;
  target: string;
  measured: string;
  ok: boolean;
}

const x = (v: number) => `${round(v, 2)}x`;

/** The targets of the benchmark issue, checked against a result (p50 against the bare p50, p99 against the bare p99). */
export function checkTargets(j: BenchJson): TargetCheck[] {
  const bare = j.bareExitUs;
  const hm = j.verdictUs["hm-vm"];
  const eight = j.guests.find((g) => g.n === 8);
  const ratios: [TargetId, string, number, number][] = [
    ["hm-vm-p50", "hm-vm verdict p50 <= 1.3x bare exit p50", hm.p50 / bare.p50, 1.3],
    ["hm-vm-p99", "hm-vm verdict p99 <= 2x bare exit p99", hm.p99 / bare.p99, 2],
    ["vmm-p50", "vmm verdict p50 <= 1.1x bare exit p50", j.verdictUs.vmm.p50 / bare.p50, 1.1],
    ["guests8-p99", "8 guests on one health VM: p99 <= 3x bare exit p99", (eight?.p99 ?? Number.NaN) / bare.p99, 3],
  ];
  const out: TargetCheck[] = ratios.map(([id, target, v, limit]) => ({ id, target, measured: x(v), ok: v <= limit }));
  const storm = j.stormPerSec["hm-vm"] / j.stormPerSec.bare;
  out.push({
    id: "storm",
    target: "storm (hm-vm) >= 80% of bare exits/s",
    measured: `${round(storm * 100, 1)}%`,
    ok: storm >= 0.8,
  });
  out.push({
    id: "benign",
    target: "benign overhead <= 1%",
    measured: `${j.benignOverheadPct}%`,
    ok: j.benignOverheadPct <= 1,
  });
  out.push({
    id: "idle",
    target: "idle health VM < 2% of a core",
    measured: `${j.idleHmCpuPct}%`,
    ok: j.idleHmCpuPct < 2,
  });
  return out;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  return rows
    .map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  "))
    .join("\n");
}

const f2 = (v: number) => v.toFixed(2);
const per = (v: number) => Math.round(v).toLocaleString("en-US");

/** The flags that shaped the run, as typed: " --quick --hm-timeout 500". */
function benchFlags(j: BenchJson): string {
  const hm = j.hmTimeoutMs === HM_DEFAULTS.timeoutMs ? "" : ` --hm-timeout ${j.hmTimeoutMs}`;
  return `${j.quick ? " --quick" : ""}${hm}`;
}

/** The readable report. */
export function formatBenchReport(j: BenchJson): string {
  const bare = j.bareExitUs;
  const ratio = (p: Pcts) => [f2(p.p50 / bare.p50), f2(p.p99 / bare.p99)];
  const lines: string[] = [];
  lines.push(
    `Guardvisor bench${benchFlags(j)}: one protected write or ud2, timed in the guest (TSC ${round(j.tscKhz / 1000, 1)} MHz)`,
    ...(j.machine.emulated
      ? [`EMULATED (host: ${j.machine.host}): read the ratios only; absolute times say nothing about a KVM host`]
      : []),
    "",
  );
  lines.push(
    table([
      ["path", "p50 us", "p99 us", "p50 x bare", "p99 x bare", "VMM share p50 us"],
      ["bare exit (baseline VMM)", f2(bare.p50), f2(bare.p99), "1.00", "1.00", "-"],
      [
        "verdict, vmm decider",
        f2(j.verdictUs.vmm.p50),
        f2(j.verdictUs.vmm.p99),
        ...ratio(j.verdictUs.vmm),
        f2(j.decideUs.vmm.p50),
      ],
      [
        "verdict, hm-vm (busy)",
        f2(j.verdictUs["hm-vm"].p50),
        f2(j.verdictUs["hm-vm"].p99),
        ...ratio(j.verdictUs["hm-vm"]),
        f2(j.decideUs["hm-vm"].p50),
      ],
      [
        "verdict, hm-vm after 100 ms idle",
        f2(j.verdictUs["hm-vm-cold"].p50),
        f2(j.verdictUs["hm-vm-cold"].p99),
        ...ratio(j.verdictUs["hm-vm-cold"]),
        f2(j.decideUs["hm-vm-cold"].p50),
      ],
    ]),
  );
  lines.push(
    `(bare exit as the baseline VMM times it, KVM_RUN round trip: p50 ${f2(j.bareHostExitUs.p50)} us, p99 ${f2(j.bareHostExitUs.p99)} us)`,
    "",
  );
  const ex = j.exceptionUs;
  lines.push(
    table([
      ["#UD from ring 3", "p50 us", "p99 us", "p50 x bare"],
      ["bare (breakpoint, step over)", f2(ex.bare.p50), f2(ex.bare.p99), "1.00"],
      ["vmm decider", f2(ex.vmm.p50), f2(ex.vmm.p99), f2(ex.vmm.p50 / ex.bare.p50)],
      ["hm-vm decider", f2(ex["hm-vm"].p50), f2(ex["hm-vm"].p99), f2(ex["hm-vm"].p50 / ex.bare.p50)],
    ]),
    "",
  );
  const s = j.stormPerSec;
  lines.push(
    `storm (writes/s): bare ${per(s.bare)}, vmm ${per(s.vmm)} (${round((s.vmm / s.bare) * 100, 1)}%), ` +
      `hm-vm ${per(s["hm-vm"])} (${round((s["hm-vm"] / s.bare) * 100, 1)}%)`,
    `benign workload: bare ${f2(j.benignMs.bare)} ms, Guardvisor ${f2(j.benignMs.guardvisor)} ms: overhead ${j.benignOverheadPct}%`,
    `idle health VM: ${j.idleHmCpuPct}% of a core`,
    `host RSS: ${j.rssMiB.base} MiB with the health VM, +${j.rssMiB.perGuest} MiB per guest`,
    "",
  );
  lines.push(
    table([
      ["guests on one health VM", "p50 us", "p99 us", "p99 x bare"],
      ...j.guests.map((g) => [`${g.n} (worst guest)`, f2(g.p50), f2(g.p99), f2(g.p99 / bare.p99)]),
    ]),
    "",
  );
  lines.push("targets:");
  for (const t of checkTargets(j)) lines.push(`  ${t.ok ? "met   " : "MISSED"}  ${t.target}: ${t.measured}`);
  return `${lines.join("\n")}\n`;
}

/**
 * The results tables of docs/performance.md, filled in: `guardvisor bench
 * --markdown` prints them to replace the empty ones there.
 */
export function formatBenchMarkdown(j: BenchJson, date = new Date()): string {
  const t = new Map(checkTargets(j).map((c) => [c.id, c]));
  const met = (...ids: TargetId[]) => (ids.every((id) => t.get(id)?.ok) ? "yes" : "**no**");
  const bare = j.bareExitUs;
  const row = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
  const lat = (name: string, p: Pcts, target: string, ok: string, base = bare) =>
    row([name, f2(p.p50), f2(p.p99), f2(p.p50 / base.p50), f2(p.p99 / base.p99), target, ok]);
  const m = j.machine;
  const s = j.stormPerSec;
  const pct = (v: number) => `${round((v / s.bare) * 100, 1)}% of bare`;
  const lines = [
    ...(m.emulated
      ? [
          `**Emulated (${m.host === "lab" ? "the lab: KVM inside QEMU TCG" : "PVM: KVM without hardware virtualisation"}): ratios only; absolute times say nothing about a KVM host.**`,
          "",
        ]
      : []),
    `Measured on ${m.cpu}, ${m.cpus} CPUs, ${m.memGiB} GiB, Linux ${m.kernel}, ${m.kvmModule}, Node ${m.node}, ` +
      `${date.toISOString().slice(0, 10)}, with \`guardvisor bench${benchFlags(j)}\` ` +
      `(guest TSC ${round(j.tscKhz / 1000, 1)} MHz).`,
    "",
    row(["latency, µs (timed in the guest)", "p50", "p99", "p50 × bare", "p99 × bare", "target", "met"]),
    row(["---", "---:", "---:", "---:", "---:", "---", "---"]),
    lat("bare KVM exit (baseline VMM)", bare, "the floor", "–"),
    lat("verdict, `vmm` decider", j.verdictUs.vmm, "p50 ≤ 1.1×", met("vmm-p50")),
    lat("verdict, `hm-vm`, busy", j.verdictUs["hm-vm"], "p50 ≤ 1.3×, p99 ≤ 2×", met("hm-vm-p50", "hm-vm-p99")),
    lat("verdict, `hm-vm`, after 100 ms idle", j.verdictUs["hm-vm-cold"], "–", "–"),
    ...j.guests.map((g) =>
      lat(
        `${g.n} guest${g.n > 1 ? "s" : ""} on one health VM (worst guest)`,
        g,
        g.n === 8 ? "p99 ≤ 3×" : "–",
        g.n === 8 ? met("guests8-p99") : "–",
      ),
    ),
    lat("#UD from ring 3, bare (breakpoint, step over)", j.exceptionUs.bare, "–", "–", j.exceptionUs.bare),
    lat("#UD from ring 3, `vmm` decider", j.exceptionUs.vmm, "–", "–", j.exceptionUs.bare),
    lat("#UD from ring 3, `hm-vm` decider", j.exceptionUs["hm-vm"], "–", "–", j.exceptionUs.bare),
    "",
    row(["throughput and cost", "measured", "target", "met"]),
    row(["---", "---:", "---", "---"]),
    row(["storm, bare, writes/s", per(s.bare), "–", "–"]),
    row(["storm, `vmm`, writes/s", `${per(s.vmm)} (${pct(s.vmm)})`, "–", "–"]),
    row(["storm, `hm-vm`, writes/s", `${per(s["hm-vm"])} (${pct(s["hm-vm"])})`, "≥ 80% of bare", met("storm")]),
    row([
      "benign workload under Guardvisor vs bare",
      `${j.benignOverheadPct}% (${f2(j.benignMs.guardvisor)} vs ${f2(j.benignMs.bare)} ms)`,
      "≤ 1%",
      met("benign"),
    ]),
    row(["idle health VM, % of a core", `${j.idleHmCpuPct}%`, "< 2%", met("idle")]),
    row(["host RSS with the health VM, MiB", j.rssMiB.base, "–", "–"]),
    row(["host RSS per guest, MiB", j.rssMiB.perGuest, "–", "–"]),
    row([
      "Guardvisor's share of a verdict (exit to verdict applied), p50 µs",
      `vmm ${f2(j.decideUs.vmm.p50)}, hm-vm ${f2(j.decideUs["hm-vm"].p50)}, cold ${f2(j.decideUs["hm-vm-cold"].p50)}`,
      "–",
      "–",
    ]),
  ];
  return `${lines.join("\n")}\n`;
}
