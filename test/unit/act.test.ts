/**
 * The act layer's effect table: complete, consistent, and the very table
 * docs/policy.md shows (the docs cannot drift from what the VMM does).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { EVENT_KINDS, type EventKind, VERDICTS, type Verdict } from "../../src/abi/guest-abi.js";
import { packageRoot } from "../../src/kvm/native.js";
import { effectOf, effectsMarkdown } from "../../src/vmm/act.js";

const kinds = Object.keys(EVENT_KINDS) as EventKind[];
const verdicts = Object.keys(VERDICTS) as Verdict[];

describe("act: the effect table", () => {
  it("has an effect for every event kind and verdict", () => {
    for (const k of kinds) for (const v of verdicts) assert.ok(effectOf(k, v), `${k} x ${v}`);
  });

  it("never both performs and faults; only writes and MSR writes perform or fault", () => {
    for (const k of kinds) {
      for (const v of verdicts) {
        const e = effectOf(k, v);
        assert.ok(!(e.perform && e.fault), `${k} x ${v}`);
        if (k !== "protected-write" && k !== "msr-write") assert.ok(!e.perform && !e.fault, `${k} x ${v}`);
        if (e.restore) assert.equal(k, "integrity");
      }
    }
  });

  it("ends the VM only for restart, halt and pause (and a crash, which has already ended it)", () => {
    for (const k of kinds) {
      for (const v of verdicts) {
        const fate = effectOf(k, v).vm;
        if (v === "restart") assert.equal(fate, "restarted", `${k} x ${v}`);
        else if (k === "crash") assert.equal(fate, "crashed", `${k} x ${v}`);
        else if (v === "halt") assert.equal(fate, "halted", `${k} x ${v}`);
        else if (v === "pause") assert.equal(fate, "paused", `${k} x ${v}`);
        else if (k === "hang") assert.equal(fate, "halted", `${k} x ${v}: a hung guest cannot go on`);
        else assert.equal(fate, "runs", `${k} x ${v}`);
      }
    }
  });

  it("kill-task reaches the guest for the kinds where a task is at fault", () => {
    for (const k of kinds) {
      const want = k === "protected-write" || k === "msr-write" || k === "cpu-exception";
      assert.equal(effectOf(k, "kill-task").endTask, want, k);
    }
  });

  it("is the table docs/policy.md shows", () => {
    const doc = readFileSync(join(packageRoot(), "docs", "policy.md"), "utf8");
    assert.ok(doc.includes(effectsMarkdown()), `docs/policy.md must carry, verbatim:\n${effectsMarkdown()}`);
  });
});
