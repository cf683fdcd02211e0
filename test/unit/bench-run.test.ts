/**
 * The parts of `guardvisor bench` that run without KVM: reading the guest's
 * results, the kernel check, /proc readings, and failing with the right
 * error when KVM or the build is missing.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { runBaseline } from "../../src/bench/baseline.js";
import { benchCmdline, benignResult, timedResult } from "../../src/bench/guest-result.js";
import {
  newThreads,
  parseStatCpuTicks,
  rssMiB,
  threadCpuNs,
  threadCpuPercent,
  threadIds,
} from "../../src/bench/proc.js";
import { benchKernelInfo, FULL_PLAN, openKvm, planForScale, QUICK_PLAN, runBench } from "../../src/bench/run.js";
import { GuardvisorError } from "../../src/errors.js";
import { packageRoot } from "../../src/kvm/native.js";

const GV_KERNEL = join(packageRoot(), "guest", "out", "gv-kernel.elf");
const NO_KVM = "/nonexistent/kvm";

const isError = (code: string, pattern: RegExp) => (e: unknown) =>
  e instanceof GuardvisorError && e.code === code && pattern.test(e.message);

describe("bench: guest results", () => {
  const write =
    "GV-RESULT scenario=bench-write n=5000 cycles=300000000 p50=57000 p99=90000 min=50000 max=400000 faulted=0";

  it("reads bench-write and bench-ud results", () => {
    assert.deepEqual(timedResult(["gv-kernel: boot", write], "bench-write", "t"), {
      n: 5000,
      cycles: 300000000,
      p50: 57000,
      p99: 90000,
      min: 50000,
      max: 400000,
    });
    const ud = write.replace("bench-write", "bench-ud");
    assert.equal(timedResult([ud], "bench-ud", "t").n, 5000);
  });

  it("reads bench-benign results and checks every task exited", () => {
    const line = "GV-RESULT scenario=bench-benign n=5 cycles=123456 tasks=15 syscalls=60 faulted=0";
    assert.deepEqual(benignResult([line], "t"), { n: 5, cycles: 123456, tasks: 15, syscalls: 60 });
    assert.throws(
      () => benignResult([line.replace("tasks=15", "tasks=14")], "t"),
      isError("GUEST_FAULT", /14 of 15 benign tasks/),
    );
  });

  it("refuses results that are missing, for another scenario, faulted or not numbers", () => {
    const cases: [string[], RegExp][] = [
      [["no result here"], /printed no GV-RESULT line/],
      [[write.replace("bench-write", "benign")], /GV-RESULT is for scenario benign, expected bench-write/],
      [[write.replace("faulted=0", "faulted=1")], /faulted \(faulted=1\)/],
      [[write.replace(" faulted=0", "")], /faulted=missing/],
      [[write.replace("p99=90000", "p99=-3")], /p99=-3 is not a count/],
      [[write.replace(" min=50000", "")], /min=\(missing\)/],
      [["GV-RESULT scenario=bench-write error=page-tables"], /error=page-tables/],
      [[write.replace("n=5000", "n=0")], /measured nothing/],
    ];
    for (const [lines, pattern] of cases) {
      assert.throws(() => timedResult(lines, "bench-write", "run"), isError("GUEST_FAULT", pattern), lines[0]);
    }
  });

  it("builds the guest command line", () => {
    assert.equal(
      benchCmdline("bench-write", { n: 100, warm: 5, gap: 0 }),
      "scenario=bench-write role=guest n=100 warm=5 gap=0",
    );
    assert.throws(() => benchCmdline("bench-ud", { n: -1 }), /n=-1/);
    assert.throws(() => benchCmdline("bench-ud", { n: 1.5 }), /n=1.5/);
  });
});

describe("bench: kernel, plans, /proc", () => {
  it("finds the exception entry of the built kernel", () => {
    const kernel = readFileSync(GV_KERNEL);
    const entry = benchKernelInfo(kernel, 32).exceptionEntry;
    assert.ok(entry >= 0x100000n);
    const stripped = Buffer.from(kernel);
    const at = stripped.indexOf(Buffer.from("scenario_bench_write\0", "latin1"));
    assert.ok(at > 0);
    stripped[at] = 0x58; // 'X': the symbol is gone
    assert.throws(() => benchKernelInfo(stripped, 32), isError("CONFIG_INVALID", /no benchmark scenarios/));
  });

  it("the quick plan is smaller than the full one in every count", () => {
    for (const k of Object.keys(FULL_PLAN) as (keyof typeof FULL_PLAN)[]) {
      if (k === "memMiB" || k === "coldGapMs") assert.equal(QUICK_PLAN[k], FULL_PLAN[k], k);
      else assert.ok(QUICK_PLAN[k] < FULL_PLAN[k], k);
    }
    assert.equal(QUICK_PLAN.coldGapMs, 100);
  });

  it("parses utime and stime even when the thread name has spaces and parentheses", () => {
    const stat = "4242 (node (worker) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 7 0 1000 0 0";
    assert.equal(parseStatCpuTicks(stat), 42);
    assert.throws(() => parseStatCpuTicks("garbage"), /unreadable/);
  });

  it("reads a thread's CPU time, and sees a new worker's thread appear", async () => {
    const main = process.pid; // the main thread's tid
    const c0 = threadCpuNs(main);
    const t = Date.now();
    while (Date.now() - t < 30) {
      // burn CPU on this thread
    }
    assert.ok(threadCpuNs(main) > c0);
    const before = threadIds();
    const w = new Worker("require('node:worker_threads').parentPort.postMessage('up'); setInterval(() => {}, 1000)", {
      eval: true,
    });
    try {
      await new Promise((r) => w.once("message", r));
      const started = newThreads(before, threadIds());
      assert.equal(started.length, 1, `${started}`);
      const pct = await threadCpuPercent(started[0]!, 100);
      assert.ok(pct >= 0 && pct < 50, `an idle worker used ${pct}% of a core`);
    } finally {
      await w.terminate();
    }
    assert.throws(() => threadCpuNs(2 ** 30), /thread .* is gone/);
    assert.ok(rssMiB() > 1);
  });
});

describe("bench: without KVM or the build", () => {
  it("openKvm says KVM is unavailable", () => {
    assert.throws(
      () => openKvm(NO_KVM),
      isError("KVM_UNAVAILABLE", /^KVM is unavailable: \/nonexistent\/kvm does not exist/),
    );
  });

  it("runBench fails at once with KVM_UNAVAILABLE", async () => {
    await assert.rejects(
      runBench({ quick: true, kvmPath: NO_KVM }),
      isError("KVM_UNAVAILABLE", /^KVM is unavailable: /),
    );
  });

  it("runBaseline turns the baseline's exit codes into errors", async () => {
    const opts = { kernelPath: GV_KERNEL, cmdline: "scenario=bench-write role=guest", memMiB: 32, timeoutSec: 10 };
    await assert.rejects(
      runBaseline({ ...opts, kvmPath: NO_KVM }),
      isError("KVM_UNAVAILABLE", /^KVM is unavailable: \/nonexistent\/kvm does not exist$/),
    );
    await assert.rejects(
      runBaseline({ ...opts, kernelPath: join(packageRoot(), "package.json"), kvmPath: NO_KVM }),
      isError("CONFIG_INVALID", /package\.json: not an ELF file/),
    );
    await assert.rejects(
      runBaseline({ ...opts, path: "/nonexistent/baseline" }),
      isError("IO", /is missing: build it/),
    );
  });
});

describe("bench: plans on a slower host", () => {
  it("scale 1 keeps the plan; the lab's scale divides the counts down to floors and keeps durations and warm-ups", () => {
    assert.deepEqual(planForScale(QUICK_PLAN, 1), QUICK_PLAN);
    const lab = planForScale(QUICK_PLAN, 20);
    assert.equal(lab.writes, 250);
    assert.equal(lab.guestWrites, 100);
    assert.equal(lab.udCount, 50, "never under the floor");
    assert.equal(lab.stormSec, QUICK_PLAN.stormSec);
    assert.equal(lab.idleMs, QUICK_PLAN.idleMs);
    assert.deepEqual(
      [lab.warm, lab.udWarm, lab.guestWarm],
      [QUICK_PLAN.warm, QUICK_PLAN.udWarm, QUICK_PLAN.guestWarm],
      "the JIT warms up by exits handled, not by time",
    );
    for (const k of Object.keys(QUICK_PLAN) as (keyof typeof QUICK_PLAN)[]) {
      assert.ok(lab[k] <= QUICK_PLAN[k] && lab[k] > 0, k);
    }
    const tiny = planForScale({ ...QUICK_PLAN, coldWrites: 3 }, 50);
    assert.equal(tiny.coldWrites, 3, "a count under its floor stays as it is");
  });
});
