/**
 * The audit log of a real run: every event recorded with its disassembled
 * instruction, the chain verifies, and one changed character is caught
 * (through the runner and through the CLI, as the acceptance check does).
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { verifyChain } from "../../src/audit/chain.js";
import { runGuest } from "../../src/runner.js";
import { readLines, tempDir } from "../support/audit.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

describe("audit log on KVM", { skip: skipWithoutKvm }, () => {
  const dir = tempDir();

  it("text-patch: one chained record per event, the instruction disassembled, the chain intact", async () => {
    const path = join(dir, "runner.jsonl");
    const r = await runGuest({ scenario: "text-patch", auditPath: path });
    assert.deepEqual(r.problems, []);
    const v = verifyChain([{ name: path, data: readFileSync(path) }]);
    assert.equal(v.ok, true, JSON.stringify(v.bad));
    assert.equal(v.end, "closed");
    const recs = readLines(path).map((l) => JSON.parse(l));
    assert.equal(recs[0].kind, "audit-start");
    assert.equal(recs.at(-1).kind, "audit-close");
    const events = recs.filter((o) => !o.kind.startsWith("audit-"));
    assert.equal(events.length, r.summary.events.length);
    assert.equal(recs.at(-1).records, events.length);
    assert.deepEqual(
      events.map((e) => e.seq),
      r.summary.events.map((e) => e.seq),
    );
    const writes = events.filter((e) => e.kind === "protected-write");
    assert.ok(writes.length >= 3);
    for (const e of writes) {
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

  it("acceptance: run --audit, audit verify exits 0; one character changed in the first record, it fails", () => {
    const path = join(dir, "A.jsonl");
    const run = cli(["run", "--scenario", "text-patch", "--audit", path]);
    assert.equal(run.status, 0, run.stdout + run.stderr);
    const ok = cli(["audit", "verify", path]);
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /^ok: /m);
    const show = cli(["audit", "show", path]);
    assert.equal(show.status, 0, show.stderr);
    assert.match(show.stdout, /protected-write +\.text gv_check_credentials.* deny +vmm +[\d.]+ us +mov /);
    const text = readFileSync(path, "utf8");
    const at = text.indexOf('"kind":"audit-start"') + '"kind":"audit-'.length;
    writeFileSync(path, `${text.slice(0, at)}S${text.slice(at + 1)}`);
    const bad = cli(["audit", "verify", path]);
    assert.equal(bad.status, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /line 1 \(index 1\): hash mismatch/);
  });
});
