/**
 * Whole guests decided by the health VM on real KVM: the default decider,
 * every fault-injection mode (the guest stays protected and completes), and
 * several guests sharing one health VM.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseInject } from "../../src/cli/main.js";
import { runGuest, runGuests } from "../../src/run/run-guests.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

describe("health VM on KVM", { skip: skipWithoutKvm }, () => {
  it("text-patch with the default decider: every event decided by the health VM, denied", async () => {
    const r = await runGuest({ scenario: "text-patch" });
    assert.deepEqual(r.problems, []);
    assert.equal(r.summary.decider, "hm-vm");
    assert.ok(r.summary.events.length >= 3);
    for (const e of r.summary.events) {
      assert.equal(e.decidedBy, "hm-vm");
      assert.equal(e.verdict, "deny");
      assert.ok(e.latencyUs > 0);
    }
    assert.equal(r.summary.integrity.intact, true);
    assert.equal(r.summary.healthVm.restarts, 0);
    assert.ok(r.summary.healthVm.requests >= 3);
  });

  for (const mode of ["crash", "hang", "garbage", "slow"]) {
    it(`--inject-hm-fault ${mode}@1: fail-safe deny first, health VM restarted, hm-vm again after`, async () => {
      const r = await runGuest({ scenario: "text-patch", injectHmFault: parseInject(`${mode}@1`) });
      assert.deepEqual(r.problems, []);
      assert.equal(r.summary.guest.outcome, "completed");
      const [first, ...rest] = r.summary.events;
      assert.equal(first?.decidedBy, "failsafe");
      assert.equal(first?.verdict, "deny");
      assert.ok(
        rest.some((e) => e.decidedBy === "hm-vm"),
        JSON.stringify(r.summary.events),
      );
      assert.ok(r.summary.events.every((e) => e.verdict === "deny"));
      assert.ok(r.summary.healthVm.restarts >= 1);
      assert.equal(r.summary.integrity.intact, true);
    });
  }

  it("two guests share one health VM: both complete, intact, events attributed to each", async () => {
    const r = await runGuests({ scenarios: ["text-patch"], guests: 2 });
    assert.equal(r.guests.length, 2);
    for (const g of r.guests) {
      assert.deepEqual(g.problems, []);
      assert.ok(g.summary.events.length >= 3);
      assert.ok(g.summary.events.every((e) => e.decidedBy === "hm-vm" && e.region === ".text"));
    }
    assert.ok(r.summary.healthVm.requests >= 6);
  });

  it("CLI: --guests 2 prints guests[] with the single-guest fields and healthVm top-level", () => {
    const r = cli(["run", "--guests", "2", "--scenario", "text-patch", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const s = JSON.parse(r.stdout);
    assert.equal(s.guests.length, 2);
    for (const g of s.guests) {
      assert.equal(g.scenario, "text-patch");
      assert.equal(g.guest.outcome, "completed");
      assert.equal(g.integrity.intact, true);
      assert.ok(g.events.length >= 3);
    }
    assert.equal(typeof s.healthVm.restarts, "number");
  });

  it("CLI: a different scenario per guest", () => {
    const r = cli(["run", "--scenario", "text-patch", "--scenario", "syscall-hook", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const s = JSON.parse(r.stdout);
    assert.deepEqual(
      s.guests.map((g: { scenario: string }) => g.scenario),
      ["text-patch", "syscall-hook"],
    );
    assert.equal(s.guests[1].events[0].region, ".rodata");
  });
});
