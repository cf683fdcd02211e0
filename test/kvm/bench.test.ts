/**
 * The benchmarks on real KVM: the baseline boots the benchmark guest, each
 * scenario runs under Guardvisor, and `guardvisor bench --json --quick`
 * prints every field of its JSON object within a minute.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { runBaseline } from "../../src/bench/baseline.js";
import { benchCmdline, benignResult, timedResult } from "../../src/bench/guest-result.js";
import type { BenchJson } from "../../src/bench/report.js";
import { benchKernelInfo, openKvm } from "../../src/bench/run.js";
import { runGuardvisor } from "../../src/bench/session.js";
import { packageRoot } from "../../src/kvm/native.js";
import { scaled } from "../../src/time-scale.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

const GV_KERNEL = join(packageRoot(), "guest", "out", "gv-kernel.elf");

describe("benchmarks on KVM", { skip: skipWithoutKvm }, () => {
  it("the baseline runs bench-write: one exit per write, the guest's numbers on serial", async () => {
    const r = await runBaseline({
      kernelPath: GV_KERNEL,
      cmdline: benchCmdline("bench-write", { n: 200, warm: 10 }),
      memMiB: 32,
      timeoutSec: scaled(60_000) / 1000,
    });
    const res = timedResult(r.serial, "bench-write", "baseline");
    assert.equal(res.n, 200);
    assert.ok(res.p50 > 0 && res.p50 <= res.p99 && res.p99 <= res.max);
    assert.ok(r.host.exits >= 210, `${r.host.exits} exits`);
    assert.ok(r.host.tscKhz > 0);
    assert.equal(r.host.exitCode, 0);
  });

  it("the baseline steps over the exception-entry breakpoint for bench-ud", async () => {
    const entry = benchKernelInfo(readFileSync(GV_KERNEL), 32).exceptionEntry;
    const r = await runBaseline({
      kernelPath: GV_KERNEL,
      cmdline: benchCmdline("bench-ud", { n: 20 }),
      memMiB: 32,
      breakAt: entry,
      timeoutSec: scaled(60_000) / 1000,
    });
    assert.equal(timedResult(r.serial, "bench-ud", "baseline").n, 20);
    assert.ok(r.host.exits >= 20);
  });

  for (const scenario of ["bench-write", "bench-ud", "bench-benign"] as const) {
    it(`${scenario} under Guardvisor (vmm decider): completes with the expected events only`, async () => {
      const kvm = openKvm();
      try {
        const [run] = await runGuardvisor({
          kvm,
          kernel: readFileSync(GV_KERNEL),
          kernelName: GV_KERNEL,
          memMiB: 32,
          cmdline: benchCmdline(scenario, { n: scenario === "bench-benign" ? 1 : 50 }),
          guests: 1,
          decider: "vmm",
          timeoutMs: scaled(60_000),
          expect:
            scenario === "bench-write"
              ? { kind: "protected-write", region: ".benchpage" }
              : scenario === "bench-ud"
                ? { kind: "cpu-exception" }
                : undefined,
          what: scenario,
        });
        if (scenario === "bench-benign") {
          assert.equal(benignResult(run!.serial, scenario).tasks, 3);
          assert.equal(run!.latencies.length, 0);
        } else {
          assert.equal(timedResult(run!.serial, scenario, scenario).n, 50);
          assert.equal(run!.latencies.length, 50);
        }
      } finally {
        kvm.close();
      }
    });
  }

  it("guardvisor bench --json --quick: every field, in under a minute", () => {
    const t0 = Date.now();
    const r = cli(["bench", "--json", "--quick"], 180_000);
    const seconds = (Date.now() - t0) / 1000;
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as BenchJson;
    const pair = (p: { p50: number; p99: number }, what: string) => {
      assert.ok(p.p50 > 0 && p.p99 >= p.p50, `${what}: ${JSON.stringify(p)}`);
    };
    pair(j.bareExitUs, "bareExitUs");
    for (const k of ["vmm", "hm-vm", "hm-vm-cold"] as const) pair(j.verdictUs[k], `verdictUs.${k}`);
    assert.equal(j.ratio.vmm, Math.round((j.verdictUs.vmm.p50 / j.bareExitUs.p50) * 1000) / 1000);
    assert.equal(j.ratio["hm-vm"], Math.round((j.verdictUs["hm-vm"].p50 / j.bareExitUs.p50) * 1000) / 1000);
    for (const k of ["bare", "vmm", "hm-vm"] as const) assert.ok(j.stormPerSec[k] > 0, `stormPerSec.${k}`);
    assert.equal(typeof j.benignOverheadPct, "number");
    assert.deepEqual(
      j.guests.map((g) => g.n),
      [1, 2, 4, 8],
    );
    for (const g of j.guests) pair(g, `guests[${g.n}]`);
    assert.ok(j.rssMiB.base > 0 && j.rssMiB.perGuest >= 0);
    assert.ok(j.idleHmCpuPct >= 0);
    assert.equal(j.quick, true);
    assert.ok(j.machine.cpus > 0 && j.machine.kvmModule.length > 0);
    // Where KVM ran, and so whether the figures are emulated (ratios only).
    const host = process.env.GV_LAB === "1" ? "lab" : j.machine.kvmModule === "kvm_pvm" ? "pvm" : "native";
    assert.equal(j.machine.host, host);
    assert.equal(j.machine.emulated, host !== "native");
    assert.ok(!r.stdout.includes("null"));
    assert.ok(seconds < scaled(60_000) / 1000, `bench --quick took ${seconds} s`);
  });
});
