/**
 * The health-management engine (guest/src/user/hm_engine.c) against the
 * TypeScript evaluator, over the real IDC rings: in the health VM (needs
 * /dev/kvm) and as a host process (guest/out/hm-host, the same C source), so
 * the comparison runs with or without KVM.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CONTEXT_FLAGS, EVENT_KINDS, type EventKind, VERDICTS, type Verdict } from "../../src/abi/guest-abi.js";
import { evaluate } from "../../src/decide/evaluate.js";
import type { CompiledPolicy, CompiledRule } from "../../src/decide/policy.js";
import { FAILSAFE_DEFAULTS } from "../../src/decide/policy.js";
import { acceptedPolicyOf, decodeRuleTable, encodeRuleTable, policyHashOf } from "../../src/decide/rule-table.js";
import { HealthManager } from "../../src/health/health-manager.js";
import { type ContextRecord, emptyContext } from "../../src/model/context.js";
import { ENGINES } from "../support/engines.js";
import { prng } from "../unit/elf-fixtures.js";

const KINDS = Object.keys(EVENT_KINDS) as EventKind[];
const VERDICT_NAMES = Object.keys(VERDICTS) as Verdict[];
const RIPS = [0x100000n, 0x100100n, 0x100200n, 0x7fff_0000n, 0xffff_ffff_8000_0000n, 0xffff_ffff_ffff_fffen];
const MSRS = [0xc0000080, 0xc0000082, 0x174, 0x176];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}

const GPAS = [0x100000n, 0x100ff8n, 0x101000n, 0x200000n];
const VALUES = [0n, 1n, 2n, 0x0201n, 0x8877665544332211n, 0xffffffffffffffffn];

function randomGpaRange(r: () => number): { from: bigint; to: bigint } {
  const from = pick(r, GPAS) + BigInt(Math.floor(r() * 16));
  return { from, to: from + BigInt(1 + Math.floor(r() * 24)) };
}

function randomRule(r: () => number, index: number): CompiledRule {
  const kinds = KINDS.filter(() => r() < 0.5);
  const ripFrom = r() < 0.5 ? 0n : pick(r, RIPS);
  const U64_MAX = 0xffffffffffffffffn;
  const ripTo = r() < 0.5 ? U64_MAX : ripFrom + BigInt(Math.floor(r() * 0x200));
  if (ripTo > U64_MAX) return randomRule(r, index);
  return {
    index,
    kindMask: kinds.reduce((m, k) => m | (1 << EVENT_KINDS[k]), 0),
    regionMask: r() < 0.4 ? 0n : BigInt.asUintN(64, BigInt(Math.floor(r() * 2 ** 32)) << BigInt(Math.floor(r() * 32))),
    vectorMask: r() < 0.5 ? 0xffffffff : Math.floor(r() * 2 ** 32) >>> 0,
    objectMask: r() < 0.5 ? 0xffffffff : Math.floor(r() * 2 ** 32) >>> 0,
    cplMask: Math.floor(r() * 16),
    ripFrom,
    ripTo,
    msr: r() < 0.7 ? -1 : pick(r, MSRS),
    gpa: r() < 0.6 ? undefined : randomGpaRange(r),
    ...(r() < 0.3 ? { value: pick(r, VALUES) } : {}),
    verdict: pick(r, VERDICT_NAMES),
  };
}

function randomPolicy(r: () => number, n: number): CompiledPolicy {
  const rules = Array.from({ length: n }, (_, i) => randomRule(r, i));
  const defaults = Object.fromEntries(KINDS.map((k) => [k, pick(r, VERDICT_NAMES)])) as Record<EventKind, Verdict>;
  return {
    name: "random",
    table: encodeRuleTable({ rules, defaults }),
    rules,
    names: rules.map((_, i) => `r${i}`),
    reasons: rules.map(() => ""),
    defaults,
  };
}

function randomContext(r: () => number, seq: number, p: CompiledPolicy): ContextRecord {
  const c = emptyContext(pick(r, KINDS));
  c.seq = seq;
  c.regionId = r() < 0.1 ? pick(r, [63, 64, 65, 0xffffffff]) : Math.floor(r() * 8);
  c.vector = r() < 0.1 ? pick(r, [31, 32, 33, 255]) : Math.floor(r() * 32);
  c.object = r() < 0.1 ? pick(r, [31, 32, 33]) : Math.floor(r() * 20);
  c.cpl = Math.floor(r() * 4);
  const base = pick(r, RIPS);
  c.regs.rip = BigInt.asUintN(64, base + BigInt(Math.floor(r() * 0x300)) - 0x40n);
  const edge = p.rules.length > 0 && r() < 0.4 ? pick(r, p.rules) : undefined;
  if (edge) {
    // Boundaries of a rule's RIP range, where off-by-one mistakes live.
    c.regs.rip = BigInt.asUintN(64, pick(r, [edge.ripFrom - 1n, edge.ripFrom, edge.ripTo - 1n, edge.ripTo]));
    c.kind =
      pick(
        r,
        KINDS.filter((k) => edge.kindMask & (1 << EVENT_KINDS[k])),
      ) ?? c.kind;
  }
  c.msrIndex = pick(r, MSRS);
  const g = p.rules.length > 0 && r() < 0.5 ? pick(r, p.rules).gpa : undefined;
  // Writes at and across the edges of a rule's gpa range, 1 to 8 bytes wide.
  c.gpa = Number(g ? pick(r, [g.from - 1n, g.from, g.to - 1n, g.to - 4n, g.to]) : pick(r, GPAS));
  c.data = new Uint8Array(1 + Math.floor(r() * 8));
  // A value some rule names, written whole, split, or as part of a longer store.
  const valued = p.rules.filter((x) => x.value !== undefined);
  if (valued.length > 0 && r() < 0.5) {
    const v = pick(r, valued).value ?? 0n;
    const n = pick(r, [1, 2, 4, 8]);
    c.data = Uint8Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
    if (r() < 0.2) c.accessLen = pick(r, [n + 1, 16, 512]);
    if (r() < 0.2) c.flags |= CONTEXT_FLAGS.DATA_PARTIAL;
  }
  // Sometimes the writer was not found: rules with a RIP range must then not match.
  if (r() < 0.25) c.flags |= CONTEXT_FLAGS.WRITER_UNKNOWN;
  return c;
}

for (const engine of ENGINES)
  describe(`health-management engine: ${engine.name}`, { skip: engine.skip }, () => {
    let hm: HealthManager;
    let close = () => {};
    before(async () => {
      const made = engine.make();
      close = made.close;
      hm = await HealthManager.start({ backend: made.backend, nguests: 1 });
    });
    after(async () => {
      await hm?.stop();
      close();
    });

    it("gives the same verdict and rule as the TypeScript evaluator on 2,000 generated contexts", () => {
      const r = prng(0x4d48);
      let compared = 0;
      let matchedRule = 0;
      for (let t = 0; t < 10; t++) {
        const p = randomPolicy(r, t === 0 ? 0 : 1 + Math.floor(r() * 40));
        hm.installRules(0, p.table);
        const ch = hm.region.channel(0, acceptedPolicyOf(p.table));
        for (let i = 0; i < 200; i++) {
          const c = randomContext(r, i + 1, p);
          const seq = ch.submit(c);
          assert.ok(seq !== undefined, "ring has room");
          hm.control.ring();
          const deadline = Date.now() + 5000;
          let got = ch.poll(seq);
          while (got.state === "pending" && Date.now() < deadline) got = ch.poll(seq);
          ch.finalize(seq);
          assert.equal(got.state, "answered", `request ${seq}: ${JSON.stringify(got)}`);
          if (got.state !== "answered") return;
          // As the in-VMM decider does: evaluate what the binary table says.
          const want = evaluate({ ...p, ...decodeRuleTable(p.table) }, c);
          const gotRule = got.rule === 0xffffffff ? `default:${c.kind}` : `r${got.rule}`;
          assert.deepEqual(
            { verdict: got.verdict, rule: gotRule },
            { verdict: want.verdict, rule: want.rule },
            `table ${t}, context ${JSON.stringify(c, (_, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v))}`,
          );
          compared++;
          if (!want.rule.startsWith("default:")) matchedRule++;
        }
      }
      assert.equal(compared, 2000);
      // The generator must exercise both paths, or the comparison proves little.
      assert.ok(matchedRule > 200 && matchedRule < 1800, `${matchedRule} contexts matched a rule`);
    });

    it("uses the fail-closed defaults with an empty table", () => {
      const p = randomPolicy(prng(1), 0);
      const pol = {
        ...p,
        defaults: FAILSAFE_DEFAULTS,
        table: encodeRuleTable({ rules: [], defaults: FAILSAFE_DEFAULTS }),
      };
      hm.installRules(0, pol.table);
      const ch = hm.region.channel(0, acceptedPolicyOf(pol.table));
      const c = emptyContext("protected-write");
      const seq = ch.submit(c);
      assert.ok(seq !== undefined);
      hm.control.ring();
      let got = ch.poll(seq);
      const deadline = Date.now() + 5000;
      while (got.state === "pending" && Date.now() < deadline) got = ch.poll(seq);
      ch.finalize(seq);
      assert.deepEqual(got, {
        state: "answered",
        verdict: "deny",
        rule: 0xffffffff,
        policyHash: policyHashOf(pol.table),
      });
    });
  });
