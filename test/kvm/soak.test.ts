/**
 * A short soak: several guests run a mix of scenarios again and again while
 * the health VM is crashed at random requests. Every request is settled once,
 * every run passes its own checks, no protected byte changes.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { MultiRunSummary } from "../../src/run/options.js";
import { scaled } from "../../src/time-scale.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

describe("soak on KVM", { skip: skipWithoutKvm }, () => {
  it("run --guests 3 --scenario (a mix) --duration S --hm-chaos --json: every request settled, every run passing", () => {
    const seconds = Math.ceil(scaled(3000) / 1000);
    const mix = ["text-patch", "store-movdqu", "syscall-hook", "benign"].flatMap((s) => ["--scenario", s]);
    const r = cli(
      ["run", "--guests", "3", ...mix, "--duration", String(seconds), "--hm-chaos", "--json"],
      (seconds + 120) * 1000 + scaled(60_000),
    );
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const s = JSON.parse(r.stdout) as MultiRunSummary;
    const soak = s.soak;
    assert.ok(soak, "a soak summary");
    assert.equal(soak.durationS, seconds);
    assert.ok(soak.rounds >= 3, `${soak.rounds} scenario runs`);
    assert.equal(soak.roundsFailed, 0, soak.problems.join("; "));
    assert.ok(soak.requests.published > 0);
    assert.equal(soak.requests.settled, soak.requests.published, "every request settled");
    const decided = Object.values(soak.events).reduce((a, b) => a + b, 0);
    assert.equal(decided, soak.requests.published, "one verdict per request");
    assert.equal(soak.intact, true);
    assert.equal(s.guests.length, 3);
  });

  it("refuses --hm-chaos without the health VM, and a mix without --duration", () => {
    const a = cli(["run", "--scenario", "benign", "--decider", "vmm", "--hm-chaos"]);
    assert.equal(a.status, 2);
    assert.match(a.stderr, /--hm-chaos: needs --decider hm-vm/);
    const b = cli(["run", "--guests", "3", "--scenario", "benign", "--scenario", "text-patch"]);
    assert.equal(b.status, 2);
    assert.match(b.stderr, /or a mix with --duration/);
  });
});
