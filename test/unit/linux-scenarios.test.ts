/**
 * What each Linux scenario must show (src/linux/linux-scenarios.ts), checked
 * on reports shaped as `run --linux --scenario NAME --json` prints them.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { eventCounts, linuxScenarioProblems, type ReportEvent } from "../../src/linux/linux-scenarios.js";
import { SANCTIONED_RULE } from "../../src/linux/linux-seal.js";
import { LINUX_SCENARIOS, type LinuxScenario } from "../../src/linux/test-guest.js";

const ev = (kind: string, verdict: string, decidedBy = "vmm", rule = "r"): ReportEvent => ({
  kind,
  verdict,
  decidedBy,
  rule,
});

/** A report each scenario passes with (decided by `by`). */
function good(name: LinuxScenario, by = "vmm"): Record<string, unknown> {
  const base = { integrity: { intact: true, changed: [] }, restarts: 0 };
  const result = (extra: Record<string, string>) => ({ scenario: name, status: "ok", ...extra });
  switch (name) {
    case "linux-benign":
      return { ...base, result: result({}), seal: { events: [] } };
    case "linux-static-key":
      return {
        ...base,
        result: result({ schedstats: "1" }),
        seal: { events: [ev("protected-write", "allow", "vmm", SANCTIONED_RULE)] },
      };
    case "linux-text-patch":
    case "linux-syscall-hook":
      return { ...base, result: result({ landed: "no" }), seal: { events: [ev("protected-write", "deny", by)] } };
    case "linux-wp-bypass":
      return {
        ...base,
        result: result({ landed: "no" }),
        seal: { events: [ev("integrity", "deny", by), ev("protected-write", "deny", by)] },
      };
    case "linux-lstar-hook":
      return { ...base, result: result({ landed: "no" }), seal: { events: [ev("msr-write", "deny-fault", by)] } };
    case "linux-oops":
      return { ...base, result: result({ oopsed: "yes" }), seal: { events: [ev("cpu-exception", "log", by)] } };
    case "linux-panic":
    case "linux-hang":
      return {
        ...base,
        restarts: 1,
        restarted: [{ seal: { events: [ev(name === "linux-panic" ? "crash" : "hang", "restart", by)] } }],
        result: result({ restarted: "1" }),
        seal: { events: [] },
      };
  }
}

describe("Linux scenario expectations", () => {
  for (const name of LINUX_SCENARIOS) {
    it(`${name}: a run that shows what it must has no problem, with either decider`, () => {
      assert.deepEqual(linuxScenarioProblems(name, good(name), "vmm"), []);
      assert.deepEqual(linuxScenarioProblems(name, good(name, "hm-vm"), "hm-vm"), []);
    });
  }

  it("an attack that landed, changed sealed bytes, or no result line: each named", () => {
    const landed = {
      ...good("linux-text-patch"),
      result: { scenario: "linux-text-patch", status: "ok", landed: "yes" },
    };
    assert.match(linuxScenarioProblems("linux-text-patch", landed, "vmm").join("\n"), /landed=yes, expected no/);
    const changed = { ...good("linux-text-patch"), integrity: { intact: false, changed: [".text+0xd4430"] } };
    assert.match(linuxScenarioProblems("linux-text-patch", changed, "vmm").join("\n"), /changed at \.text\+0xd4430/);
    const silent = { ...good("linux-benign"), result: null };
    assert.match(linuxScenarioProblems("linux-benign", silent, "vmm").join("\n"), /no result line/);
  });

  it("a verdict from the wrong decider is a problem; the VMM's own text_poke allow is not", () => {
    assert.match(
      linuxScenarioProblems("linux-text-patch", good("linux-text-patch", "vmm"), "hm-vm").join("\n"),
      /decided by vmm, not hm-vm/,
    );
    assert.deepEqual(linuxScenarioProblems("linux-static-key", good("linux-static-key"), "hm-vm"), []);
    const failsafe = good("linux-oops", "failsafe");
    assert.match(linuxScenarioProblems("linux-oops", failsafe, "hm-vm").join("\n"), /decided by failsafe/);
  });

  it("unexpected or missing events are named", () => {
    const extra = good("linux-lstar-hook");
    (extra.seal as { events: ReportEvent[] }).events.push(ev("protected-write", "deny"));
    assert.match(
      linuxScenarioProblems("linux-lstar-hook", extra, "vmm").join("\n"),
      /unexpected events: protected-write deny/,
    );
    const noPanic = { ...good("linux-panic"), restarted: [{ seal: { events: [] } }] };
    assert.match(linuxScenarioProblems("linux-panic", noPanic, "vmm").join("\n"), /0 crash events with restart/);
    // A hang restarted as a panic is not the hang scenario's restart.
    assert.match(
      linuxScenarioProblems("linux-hang", good("linux-panic"), "vmm").join("\n"),
      /0 hang events with restart/,
    );
    const benignWithEvent = { ...good("linux-benign"), seal: { events: [ev("protected-write", "deny")] } };
    assert.match(linuxScenarioProblems("linux-benign", benignWithEvent, "vmm").join("\n"), /1 events, expected none/);
  });

  it("counts events by kind and verdict", () => {
    assert.deepEqual(eventCounts(good("linux-wp-bypass")), { "integrity:deny": 1, "protected-write:deny": 1 });
  });
});
