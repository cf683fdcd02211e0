/**
 * Every verdict of the contract carried out on KVM as docs/policy.md says
 * (the effect table in src/vmm/act.ts): one run per verdict, each checking
 * what the guest saw and what the VMM recorded.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { Verdict } from "../../src/abi/guest-abi.js";
import { DEFAULT_POLICY, type Policy } from "../../src/decide/policy.js";
import { defaultKernelPath } from "../../src/elf/kernel-file.js";
import { packageRoot } from "../../src/kvm/native.js";
import type { RunOptions } from "../../src/run/options.js";
import { runGuest } from "../../src/run/run-guests.js";
import { scaled } from "../../src/time-scale.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

/** The default policy with protected writes given `verdict`, and the rest as given. */
function writesGet(verdict: Verdict, more: Partial<Policy> = {}): Policy {
  return {
    ...DEFAULT_POLICY,
    name: `writes-${verdict}`,
    rules: [
      { name: "writes", kinds: ["protected-write"], verdict, reason: `protected writes: ${verdict}` },
      ...DEFAULT_POLICY.rules,
    ],
    ...more,
  };
}

async function run(opts: RunOptions) {
  const r = await runGuest({ decider: "vmm", ...opts });
  const writes = r.summary.events.filter((e) => e.kind === "protected-write");
  return { r, writes, why: `${r.detail}; serial: ${r.serial.slice(-6).join(" | ")}` };
}

