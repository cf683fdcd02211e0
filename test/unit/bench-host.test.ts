/**
 * `guardvisor bench --host`: runs without KVM, prints every field, its
 * baselines come from this run, and a run that is not a clean measurement
 * (a fail-safe verdict, a baseline from elsewhere) is refused. No timing
 * value is asserted: only that each is a number and the ratios are computed
 * from them.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ABI_CONSTANTS as C } from "../../src/abi/guest-abi.js";
import { HOST_QUICK_PLAN, type HostBenchJson, type HostPath, runHostBench } from "../../src/bench/host.js";
import { DISPATCH_KINDS } from "../../src/bench/host-dispatch.js";
import { isGuardvisorError } from "../../src/errors.js";
import { cli } from "../support/cli.js";

function assertTail(t: unknown, what: string, samples: number): void {
  assert.ok(typeof t === "object" && t !== null, what);
  const o = t as Record<string, unknown>;
  assert.equal(o.samples, samples, `${what}.samples`);
  for (const f of ["p50Us", "p99Us", "p999Us"]) {
    assert.equal(typeof o[f], "number", `${what}.${f}`);
    assert.ok(Number.isFinite(o[f]) && (o[f] as number) >= 0, `${what}.${f} = ${o[f]}`);
  }
  assert.ok((o.p50Us as number) <= (o.p99Us as number) && (o.p99Us as number) <= (o.p999Us as number), what);
}

function assertPath(p: HostPath, what: string, samples: number): void {
  assertTail(p, what, samples);
  assertTail(p.baseline, `${what}.baseline`, samples);
  assert.equal(p.ratioP50, p.p50Us / p.baseline.p50Us, `${what}.ratioP50`);
  assert.equal(p.ratioP99, p.p99Us / p.baseline.p99Us, `${what}.ratioP99`);
}

describe("guardvisor bench --host", () => {
  it("--quick --json without /dev/kvm: every path with its same-run baseline and ratios, no fail-safe verdict", () => {
    const r = cli(["bench", "--host", "--quick", "--json", "--kvm", "/nonexistent/kvm"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, "", "nothing but the JSON with --json");
    const j = JSON.parse(r.stdout) as HostBenchJson;
    assert.equal(j.host, "native");
    assert.equal(j.quick, true);
    assert.deepEqual(j.plan, HOST_QUICK_PLAN);
    assert.equal(typeof j.machine.cpu, "string");
    assert.equal(j.machine.node, process.version);
    assert.equal(typeof j.machine.load1, "number");
    assert.match(j.runId, /^[0-9a-z]+-\d+-[0-9a-f]{8}$/);
    assert.deepEqual(Object.keys(j.dispatch), [...DISPATCH_KINDS]);
    for (const k of DISPATCH_KINDS) assertPath(j.dispatch[k], `dispatch.${k}`, HOST_QUICK_PLAN.dispatchSamples);
    assertPath(j.idc, "idc", HOST_QUICK_PLAN.idcSamples);

    // The baselines ran in this run: child processes of it, answering with its run id.
    const runPid = Number(j.runId.split("-")[1]);
    for (const b of [j.baselines.dispatch, j.baselines.idc]) {
      assert.equal(b.runId, j.runId);
      assert.ok(Number.isInteger(b.pid) && b.pid > 0 && b.pid !== runPid, `${b.program} pid ${b.pid}`);
      assert.equal(typeof b.clockNs, "number");
    }
    assert.notEqual(j.baselines.dispatch.pid, j.baselines.idc.pid);

    // Every replayed exit was decided in the VMM, every request by the engine; no fail-safe verdict.
    const exits = (HOST_QUICK_PLAN.dispatchSamples + HOST_QUICK_PLAN.dispatchWarmup) * DISPATCH_KINDS.length;
    assert.deepEqual(j.decidedBy.dispatch, { vmm: exits, "hm-vm": 0, failsafe: 0 });
    assert.deepEqual(j.decidedBy.idc, {
      vmm: 0,
      "hm-vm": HOST_QUICK_PLAN.idcSamples + HOST_QUICK_PLAN.idcWarmup,
      failsafe: 0,
    });
    // The default policy: protected writes denied, the LSTAR write refused with #GP, the exception logged.
    const perKind = HOST_QUICK_PLAN.dispatchSamples + HOST_QUICK_PLAN.dispatchWarmup;
    assert.equal(j.verdicts.dispatch.deny, 4 * perKind);
    assert.equal(j.verdicts.dispatch["deny-fault"], perKind);
    assert.deepEqual(j.verdicts.idc, { deny: HOST_QUICK_PLAN.idcSamples + HOST_QUICK_PLAN.idcWarmup });
    assert.deepEqual(j.events, { posted: exits, received: exits });

    assert.equal(j.targets.length, 5);
    for (const t of j.targets) {
      assert.equal(typeof t.value, "number");
      assert.equal(typeof t.met, "boolean");
    }
  });

  it("the readable report marks every target met or MISSED", () => {
    const r = cli(["bench", "--host", "--quick"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Host bench \(native, no KVM\), run /);
    assert.equal((r.stdout.match(/^ {2}(met {4}|MISSED) /gm) ?? []).length, 5, r.stdout);
    for (const k of DISPATCH_KINDS) assert.match(r.stdout, new RegExp(`^ {2}${k} +p50 `, "m"));
  });

  it("refuses a run in which the engine's answers fail safe", async () => {
    await assert.rejects(
      runHostBench({ quick: true, inject: { mode: C.INJECT_GARBAGE, at: 10, slowUs: 0 } }),
      (e: unknown) => {
        assert.ok(isGuardvisorError(e) && e.code === "GUEST_FAULT", String(e));
        assert.match(e.message, /fail-safe verdict/);
        return true;
      },
    );
  });

  it("refuses a baseline that answers for another run", async () => {
    const dir = mkdtempSync(join(tmpdir(), "gv-host-bench-"));
    try {
      const old = '{"runId":"0-1-00000000","pid":1,"pageSize":1,"clockNs":1,"kinds":{}}';
      for (const name of ["host-dispatch", "host-pingpong"]) {
        writeFileSync(join(dir, name), `#!/bin/sh\necho '${old}'\n`);
        chmodSync(join(dir, name), 0o755);
      }
      await assert.rejects(runHostBench({ quick: true, toolDir: dir }), /answered for another run/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
