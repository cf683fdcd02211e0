/**
 * The whole `guardvisor bench` sequence driven through a simulated guest (no
 * KVM): what each run is asked to do, how the guest's cycles become
 * microseconds and rates, and that a run that is not a clean measurement
 * fails the bench.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { BaselineOptions, BaselineRun } from "../../src/bench/baseline.js";
import { buildBenchJson } from "../../src/bench/report.js";
import { type BenchDriver, QUICK_PLAN, runBench } from "../../src/bench/run.js";
import type { BenchHealth, GuestRunResult, GuestRunSpec } from "../../src/bench/session.js";
import { Samples } from "../../src/bench/stats.js";
import { GuardvisorError } from "../../src/errors.js";
import type { Kvm } from "../../src/kvm/kvm.js";

const TSC_KHZ = 3_000_000; // 3 GHz: 3000 cycles per microsecond
const PER_WRITE = { bare: 57_000, vmm: 63_000, "hm-vm": 72_000, cold: 240_000 };
const PER_UD = { bare: 900_000, vmm: 960_000, "hm-vm": 990_000 };
const BENIGN_ROUND = { bare: 30_000_000, gv: 30_150_000 };

function parse(cmdline: string): { scenario: string; args: Record<string, number> } {
  const words = Object.fromEntries(cmdline.split(" ").map((w) => w.split("=") as [string, string]));
  const { scenario, role, ...rest } = words;
  assert.equal(role, "guest");
  return { scenario: scenario!, args: Object.fromEntries(Object.entries(rest).map(([k, v]) => [k, Number(v)])) };
}

/** What the benchmark guest would print for these arguments at `perIter` cycles per write or ud2. */
function guest(cmdline: string, perIter: number, benignRound: number) {
  const { scenario, args } = parse(cmdline);
  if (scenario === "bench-benign") {
    const n = args.n!;
    return {
      serial: [
        `GV-RESULT scenario=bench-benign n=${n} cycles=${n * benignRound} tasks=${3 * n} syscalls=${12 * n} faulted=0`,
      ],
      events: 0,
    };
  }
  const warm = args.warm ?? 0;
  const count = args.dur ? Math.floor(args.dur / perIter) : args.n!;
  const cycles = count * (perIter + (args.gap ?? 0));
  const line = `GV-RESULT scenario=${scenario} n=${count} cycles=${cycles} p50=${perIter} p99=${perIter * 1.5} min=${perIter - 1000} max=${perIter * 3} faulted=0`;
  return { serial: ["gv-kernel: boot role=guest", line], events: warm + count };
}

interface Sim {
  driver: BenchDriver;
  calls: string[];
  stopped: number;
  started: number;
}