describe("verdicts on KVM", { skip: skipWithoutKvm }, () => {
  for (const verdict of ["allow", "log"] as const) {
    it(`${verdict}: the VMM performs the write; the patched function runs; the change is sanctioned`, async () => {
      const { r, writes, why } = await run({ scenario: "text-patch", policy: writesGet(verdict) });
      assert.equal(r.summary.guest.outcome, "completed", why);
      assert.equal(writes.length, 3);
      assert.ok(writes.every((e) => e.verdict === verdict));
      assert.equal(r.result?.changed, "1");
      assert.notEqual(r.result?.ret, "0", "the patched check grants root");
      assert.equal(r.summary.integrity.intact, true, "an allowed write re-locks the region");
    });
  }

  it("deny: the write is dropped and the guest goes on after it", async () => {
    const { r, writes, why } = await run({ scenario: "text-patch", policy: writesGet("deny") });
    assert.equal(r.summary.guest.outcome, "completed", why);
    assert.equal(writes.length, 3);
    assert.equal(r.result?.changed, "0");
    assert.equal(r.summary.integrity.intact, true);
  });

  it("deny-fault: the write is dropped, #GP at the writer; the guest's own rule (kernel mode: panic) follows", async () => {
    const policy = writesGet("deny-fault", {
      defaults: { ...DEFAULT_POLICY.defaults, crash: "halt" },
    });
    const { r, writes, why } = await run({ scenario: "driver-exploit", policy });
    assert.equal(writes.length, 1, why);
    assert.equal(writes[0]?.verdict, "deny-fault");
    const gp = r.summary.events.find((e) => e.kind === "cpu-exception" && e.vector === 13);
    assert.ok(gp, "the #GP is captured at the exception entry");
    assert.equal(gp.rip, writes[0]?.rip, "at the writing instruction");
    assert.equal(gp.guest, "panic", "no kill-task: the exception module panics (ring 0)");
    assert.equal(r.summary.guest.outcome, "crashed", why);
    assert.equal(r.summary.integrity.intact, true);
  });

  it("kill-task: the write is dropped and the task behind it ended, even in kernel mode; the kernel goes on", async () => {
    // driver-exploit runs under policies/driver-exploit.yaml (kill-task on writes and kernel-mode faults).
    const { r, writes, why } = await run({ scenario: "driver-exploit" });
    assert.deepEqual(r.problems, [], why);
    assert.equal(writes.length, 1);
    assert.equal(writes[0]?.verdict, "kill-task");
    assert.deepEqual(r.result, {
      scenario: "driver-exploit",
      patcher: "killed",
      oopser: "killed",
      survivor: "exited",
      changed: "0",
    });
    const faults = r.summary.events.filter((e) => e.kind === "cpu-exception");
    assert.deepEqual(
      faults.map((e) => [e.vector, e.verdict, e.guest]),
      [
        [13, "kill-task", "task-killed"],
        [14, "kill-task", "task-killed"],
      ],
    );
    assert.ok(r.serial.some((l) => /^TASK-FAULT task=patcher vector=13 .*mode=kernel$/.test(l)));
  });

  it("restart: the guest VM is restarted until the policy's limit, then stopped", async () => {
    const policy = writesGet("restart", { restart: { limit: 1, exhausted: "halt" } });
    const { r, writes, why } = await run({ scenario: "text-patch", policy });
    assert.equal(r.summary.guest.restarts, 1, why);
    assert.equal(r.summary.guest.outcome, "halted");
    assert.match(r.detail, /restart limit 1 reached/);
    assert.equal(writes.length, 2, "one write per incarnation, then the VM is gone");
    assert.equal(r.summary.integrity.intact, true);
  });

  it("halt: the guest VM is stopped at the first write", async () => {
    const { r, writes, why } = await run({ scenario: "text-patch", policy: writesGet("halt") });
    assert.equal(r.summary.guest.outcome, "halted", why);
    assert.equal(r.summary.guest.restarts, 0);
    assert.equal(writes.length, 1);
    assert.equal(r.result, undefined, "the scenario never got to its result");
    assert.equal(r.summary.integrity.intact, true);
  });

  it("pause: the guest waits, write dropped, until `guardvisor resume` on the control socket lets it go on", async () => {
    const dir = mkdtempSync(join(tmpdir(), "gv-pause-"));
    try {
      const policyFile = join(dir, "pause.yaml");
      writeFileSync(
        policyFile,
        [
          "version: 1",
          "name: pause-writes",
          "rules:",
          "  - name: pause-on-write",
          "    event: protected-write",
          "    action: pause",
          "    reason: hold the guest for a look",
          "",
        ].join("\n"),
      );
      const sock = join(dir, "control.sock");
      const bin = join(packageRoot(), "bin", "guardvisor.js");
      const child = spawn(
        process.execPath,
        // The gv-kernel with the text-patch scenario on its command line: a kernel run, no scenario expectations.
        [
          bin,
          "run",
          "--kernel",
          defaultKernelPath(),
          "--cmdline",
          "scenario=text-patch",
          "--decider",
          "vmm",
          "--policy",
          policyFile,
          "--control",
          sock,
          "--json",
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d) => {
        stdout += d;
      });
      child.stderr.on("data", (d) => {
        stderr += d;
      });
      const exited = new Promise<number | null>((res) => child.on("exit", (code) => res(code)));
      let running = true;
      void exited.then(() => {
        running = false;
      });
      const states: string[] = [];
      let resumes = 0;
      const deadline = Date.now() + scaled(120_000);
      while (running && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 200));
        const g = cli(["guests", "--control", sock, "--json"], 10_000);
        if (g.status !== 0) continue; // not listening yet, or the run just ended
        const reply = JSON.parse(g.stdout) as { ok: boolean; guests: { name: string; state: string }[] };
        const state = reply.guests[0]?.state ?? "none";
        if (states.at(-1) !== state) states.push(state);
        if (state !== "paused") continue;
        // Paused: it stays paused (the time limit is held) until resumed.
        await new Promise((res) => setTimeout(res, 300));
        const again = JSON.parse(cli(["guests", "--control", sock, "--json"], 10_000).stdout);
        assert.equal(again.guests[0].state, "paused");
        const r = cli(["resume", "guest0", "--control", sock, "--json"], 10_000);
        assert.equal(r.status, 0, r.stdout + r.stderr);
        resumes++;
      }
      if (running) child.kill("SIGKILL");
      const code = await exited;
      assert.equal(code, 0, stderr);
      const s = JSON.parse(stdout.trim().split("\n").at(-1) ?? "{}");
      const writes = s.events.filter((e: { kind: string }) => e.kind === "protected-write");
      assert.equal(writes.length, 3);
      assert.ok(writes.every((e: { verdict: string }) => e.verdict === "pause"));
      assert.equal(resumes, 3, `one resume per pause (states seen: ${states.join(" -> ")})`);
      assert.deepEqual(s.guest, { outcome: "completed", restarts: 0, exitCode: 0 });
      assert.equal(s.integrity.intact, true);
      // Resuming a guest that is not paused is refused, with the reason.
      const late = cli(["resume", "guest0", "--control", sock], 10_000);
      assert.notEqual(late.status, 0, "the run has ended: nobody listens");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
