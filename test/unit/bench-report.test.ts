import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type BenchMeasurements,
  buildBenchJson,
  checkTargets,
  formatBenchMarkdown,
  formatBenchReport,
} from "../../src/bench/report.js";
import { GuardvisorError } from "../../src/errors.js";

function measurements(): BenchMeasurements {
  const p = (p50: number, p99: number) => ({ p50, p99 });
  return {
    quick: true,
    hmTimeoutMs: 100,
    tscKhz: 2_995_123,
    bareExit: p(20, 30),
    bareHostExit: p(18.5, 25),
    verdict: { vmm: p(21, 33), "hm-vm": p(25, 55), "hm-vm-cold": p(80, 120) },
    decide: { vmm: p(2, 4), "hm-vm": p(6, 20), "hm-vm-cold": p(60, 100) },
    exception: { bare: p(300, 400), vmm: p(320, 420), "hm-vm": p(330, 450) },
    storm: { bare: 50_000.4, vmm: 45_000, "hm-vm": 41_000 },
    benignMs: { bare: 800, guardvisor: 804 },
    guests: [
      { n: 1, perGuest: [p(25, 50)] },
      { n: 2, perGuest: [p(26, 52), p(27, 51)] },
      { n: 4, perGuest: [p(30, 60), p(31, 58), p(29, 70), p(30, 61)] },
      { n: 8, perGuest: Array.from({ length: 8 }, (_, i) => p(40 + i, 80 + i)) },
    ],
    rss: { baseMiB: 81.234, perGuestMiB: 2.345 },
    idleHmCpuPct: 0.4321,
    machine: {
      cpu: "Test CPU @ 3.0GHz",
      cpus: 8,
      memGiB: 32,
      kernel: "6.1.0-test",
      kvmModule: "kvm_intel",
      node: "v20.0.0",
      host: "native",
      emulated: false,
    },
  };
}

const KEYS = [
  "bareExitUs",
  "verdictUs",
  "ratio",
  "stormPerSec",
  "benignOverheadPct",
  "guests",
  "rssMiB",
  "exceptionUs",
  "decideUs",
  "bareHostExitUs",
  "benignMs",
  "idleHmCpuPct",
  "tscKhz",
  "quick",
  "hmTimeoutMs",
  "machine",
];

