/**
 * The audit log of real runs: every event recorded with its disassembled
 * instruction, health-VM restarts and several guests in the same chain, the
 * chain intact, and one changed character caught (through the runner and
 * through the CLI, as the acceptance check does).
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { describeBad, verifyChain } from "../../src/audit/chain.js";
import { parseInject } from "../../src/cli/main.js";
import { runGuest, runGuests } from "../../src/run/run-guests.js";
import { readLines, tempDir } from "../support/audit.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

// biome-ignore lint/suspicious/noExplicitAny: records are checked member by member below
type Rec = Record<string, any>;

function verified(path: string): Rec[] {
  const v = verifyChain([{ name: path, data: readFileSync(path) }]);
  assert.equal(v.ok, true, v.bad ? describeBad(v.bad) : "");
  assert.equal(v.end, "closed");
  const recs = readLines(path).map((l) => JSON.parse(l) as Rec);
  assert.equal(recs[0]?.kind, "audit-start");
  assert.equal(recs.at(-1)?.kind, "audit-close");
  assert.equal(recs.at(-1)?.records, recs.filter((o) => !o.kind.startsWith("audit-")).length);
  return recs;
}

const cpuEvents = (recs: Rec[]) => recs.filter((o) => !o.kind.startsWith("audit-") && o.kind !== "hm-restart");

describe("audit log on KVM", { skip: skipWithoutKvm }, () => {
  const dir = tempDir();

  it("text-patch: one chained record per event, the instruction disassembled", async () => {
    const path = join(dir, "runner.jsonl");
    const r = await runGuest({ scenario: "text-patch", auditPath: path });
    assert.deepEqual(r.problems, []);
    const events = cpuEvents(verified(path));
    assert.deepEqual(
      events.map((e) => e.seq),
      r.summary.events.map((e) => e.seq),
    );
    const writes = events.filter((e) => e.kind === "protected-write");
    assert.ok(writes.length >= 3);
    for (const e of writes) {
      assert.equal(e.vm, "guest0");
      assert.equal(e.region, ".text");
      assert.equal(e.verdict, "deny");
      assert.match(e.rip, /^evil_module_text_patch\+0x[0-9a-f]+$/);
      assert.match(e.target, /^gv_check_credentials(\+0x[0-9a-f]+)?$/);
      assert.match(e.context.cr3, /^0x[0-9a-f]+$/);
      assert.match(e.context.cr2, /^0x[0-9a-f]+$/);
      assert.ok(e.context.data.length >= 2, "the bytes the guest tried to write");
      assert.ok(e.context.insn.startsWith(e.insn.bytes) && e.insn.bytes.length >= 4);
    }
    // The module writes 1, 8 and 4 bytes: gv-kernel's text_patch.c.
    const texts = writes.slice(0, 3).map((e) => e.insn.text);
    assert.match(texts[0], /^mov byte ptr \[0x[0-9a-f]+\],0xb8$/, texts.join("; "));
    assert.match(texts[1], /^mov qword ptr \[0x[0-9a-f]+\],r[a-z0-9]+$/, texts.join("; "));
    assert.match(texts[2], /^mov dword ptr \[0x[0-9a-f]+\],0x9090c301$/, texts.join("; "));
  });

  it("a health-VM restart is a record in the same chain", async () => {
    const path = join(dir, "restart.jsonl");
    const r = await runGuest({ scenario: "text-patch", injectHmFault: parseInject("crash@1"), auditPath: path });
    assert.deepEqual(r.problems, []);
    const recs = verified(path);
    const restarts = recs.filter((o) => o.kind === "hm-restart");
    assert.equal(restarts.length, r.summary.healthVm.restarts);
    assert.ok(restarts.length >= 1);
    assert.equal(cpuEvents(recs).length, r.summary.events.length);
  });

  it("two guests write one chain, each event named by its guest", async () => {
    const path = join(dir, "two.jsonl");
    const r = await runGuests({ scenarios: ["text-patch"], guests: 2, auditPath: path });
    const events = cpuEvents(verified(path));
    for (const [g, guest] of r.guests.entries()) {
      assert.equal(events.filter((e) => e.vm === `guest${g}`).length, guest.summary.events.length);
    }
  });

  it("acceptance: run --audit, audit verify exits 0; one character changed in the first record, it fails", () => {
    const path = join(dir, "A.jsonl");
    const run = cli(["run", "--scenario", "text-patch", "--audit", path]);
    assert.equal(run.status, 0, run.stdout + run.stderr);
    const ok = cli(["audit", "verify", path]);
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /^ok: /m);
    const show = cli(["audit", "show", path]);
    assert.equal(show.status, 0, show.stderr);
    assert.match(show.stdout, /protected-write +\.text gv_check_credentials.* deny +[a-z-]+ +[\d.]+ us +mov /);
    const text = readFileSync(path, "utf8");
    const at = text.indexOf('"kind":"audit-start"') + '"kind":"audit-'.length;
    writeFileSync(path, `${text.slice(0, at)}S${text.slice(at + 1)}`);
    const bad = cli(["audit", "verify", path]);
    assert.equal(bad.status, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /line 1 \(index 1\): hash mismatch/);
  });
});
