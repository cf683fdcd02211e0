import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { evaluate } from "../../src/decide/evaluate.js";
import { compilePolicy, DEFAULT_POLICY, FAILSAFE_DEFAULTS, type Policy } from "../../src/decide/policy.js";
import { GuardvisorError } from "../../src/errors.js";
import { emptyContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";

const regions = makeRegions(
  [
    { name: ".text", start: 0x100000, end: 0x101000 },
    { name: ".rodata", start: 0x101000, end: 0x102000 },
  ],
  1 << 24,
);

describe("policy evaluation", () => {
  it("denies protected writes under the default policy, naming the rule", () => {
    const p = compilePolicy(DEFAULT_POLICY, regions);
    const c = emptyContext("protected-write");
    c.regionId = 1;
    const d = evaluate(p, c);
    assert.equal(d.verdict, "deny");
    assert.equal(d.rule, "protect-kernel-regions");
    assert.match(d.reason, /protected kernel region/);
  });

  it("falls back to the kind's fail-closed default when no rule matches", () => {
    const p = compilePolicy({ name: "empty", rules: [], defaults: FAILSAFE_DEFAULTS }, regions);
    const d = evaluate(p, emptyContext("protected-write"));
    assert.equal(d.verdict, "deny");
    assert.equal(d.rule, "default:protected-write");
    assert.equal(evaluate(p, emptyContext("crash")).verdict, "restart");
  });

  it("matches on region, cpl, vector, rip range and msr, first rule wins", () => {
    const policy: Policy = {
      name: "t",
      defaults: FAILSAFE_DEFAULTS,
      rules: [
        {
          name: "patcher",
          kinds: ["protected-write"],
          regions: [".text"],
          rip: { from: 0x100100, to: 0x100200 },
          verdict: "allow",
          reason: "patch site",
        },
        {
          name: "ring3-pf",
          kinds: ["cpu-exception"],
          vectors: [14],
          cpl: [3],
          verdict: "kill-task",
          reason: "user fault",
        },
        { name: "lstar", kinds: ["msr-write"], msr: 0xc0000082, verdict: "deny-fault", reason: "syscall msr" },
        { name: "rodata", regions: [".rodata"], verdict: "log", reason: "audit" },
      ],
    };
    const p = compilePolicy(policy, regions);
    const w = emptyContext("protected-write");
    w.regionId = 1;
    w.regs.rip = 0x100150n;
    assert.equal(evaluate(p, w).rule, "patcher");
    w.regs.rip = 0x100200n;
    assert.equal(evaluate(p, w).rule, "default:protected-write");
    w.regionId = 2;
    assert.equal(evaluate(p, w).rule, "rodata");

    const f = emptyContext("cpu-exception");
    f.vector = 14;
    f.cpl = 3;
    assert.equal(evaluate(p, f).verdict, "kill-task");
    f.cpl = 0;
    assert.equal(evaluate(p, f).rule, "default:cpu-exception");
    f.cpl = 3;
    f.vector = 40; // out of the 0..31 mask range never matches a vector rule
    assert.equal(evaluate(p, f).rule, "default:cpu-exception");

    const m = emptyContext("msr-write");
    m.msrIndex = 0xc0000082;
    assert.equal(evaluate(p, m).verdict, "deny-fault");
    m.msrIndex = 0xc0000081;
    assert.equal(evaluate(p, m).verdict, "deny");
  });

  it("matches a guest-physical range only when the whole write lies inside it", () => {
    const policy: Policy = {
      name: "t",
      defaults: FAILSAFE_DEFAULTS,
      rules: [
        {
          name: "slot",
          kinds: ["protected-write"],
          regions: [".rodata"],
          gpa: { from: 0x101040, to: 0x101048 },
          verdict: "allow",
          reason: "one table slot",
        },
      ],
    };
    const p = compilePolicy(policy, regions);
    const w = emptyContext("protected-write");
    w.regionId = 2;
    const at = (gpa: number, len: number) => {
      w.gpa = gpa;
      w.data = new Uint8Array(len);
      return evaluate(p, w).rule;
    };
    assert.equal(at(0x101040, 8), "slot");
    assert.equal(at(0x101044, 4), "slot");
    assert.equal(at(0x101047, 1), "slot");
    assert.equal(at(0x101047, 0), "slot");
    assert.equal(at(0x101044, 8), "default:protected-write"); // runs past the end
    assert.equal(at(0x10103c, 8), "default:protected-write"); // starts before it
    assert.equal(at(0x101048, 0), "default:protected-write");
    assert.equal(at(0x101048, 1), "default:protected-write");
  });

  it("compiles deny and deny-fault as log in audit mode, saying what they would have been", () => {
    const policy: Policy = {
      name: "audit",
      mode: "audit",
      defaults: FAILSAFE_DEFAULTS,
      rules: [
        { name: "a", kinds: ["protected-write"], verdict: "deny", reason: "kernel" },
        { name: "b", kinds: ["msr-write"], verdict: "deny-fault", reason: "msr" },
        { name: "c", kinds: ["crash"], verdict: "restart", reason: "crash" },
      ],
    };
    const p = compilePolicy(policy, regions);
    assert.deepEqual(
      p.rules.map((r) => r.verdict),
      ["log", "log", "restart"],
    );
    assert.equal(p.defaults["protected-write"], "log");
    assert.equal(p.defaults["msr-write"], "log");
    assert.equal(p.defaults.crash, "restart");
    assert.equal(p.reasons[0], "kernel (audit mode: would deny)");
    assert.equal(p.reasons[2], "crash");
    assert.equal(evaluate(p, emptyContext("hang")).verdict, "restart");
  });

  it("refuses a rule naming a region the guest does not have", () => {
    assert.throws(
      () =>
        compilePolicy(
          {
            name: "x",
            defaults: FAILSAFE_DEFAULTS,
            rules: [{ name: "r", regions: [".nope"], verdict: "deny", reason: "" }],
          },
          regions,
        ),
      (e: unknown) =>
        e instanceof GuardvisorError && e.code === "CONFIG_INVALID" && /rules\[0\]\.regions.*\.nope/.test(e.message),
    );
  });
});