describe("bench JSON", () => {
  it("has every field of the issue's shape, the issue's fields first", () => {
    const j = buildBenchJson(measurements());
    assert.deepEqual(Object.keys(j), KEYS);
    assert.deepEqual(j.bareExitUs, { p50: 20, p99: 30 });
    assert.deepEqual(Object.keys(j.verdictUs), ["vmm", "hm-vm", "hm-vm-cold"]);
    assert.deepEqual(j.verdictUs["hm-vm-cold"], { p50: 80, p99: 120 });
    assert.deepEqual(Object.keys(j.ratio), ["vmm", "hm-vm"]);
    assert.deepEqual(j.stormPerSec, { bare: 50_000, vmm: 45_000, "hm-vm": 41_000 });
    assert.deepEqual(j.rssMiB, { base: 81.2, perGuest: 2.35 });
    assert.equal(j.tscKhz, 2_995_123);
    assert.equal(j.quick, true);
    // Round-trips through JSON with nothing lost or null.
    const text = JSON.stringify(j);
    assert.ok(!text.includes("null"));
    assert.deepEqual(JSON.parse(text), j);
  });

  it("ratio.X = verdictUs.X.p50 / bareExitUs.p50", () => {
    const j = buildBenchJson(measurements());
    assert.equal(j.ratio.vmm, 1.05);
    assert.equal(j.ratio["hm-vm"], 1.25);
  });

  it("benign overhead is the Guardvisor wall time over the baseline's, in percent", () => {
    assert.equal(buildBenchJson(measurements()).benignOverheadPct, 0.5);
    const m = measurements();
    m.benignMs.guardvisor = 790;
    assert.equal(buildBenchJson(m).benignOverheadPct, -1.25);
  });

  it("guests: 1, 2, 4, 8, each with the worst guest's p50 and p99", () => {
    const j = buildBenchJson(measurements());
    assert.deepEqual(j.guests, [
      { n: 1, p50: 25, p99: 50 },
      { n: 2, p50: 27, p99: 52 },
      { n: 4, p50: 31, p99: 70 },
      { n: 8, p50: 47, p99: 87 },
    ]);
  });

  it("fails instead of printing null when anything was not measured", () => {
    const broken: [string, (m: BenchMeasurements) => void][] = [
      ["verdictUs.hm-vm-cold", (m) => delete (m.verdict as Partial<BenchMeasurements["verdict"]>)["hm-vm-cold"]],
      ["stormPerSec.vmm", (m) => (m.storm.vmm = Number.NaN)],
      ["bareExitUs.p50", (m) => (m.bareExit.p50 = 0)],
      ["idleHmCpuPct", (m) => (m.idleHmCpuPct = undefined as unknown as number)],
      ["rssMiB.base", (m) => (m.rss.baseMiB = Number.POSITIVE_INFINITY)],
      ["benignMs.bare", (m) => (m.benignMs.bare = -1)],
      ["guests were measured for [1,2,4]", (m) => m.guests.pop()],
      ["guests[n=2] has 1 guests", (m) => m.guests[1]!.perGuest.pop()],
      ["exceptionUs.bare", (m) => (m.exception.bare = undefined as unknown as { p50: number; p99: number })],
      ["decideUs.vmm.p99", (m) => (m.decide.vmm.p99 = Number.NaN)],
      ["machine", (m) => (m.machine = undefined as unknown as BenchMeasurements["machine"])],
    ];
    for (const [what, breakIt] of broken) {
      const m = measurements();
      breakIt(m);
      assert.throws(
        () => buildBenchJson(m),
        (e: unknown) => e instanceof GuardvisorError && e.code === "GUEST_FAULT" && e.message.includes(what),
        what,
      );
    }
  });

  it("checks the issue's targets", () => {
    const j = buildBenchJson(measurements());
    const t = Object.fromEntries(checkTargets(j).map((c) => [c.target, c.ok]));
    assert.deepEqual(t, {
      "hm-vm verdict p50 <= 1.3x bare exit p50": true, // 25 / 20
      "hm-vm verdict p99 <= 2x bare exit p99": true, // 55 / 30
      "vmm verdict p50 <= 1.1x bare exit p50": true, // 21 / 20
      "8 guests on one health VM: p99 <= 3x bare exit p99": true, // 87 / 30
      "storm (hm-vm) >= 80% of bare exits/s": true, // 82%
      "benign overhead <= 1%": true,
      "idle health VM < 2% of a core": true,
    });
    const m = measurements();
    m.verdict["hm-vm"].p50 = 26.1;
    m.storm["hm-vm"] = 39_000;
    m.idleHmCpuPct = 2;
    const missed = checkTargets(buildBenchJson(m)).filter((c) => !c.ok);
    assert.deepEqual(
      missed.map((c) => c.target),
      [
        "hm-vm verdict p50 <= 1.3x bare exit p50",
        "storm (hm-vm) >= 80% of bare exits/s",
        "idle health VM < 2% of a core",
      ],
    );
  });

  it("prints a readable report with ratios and targets", () => {
    const text = formatBenchReport(buildBenchJson(measurements()));
    assert.match(text, /bare exit \(baseline VMM\)\s+20\.00\s+30\.00\s+1\.00\s+1\.00/);
    assert.match(text, /verdict, hm-vm \(busy\)\s+25\.00\s+55\.00\s+1\.25\s+1\.83\s+6\.00/);
    assert.match(text, /verdict, hm-vm after 100 ms idle\s+80\.00/);
    assert.match(text, /storm \(writes\/s\): bare 50,000, vmm 45,000 \(90%\), hm-vm 41,000 \(82%\)/);
    assert.match(text, /overhead 0\.5%/);
    assert.match(text, /8 \(worst guest\)\s+47\.00\s+87\.00\s+2\.90/);
    assert.match(text, / {2}met +idle health VM < 2% of a core: 0\.43%/);
    assert.ok(text.endsWith("\n"));
  });

  it("prints the results tables of docs/performance.md, filled in", () => {
    const m = measurements();
    m.storm["hm-vm"] = 39_000; // a missed target shows as **no**
    const md = formatBenchMarkdown(buildBenchJson(m), new Date("2026-01-02T03:04:05Z"));
    const lines = md.trimEnd().split("\n");
    assert.match(
      lines[0]!,
      /^Measured on Test CPU @ 3\.0GHz, 8 CPUs, 32 GiB, Linux 6\.1\.0-test, kvm_intel, Node v20\.0\.0, 2026-01-02, with `guardvisor bench --quick`/,
    );
    assert.ok(lines.includes("| bare KVM exit (baseline VMM) | 20.00 | 30.00 | 1.00 | 1.00 | the floor | – |"));
    // A deadline other than the default is part of the command that was run.
    const slow = formatBenchMarkdown(buildBenchJson({ ...m, hmTimeoutMs: 2000 }), new Date("2026-01-02T03:04:05Z"));
    assert.match(slow, /with `guardvisor bench --quick --hm-timeout 2000`/);
    assert.ok(lines.includes("| verdict, `vmm` decider | 21.00 | 33.00 | 1.05 | 1.10 | p50 ≤ 1.1× | yes |"));
    assert.ok(lines.includes("| verdict, `hm-vm`, busy | 25.00 | 55.00 | 1.25 | 1.83 | p50 ≤ 1.3×, p99 ≤ 2× | yes |"));
    assert.ok(
      lines.includes("| 8 guests on one health VM (worst guest) | 47.00 | 87.00 | 2.35 | 2.90 | p99 ≤ 3× | yes |"),
    );
    assert.ok(lines.includes("| #UD from ring 3, `hm-vm` decider | 330.00 | 450.00 | 1.10 | 1.13 | – | – |"));
    assert.ok(lines.includes("| storm, `hm-vm`, writes/s | 39,000 (78% of bare) | ≥ 80% of bare | **no** |"));
    assert.ok(lines.includes("| benign workload under Guardvisor vs bare | 0.5% (804.00 vs 800.00 ms) | ≤ 1% | yes |"));
    // Every table row has the same number of cells as its header.
    let cells = 0;
    for (const l of lines.filter((x) => x.startsWith("|"))) {
      const n = l.split(" | ").length;
      if (l.startsWith("| latency") || l.startsWith("| throughput")) cells = n;
      else assert.equal(n, cells, l);
    }
  });
});
