/** Policy hot reload while a guest runs, with both deciders. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DECIDERS } from "../../src/decide/decider.js";
import { DEFAULT_POLICY, type Policy } from "../../src/decide/policy.js";
import type { RunControl } from "../../src/run/options.js";
import { runGuest } from "../../src/run/run-guests.js";
import { skipWithoutKvm } from "../support/kvm.js";

const watchStorm: Policy = {
  ...DEFAULT_POLICY,
  name: "watch-storm",
  rules: [
    ...DEFAULT_POLICY.rules,
    { name: "storm-watch", kinds: ["cpu-exception"], vectors: [6], verdict: "log", reason: "counted" },
  ],
};

describe("policy hot reload on KVM", { skip: skipWithoutKvm }, () => {
  for (const decider of DECIDERS) {
    it(`--decider ${decider}: a reload mid-storm switches the running guest, nothing fails safe`, async () => {
      const control: RunControl = {};
      let reloaded: { guests: number; hashes: number[] } | undefined;
      const timer = setInterval(() => {
        // Until the guest is built, a reload reaches no running guest (it would start under the new
        // policy): try again until one reaches the running guest.
        if (!reloaded?.guests && control.reloadPolicy) reloaded = control.reloadPolicy(watchStorm);
      }, 200);
      try {
        const r = await runGuest({ scenario: "exception-storm", decider, control });
        const seen = r.summary.events.map((e) => `${e.kind}:${e.verdict}:${e.decidedBy}${e.note ? `(${e.note})` : ""}`);
        assert.deepEqual(r.problems, [], `${r.detail}; events ${seen.join(", ")}`);
        assert.equal(reloaded?.guests, 1);
        assert.ok(r.summary.events.every((e) => e.decidedBy === decider));
      } finally {
        clearInterval(timer);
      }
    });
  }
});