function simulation(
  tweak: { lostEvent?: boolean; restarts?: number; noTid?: boolean; fewExits?: boolean; gvTsc?: number } = {},
): Sim {
  const sim: Sim = { calls: [], stopped: 0, started: 0, driver: undefined as unknown as BenchDriver };
  let rss = 100;
  const health = (): BenchHealth => ({
    deciderFor: () => ({ kind: "vmm" }),
    installRules: () => {},
    reportFault: () => {},
    settled: async () => {},
    status: () => ({
      restarts: tweak.restarts ?? 0,
      generation: 1,
      requests: 0,
      failed: false,
      faults: tweak.restarts
        ? [{ reason: "hang", detail: "busy", generation: 1, resent: 0, timeMs: 0, downMs: 1 }]
        : [],
    }),
    stop: async () => {
      sim.stopped++;
    },
  });
  sim.driver = {
    openKvm: () => ({ close: () => sim.calls.push("close") }) as unknown as Kvm,
    async baseline(o: BaselineOptions): Promise<BaselineRun> {
      sim.calls.push(`bare ${o.cmdline}${o.breakAt ? ` break=${o.breakAt}` : ""}`);
      const per = o.breakAt ? PER_UD.bare : PER_WRITE.bare;
      const g = guest(o.cmdline, per, BENIGN_ROUND.bare);
      const exits = tweak.fewExits ? 0 : g.events;
      return {
        serial: g.serial,
        host: { exits, p50Us: 18, p99Us: 25, wallUs: 1000, exitCode: 0, tscKhz: TSC_KHZ, totalExits: exits + 10 },
      };
    },
    async guardvisor(spec: GuestRunSpec): Promise<GuestRunResult[]> {
      sim.calls.push(`gv ${spec.decider} x${spec.guests} ${spec.cmdline}`);
      assert.equal(spec.decider === "hm-vm", spec.health !== undefined);
      const { scenario, args } = parse(spec.cmdline);
      const d = spec.decider;
      const per =
        scenario === "bench-ud" ? PER_UD[d] : args.gap ? PER_WRITE.cold : PER_WRITE[d] + (spec.guests - 1) * 3000;
      spec.onBuilt?.();
      rss = spec.guests === 8 ? 124 : rss;
      spec.onSample?.();
      return Array.from({ length: spec.guests }, (_, g) => {
        const r = guest(spec.cmdline, per + g * 300, BENIGN_ROUND.gv);
        const latencies = new Samples();
        const n = r.events - (tweak.lostEvent ? 1 : 0);
        for (let i = 0; i < n; i++) latencies.push(d === "vmm" ? 2 + (i % 3) : 6 + (i % 5));
        return { serial: r.serial, latencies, tscKhz: tweak.gvTsc ?? TSC_KHZ };
      });
    },
    async startHealthVm(_kvm, _kernel, _name, nguests) {
      sim.calls.push(`hm ${nguests}`);
      sim.started++;
      return { hm: health(), vcpuTid: tweak.noTid ? undefined : 4242, tidProblem: "2 threads started" };
    },
    async threadCpuPercent(tid, ms) {
      sim.calls.push(`idle ${tid} ${ms}`);
      return 0.37;
    },
    rssMiB: () => rss,
  };
  return sim;
}

const isFault = (pattern: RegExp) => (e: unknown) =>
  e instanceof GuardvisorError && e.code === "GUEST_FAULT" && pattern.test(e.message);

