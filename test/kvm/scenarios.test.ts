/**
 * Each built-in scenario end to end on real KVM, through the runner and
 * through the CLI's JSON contract.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { runGuest } from "../../src/run/run-guests.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

describe("scenarios on KVM", { skip: skipWithoutKvm }, () => {
  it("benign: completes with zero events and its work done", async () => {
    const r = await runGuest({ scenario: "benign" });
    assert.deepEqual(r.problems, []);
    assert.equal(r.summary.guest.outcome, "completed");
    assert.equal(r.summary.guest.exitCode, 0);
    assert.deepEqual(r.summary.events, []);
    assert.equal(r.summary.integrity.intact, true);
    assert.ok(r.summary.integrity.protectedBytes > 0);
    assert.equal(r.result?.tasks, "3");
    assert.ok(Number(r.result?.syscalls) > 0, "made syscalls");
    assert.ok(Number(r.result?.data_writes) > 0, "wrote its own .data");
  });

  it("text-patch: three write attempts to .text denied, the function unchanged", async () => {
    const r = await runGuest({ scenario: "text-patch", decider: "vmm" });
    assert.deepEqual(r.problems, []);
    const writes = r.summary.events.filter((e) => e.kind === "protected-write");
    assert.ok(writes.length >= 3, `${writes.length} protected writes`);
    for (const e of writes) {
      assert.equal(e.region, ".text");
      assert.equal(e.verdict, "deny");
      assert.equal(e.decidedBy, "vmm");
      assert.match(e.symbol ?? "", /^gv_check_credentials(\+0x[0-9a-f]+)?$/);
      assert.ok(e.latencyUs > 0);
    }
    assert.deepEqual(
      writes.map((e) => e.seq),
      writes.map((_, i) => i + 1),
    );
    assert.equal(r.result?.changed, "0");
    assert.equal(r.summary.integrity.intact, true);
  });

  it("syscall-hook: the .rodata syscall-table write denied, the syscall not hooked", async () => {
    const r = await runGuest({ scenario: "syscall-hook" });
    assert.deepEqual(r.problems, []);
    const writes = r.summary.events.filter((e) => e.kind === "protected-write");
    assert.ok(writes.length >= 1);
    assert.equal(writes[0]?.region, ".rodata");
    assert.equal(writes[0]?.verdict, "deny");
    assert.match(writes[0]?.symbol ?? "", /^syscall_table\+0x18$/);
    assert.equal(r.result?.hooked, "0");
    assert.equal(r.result?.uid, "1000");
    assert.equal(r.summary.integrity.intact, true);
  });

  it("the CLI prints exactly the DESIGN.md summary for text-patch --json", () => {
    const r = cli(["run", "--scenario", "text-patch", "--decider", "vmm", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 1, "one JSON object on stdout");
    const s = JSON.parse(lines[0] ?? "");
    assert.deepEqual(Object.keys(s).sort(), ["decider", "events", "guest", "healthVm", "integrity", "scenario"]);
    assert.equal(s.scenario, "text-patch");
    assert.equal(s.decider, "vmm");
    assert.deepEqual(s.guest, { outcome: "completed", restarts: 0, exitCode: 0 });
    assert.equal(s.integrity.intact, true);
    assert.deepEqual(s.healthVm, { restarts: 0, requests: 0, faults: [] }); // vmm decider: no health VM started
    const denied = s.events.filter(
      (e: { kind: string; verdict: string; region: string }) =>
        e.kind === "protected-write" && e.verdict === "deny" && e.region === ".text",
    );
    assert.ok(denied.length >= 3);
    for (const e of s.events) {
      assert.deepEqual(Object.keys(e).sort(), [
        "decidedBy",
        "kind",
        "latencyUs",
        "region",
        "rip",
        "seq",
        "symbol",
        "verdict",
      ]);
    }
  });

  it("the CLI reports syscall-hook and benign per the acceptance checks", () => {
    const hook = JSON.parse(cli(["run", "--scenario", "syscall-hook", "--json"]).stdout);
    assert.equal(hook.guest.outcome, "completed");
    assert.ok(
      hook.events.some((e: { region: string; verdict: string }) => e.region === ".rodata" && e.verdict === "deny"),
    );
    assert.equal(hook.integrity.intact, true);
    const benign = cli(["run", "--scenario", "benign", "--json"]);
    assert.equal(benign.status, 0, benign.stderr);
    assert.deepEqual(JSON.parse(benign.stdout).events, []);
  });

  it("writes an audit record per event with the captured context", async () => {
    const { mkdtempSync, readFileSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dir = mkdtempSync(join(tmpdir(), "gv-audit-"));
    try {
      const path = join(dir, "a.jsonl");
      const r = await runGuest({ scenario: "text-patch", auditPath: path });
      const recs = readFileSync(path, "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l))
        .filter((o) => !o.kind.startsWith("audit-"));
      assert.equal(recs.length, r.summary.events.length);
      const first = recs[0];
      assert.equal(first.kind, "protected-write");
      assert.equal(first.verdict, "deny");
      assert.equal(first.rule, "protect-kernel-regions");
      assert.match(first.rip, /^evil_module_text_patch/);
      assert.match(first.context.regs.rip, /^0x[0-9a-f]+$/);
      assert.ok(first.context.insn.length >= 2, "instruction bytes captured");
      assert.ok(first.context.data.length >= 2, "written bytes captured");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
