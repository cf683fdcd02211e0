import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RULE, RULE_TABLE_HEADER } from "../../src/abi/guest-abi.js";
import { compilePolicy, FAILSAFE_DEFAULTS, type Policy } from "../../src/decide/policy.js";
import { decodeRuleTable, encodeRuleTable } from "../../src/decide/rule-table.js";
import { GuardvisorError } from "../../src/errors.js";
import { makeRegions } from "../../src/model/regions.js";

const regions = makeRegions(
  [
    { name: ".text", start: 0x100000, end: 0x101000 },
    { name: ".rodata", start: 0x101000, end: 0x102000 },
  ],
  1 << 24,
);
const policy: Policy = {
  name: "t",
  defaults: { ...FAILSAFE_DEFAULTS, "cpu-exception": "kill-task" },
  rules: [
    {
      name: "a",
      kinds: ["protected-write"],
      regions: [".rodata"],
      rip: { from: 0x100100, to: 0x100200 },
      verdict: "allow",
      reason: "",
    },
    { name: "b", kinds: ["cpu-exception"], vectors: [0, 14], cpl: [3], verdict: "kill-task", reason: "" },
    { name: "c", kinds: ["msr-write"], msr: 0xc0000082, verdict: "deny-fault", reason: "" },
    { name: "d", verdict: "log", reason: "" },
    {
      name: "e",
      kinds: ["protected-write"],
      regions: [".rodata"],
      gpa: { from: 0x101040, to: 0x101048 },
      verdict: "allow",
      reason: "",
    },
  ],
};

describe("binary rule table", () => {
  it("round-trips a compiled policy exactly", () => {
    const p = compilePolicy(policy, regions);
    assert.equal(p.table.length, RULE_TABLE_HEADER.size + 5 * RULE.size);
    const back = decodeRuleTable(p.table);
    assert.deepEqual(back.rules, p.rules);
    assert.deepEqual(back.defaults, policy.defaults);
    assert.equal(back.rules[0]?.regionMask, 1n << 2n);
    assert.equal(back.rules[1]?.vectorMask, (1 << 0) | (1 << 14));
    assert.equal(back.rules[2]?.msr, 0xc0000082);
    assert.equal(back.rules[3]?.msr, -1);
    assert.equal(back.rules[3]?.gpa, undefined);
    assert.deepEqual(back.rules[4]?.gpa, { from: 0x101040n, to: 0x101048n });
    const flags = (i: number) =>
      new DataView(p.table.buffer).getUint32(RULE_TABLE_HEADER.size + i * RULE.size + RULE.offset("flags"), true);
    assert.deepEqual([0, 1, 2, 3, 4].map(flags), [0, 0, 1, 0, 2]);
  });

  it("names the policy by a hash of the whole table: rules and defaults", () => {
    const a = compilePolicy(policy, regions).table;
    const b = compilePolicy({ ...policy, rules: policy.rules.slice(1) }, regions).table;
    const hash = (t: Uint8Array) => new DataView(t.buffer).getUint32(RULE_TABLE_HEADER.offset("policy_hash"), true);
    assert.notEqual(hash(a), hash(b));
    assert.equal(hash(a), hash(compilePolicy(policy, regions).table));
    // Same rules, deny-by-default vs allow-by-default: two policies, two names.
    const deny = compilePolicy({ ...policy, defaults: { ...policy.defaults, "protected-write": "deny" } }, regions);
    const allow = compilePolicy({ ...policy, defaults: { ...policy.defaults, "protected-write": "allow" } }, regions);
    assert.notEqual(hash(deny.table), hash(allow.table));
  });

  it("rejects corrupt tables with a clear reason", () => {
    const good = compilePolicy(policy, regions).table;
    const corrupt = (f: (v: DataView) => void, why: RegExp) => {
      const b = good.slice();
      f(new DataView(b.buffer));
      assert.throws(
        () => decodeRuleTable(b),
        (e: unknown) => e instanceof GuardvisorError && why.test(e.message),
      );
    };
    corrupt((v) => v.setUint32(0, 1), /magic/);
    corrupt((v) => v.setUint32(RULE_TABLE_HEADER.offset("version"), 9, true), /version/);
    corrupt((v) => v.setUint32(RULE_TABLE_HEADER.offset("nrules"), 6, true), /truncated/);
    corrupt((v) => v.setUint32(RULE_TABLE_HEADER.offset("nrules"), 100000, true), /at most/);
    corrupt((v) => v.setUint32(RULE_TABLE_HEADER.size + RULE.offset("verdict"), 99, true), /rule 0: verdict 99/);
    corrupt((v) => v.setUint8(RULE_TABLE_HEADER.offset("defaults") + 1, 0), /default for protected-write/);
    corrupt((v) => v.setUint32(RULE_TABLE_HEADER.size + RULE.offset("flags"), 8, true), /rule 0: unknown flags 0x8/);
    assert.throws(() => decodeRuleTable(good.subarray(0, 8)), /truncated header/);
  });

  it("refuses more rules than the table holds", () => {
    const many = Array.from({ length: 129 }, () => ({
      index: 0,
      kindMask: 1,
      regionMask: 0n,
      vectorMask: 0,
      objectMask: 0,
      cplMask: 0,
      ripFrom: 0n,
      ripTo: 0n,
      msr: -1,
      verdict: "deny" as const,
    }));
    assert.throws(() => encodeRuleTable({ rules: many, defaults: FAILSAFE_DEFAULTS }), /at most 128/);
  });
});