describe("bench sequence (simulated guest)", () => {
  it("runs every step once, in order, with the plan's arguments", async () => {
    const sim = simulation();
    const lines: string[] = [];
    await runBench({ quick: true, driver: sim.driver, onProgress: (l) => lines.push(l) });
    const p = QUICK_PLAN;
    const dur = p.stormSec * 1000 * TSC_KHZ;
    const gap = p.coldGapMs * TSC_KHZ;
    const w = `n=${p.writes} warm=${p.warm}`;
    const ud = `scenario=bench-ud role=guest n=${p.udCount} warm=${p.udWarm}`;
    const benign = `scenario=bench-benign role=guest n=${p.benignRounds}`;
    const write = (d: string, n = 1, a = w) => `gv ${d} x${n} scenario=bench-write role=guest ${a}`;
    const calls = sim.calls.map((c) => c.replace(/ break=\d+/, " break"));
    assert.deepEqual(calls, [
      `bare scenario=bench-write role=guest ${w}`,
      `bare scenario=bench-write role=guest warm=${p.warm} dur=${dur}`,
      `bare ${ud} break`,
      ...Array(p.benignReps).fill(`bare ${benign}`),
      write("vmm"),
      write("vmm", 1, `warm=${p.warm} dur=${dur}`),
      `gv vmm x1 ${ud}`,
      "hm 1",
      write("hm-vm"),
      write("hm-vm", 1, `n=${p.coldWrites} warm=100 gap=${gap}`),
      write("hm-vm", 1, `warm=${p.warm} dur=${dur}`),
      `gv hm-vm x1 ${ud}`,
      ...Array(p.benignReps).fill(`gv hm-vm x1 ${benign}`),
      `idle 4242 ${p.idleMs}`,
      "hm 8",
      ...[1, 2, 4, 8].map((n) => write("hm-vm", n, `n=${p.guestWrites} warm=${p.guestWarm}`)),
      "close",
    ]);
    assert.equal(sim.stopped, 2);
    assert.ok(sim.calls.some((c) => / break=\d+$/.test(c) && BigInt(c.split("break=")[1]!) >= 0x100000n));
    assert.ok(lines.length >= 10 && lines.every((l) => !l.includes("\n")));
  });

  it("turns guest cycles into microseconds, rates and ratios", async () => {
    const m = await runBench({ quick: true, driver: simulation().driver });
    const us = (c: number) => c / 3000;
    assert.deepEqual(m.bareExit, { p50: us(PER_WRITE.bare), p99: us(PER_WRITE.bare * 1.5) });
    assert.deepEqual(m.bareHostExit, { p50: 18, p99: 25 });
    assert.equal(m.verdict.vmm.p50, us(PER_WRITE.vmm));
    assert.equal(m.verdict["hm-vm"].p50, us(PER_WRITE["hm-vm"]));
    assert.equal(m.verdict["hm-vm-cold"].p50, us(PER_WRITE.cold));
    assert.deepEqual(m.decide.vmm, { p50: 3, p99: 4 }); // the measured events' latencies, warm-up left out
    assert.equal(m.exception.bare.p50, us(PER_UD.bare));
    assert.equal(m.exception["hm-vm"].p50, us(PER_UD["hm-vm"]));
    const stormCount = Math.floor((QUICK_PLAN.stormSec * 1000 * TSC_KHZ) / PER_WRITE.bare);
    assert.equal(m.storm.bare, stormCount / ((stormCount * PER_WRITE.bare) / (TSC_KHZ * 1000)));
    assert.ok(Math.abs(m.storm.bare - 3e9 / PER_WRITE.bare) < 1e-6);
    assert.ok(m.storm.vmm < m.storm.bare && m.storm["hm-vm"] < m.storm.vmm);
    assert.equal(m.benignMs.bare, (QUICK_PLAN.benignRounds * BENIGN_ROUND.bare) / TSC_KHZ);
    assert.deepEqual(
      m.guests.map((g) => [g.n, g.perGuest.length]),
      [
        [1, 1],
        [2, 2],
        [4, 4],
        [8, 8],
      ],
    );
    assert.equal(m.guests[3]!.perGuest[7]!.p50, us(PER_WRITE["hm-vm"] + 7 * 3000 + 7 * 300));
    assert.deepEqual(m.rss, { baseMiB: 100, perGuestMiB: 3 });
    assert.equal(m.idleHmCpuPct, 0.37);
    assert.equal(m.tscKhz, TSC_KHZ);
    assert.equal(m.quick, true);
    const j = buildBenchJson(m);
    assert.equal(j.ratio.vmm, Math.round((PER_WRITE.vmm / PER_WRITE.bare) * 1000) / 1000);
    assert.equal(j.benignOverheadPct, 0.5);
  });

  const failures: [string, Parameters<typeof simulation>[0], RegExp][] = [
    ["a lost event", { lostEvent: true }, /events for .* protected writes/],
    ["a health-VM restart", { restarts: 1 }, /health VM restarted during the measurement \(hang: busy\)/],
    ["an unknown vCPU thread", { noTid: true }, /idle health-VM CPU cannot be measured: 2 threads started/],
    ["writes that did not exit", { fewExits: true }, /0 exits for .*: the target is not protected/],
    ["another TSC rate", { gvTsc: 2_000_000 }, /TSC runs at 2000000 kHz, the baseline's at 3000000 kHz/],
  ];
  for (const [what, tweak, pattern] of failures) {
    it(`fails on ${what}, and stops every health VM it started`, async () => {
      const sim = simulation(tweak);
      await assert.rejects(runBench({ quick: true, driver: sim.driver }), isFault(pattern));
      assert.equal(sim.stopped, sim.started);
      assert.equal(sim.calls.at(-1), "close");
    });
  }
});
