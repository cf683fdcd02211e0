/** Hot reload plumbing: the policy mailbox and the in-VMM decider switching policies. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { VmmDecider } from "../../src/decide/decider.js";
import { compilePolicy, DEFAULT_POLICY, FAILSAFE_DEFAULTS } from "../../src/decide/policy.js";
import { PolicyMailbox } from "../../src/decide/policy-mailbox.js";
import { emptyContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";

const regions = makeRegions([{ name: ".text", start: 0x100000, end: 0x101000 }], 1 << 24);
const deny = compilePolicy(DEFAULT_POLICY, regions);
const allow = compilePolicy(
  {
    name: "open",
    defaults: FAILSAFE_DEFAULTS,
    rules: [{ name: "all-writes", kinds: ["protected-write"], verdict: "allow", reason: "r" }],
  },
  regions,
);

describe("policy mailbox", () => {
  it("hands each posted policy to the reader once, intact", () => {
    const owner = new PolicyMailbox();
    const reader = new PolicyMailbox(owner.buffer);
    assert.equal(reader.take(), undefined);
    owner.post(allow);
    const got = reader.take();
    assert.ok(got);
    assert.deepEqual([...got.table], [...allow.table]);
    assert.deepEqual(got.names, allow.names);
    assert.equal(got.name, "open");
    assert.equal(reader.take(), undefined, "taken once");
    owner.post(deny);
    owner.post(allow);
    assert.equal(reader.take()?.name, "open", "the newest wins");
  });

  it("a reader created after a post does not take the old one", () => {
    const owner = new PolicyMailbox();
    owner.post(allow);
    assert.equal(new PolicyMailbox(owner.buffer).take(), undefined);
  });
});

describe("decider reload", () => {
  it("the in-VMM decider decides by the reloaded policy from the next event", () => {
    const d = new VmmDecider(deny);
    const c = emptyContext("protected-write");
    c.regionId = 1;
    assert.equal(d.decide(c).verdict, "deny");
    d.reload(allow);
    assert.deepEqual(
      { verdict: d.decide(c).verdict, rule: d.decide(c).rule },
      { verdict: "allow", rule: "all-writes" },
    );
  });
});
