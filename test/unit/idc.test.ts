import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ABI_CONSTANTS as C, IDC_GUEST_CTL, IDC_REQUEST, IDC_RESPONSE, VERDICTS } from "../../src/abi/guest-abi.js";
import { compilePolicy, DEFAULT_POLICY } from "../../src/decide/policy.js";
import { policyHashOf } from "../../src/decide/rule-table.js";
import { GuardvisorError } from "../../src/errors.js";
import { IdcRegion, responseCheck } from "../../src/idc/channel.js";
import { idcLayout } from "../../src/idc/layout.js";
import { decodeContext, emptyContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";

const regions = makeRegions([{ name: ".text", start: 0x100000, end: 0x101000 }], 1 << 24);
const table = compilePolicy(DEFAULT_POLICY, regions).table;
const HASH = policyHashOf(table);

function region(nguests = 2, nslots = 4) {
  const layout = idcLayout(nguests, nslots);
  const r = new IdcRegion(new ArrayBuffer(layout.size), layout);
  r.initialize(Array.from({ length: nguests }, () => table));
  return r;
}

/** A stand-in for the health VM's engine: take the next request of guest g and answer it. */
function serve(
  r: IdcRegion,
  g: number,
  answer?: (seq: bigint) => { verdict: number; rule: number; check?: number; seq?: bigint; hash?: number },
) {
  const b = r.blockBase(g);
  const ctl = (n: string) => b + IDC_GUEST_CTL.offset(n);
  const next = r.load64(ctl("req_consumed")) + 1n;
  const req = b + r.layout.reqOffset + Number(next % BigInt(r.layout.nslots)) * IDC_REQUEST.size;
  if (r.load64(req) !== next) return undefined;
  r.store64(ctl("req_consumed"), next);
  const ctx = decodeContext(r.bytes, req + IDC_REQUEST.offset("ctx"));
  const a = answer ? answer(next) : { verdict: VERDICTS.deny, rule: 0 };
  const resp = b + r.layout.respOffset + Number(next % BigInt(r.layout.nslots)) * IDC_RESPONSE.size;
  r.view.setUint32(resp + IDC_RESPONSE.offset("verdict"), a.verdict, true);
  r.view.setUint32(resp + IDC_RESPONSE.offset("rule"), a.rule, true);
  r.view.setUint32(resp + IDC_RESPONSE.offset("policy_hash"), a.hash ?? HASH, true);
  r.view.setUint32(resp + IDC_RESPONSE.offset("check"), a.check ?? responseCheck(next, a.verdict, a.rule, HASH), true);
  r.store64(resp, a.seq ?? next);
  r.store64(ctl("resp_published"), a.seq ?? next);
  return { seq: next, ctx };
}

function ctx(seq: number) {
  const c = emptyContext("protected-write");
  c.seq = seq;
  c.gpa = 0x100000 + seq;
  c.regionId = 1;
  return c;
}

describe("IDC layout", () => {
  it("fits header, rings and rule tables; rejects bad sizes naming the field", () => {
    const L = idcLayout(16);
    assert.ok(L.blockOffset >= 4096 && L.blockSize % 4096 === 0 && L.size % (2 << 20) === 0);
    assert.ok(L.rulesOffset + L.rulesSize <= L.blockSize);
    assert.throws(
      () => idcLayout(0),
      (e: unknown) => e instanceof GuardvisorError && /--guests/.test(e.message),
    );
    assert.throws(() => idcLayout(17), /--guests/);
    assert.throws(() => idcLayout(1, 3), /power of two/);
  });
});

describe("IDC channel", () => {
  it("carries the full context record and a validated verdict", () => {
    const r = region();
    const ch = r.channel(1);
    const seq = ch.submit(ctx(7));
    assert.equal(seq, 1n);
    assert.deepEqual(ch.poll(1n), { state: "pending" });
    const got = serve(r, 1);
    assert.equal(got?.ctx.gpa, 0x100007);
    assert.equal(got?.ctx.regionId, 1);
    assert.deepEqual(ch.poll(1n), { state: "answered", verdict: "deny", rule: 0, policyHash: HASH });
    assert.equal(serve(r, 0), undefined, "guest 0's ring is separate and empty");
  });

  it("wraps around many times", () => {
    const r = region(1, 4);
    const ch = r.channel(0);
    for (let i = 1; i <= 50; i++) {
      const seq = ch.submit(ctx(i));
      assert.equal(seq, BigInt(i));
      const s = serve(r, 0, (q) => ({
        verdict: Number(q % 2n) ? VERDICTS.deny : VERDICTS.allow,
        rule: C.RULE_DEFAULT,
      }));
      assert.equal(s?.ctx.gpa, 0x100000 + i);
      const p = ch.poll(BigInt(i));
      assert.equal(p.state, "answered");
      assert.equal(p.state === "answered" && p.verdict, i % 2 ? "deny" : "allow");
      ch.finalize(BigInt(i));
    }
  });

  it("refuses to overwrite requests the health VM has not taken (full ring)", () => {
    const r = region(1, 4);
    const ch = r.channel(0);
    for (let i = 1; i <= 4; i++) assert.equal(ch.submit(ctx(i)), BigInt(i));
    assert.equal(ch.full, true);
    assert.equal(ch.submit(ctx(5)), undefined);
    serve(r, 0);
    ch.finalize(1n);
    assert.equal(ch.submit(ctx(5)), 5n);
  });

  it("treats an old answer left in a slot as pending, not as this request's answer", () => {
    const r = region(1, 4);
    const ch = r.channel(0);
    ch.submit(ctx(1));
    serve(r, 0);
    ch.finalize(1n);
    for (let i = 2; i <= 5; i++) {
      ch.submit(ctx(i));
      if (i < 5) {
        serve(r, 0);
        ch.finalize(BigInt(i));
      }
    }
    // Slot of seq 5 still holds the answer to seq 1.
    assert.deepEqual(ch.poll(5n), { state: "pending" });
  });

  it("rejects malformed responses", () => {
    const cases: Array<
      [string, (q: bigint) => { verdict: number; rule: number; check?: number; seq?: bigint }, RegExp]
    > = [
      [
        "verdict out of range",
        (q) => ({ verdict: 0x77, rule: 0, check: responseCheck(q, 0x77, 0, HASH) }),
        /verdict 119 out of range/,
      ],
      [
        "rule out of range",
        (q) => ({ verdict: 2, rule: 9, check: responseCheck(q, 2, 9, HASH) }),
        /rule 9 out of range/,
      ],
      [
        "an answer under a policy never accepted",
        (q) => ({ verdict: 2, rule: 0, hash: 0x1234, check: responseCheck(q, 2, 0, 0x1234) }),
        /unknown policy 0x1234/,
      ],
      ["bad check word", () => ({ verdict: 2, rule: 0, check: 1 }), /check word/],
      ["answer for another request", () => ({ verdict: 2, rule: 0, seq: 3n }), /unknown request 3|holds seq 3/],
    ];
    for (const [name, answer, why] of cases) {
      const r = region(1, 4);
      const ch = r.channel(0);
      ch.submit(ctx(1));
      serve(r, 0, answer);
      const p = ch.poll(1n);
      assert.equal(p.state, "invalid", name);
      assert.match(p.state === "invalid" ? p.why : "", why, name);
    }
  });

  it("rejects a response for an unknown id and polls for ids never sent", () => {
    const r = region(1, 4);
    const ch = r.channel(0);
    ch.submit(ctx(1));
    const b = r.blockBase(0);
    r.store64(b + IDC_GUEST_CTL.offset("resp_published"), 99n);
    assert.match((ch.poll(1n) as { why: string }).why, /unknown request 99/);
    assert.match((ch.poll(42n) as { why: string }).why, /not outstanding/);
  });

  it("stops accepting answers once a request is finalized (late answers are stale)", () => {
    const r = region(1, 4);
    const ch = r.channel(0);
    ch.submit(ctx(1));
    ch.finalize(1n); // e.g. failed safe after a deadline
    serve(r, 0);
    assert.equal(ch.poll(1n).state, "invalid");
  });

  it("rewinds for a restarted health VM: in-flight requests are taken again, withdrawn ones skipped", () => {
    const r = region(1, 8);
    const ch = r.channel(0);
    for (let i = 1; i <= 3; i++) ch.submit(ctx(i));
    serve(r, 0); // the old health VM took 1 and answered, then died on 2
    ch.finalize(1n);
    serve(r, 0, () => ({ verdict: 2, rule: 0, seq: 0n })); // took 2, wrote nothing useful
    ch.withdraw(2n);
    assert.equal(ch.settled, 2n, "1 answered, 2 settled fail-safe");
    // As core health management does: the new engine starts at the first unsettled request.
    assert.equal(r.rewindRing(0), 1, "request 3 is taken again");
    assert.equal(ch.poll(2n).state, "invalid", "2 is no longer outstanding");
    assert.equal(ch.poll(3n).state, "pending");
    // Were 2 re-sent anyway (a rewind from an older point), the engine would see it withdrawn.
    const b = r.blockBase(0);
    const slot2 = b + r.layout.reqOffset + 2 * IDC_REQUEST.size;
    assert.equal(
      r.view.getUint32(slot2 + IDC_REQUEST.offset("flags"), true) & C.IDC_REQ_WITHDRAWN,
      C.IDC_REQ_WITHDRAWN,
    );
    assert.equal(ch.consumed, 2n);
  });
});

describe("IDC: answers under a replaced policy", () => {
  it("are taken for requests sent before the reload, refused for requests sent after it", () => {
    const r = region(1, 4);
    const ch = r.channel(0);
    const before = ch.submit(ctx(1))!;
    const other = compilePolicy(
      { ...DEFAULT_POLICY, defaults: { ...DEFAULT_POLICY.defaults, "protected-write": "allow" } },
      regions,
    );
    ch.acceptPolicy({ hash: policyHashOf(other.table), nrules: other.rules.length });
    const after = ch.submit(ctx(2))!;
    serve(r, 0); // both answered under the old policy's hash
    serve(r, 0);
    assert.equal(ch.poll(before).state, "answered");
    const late = ch.poll(after);
    assert.equal(late.state, "invalid");
    assert.match(late.state === "invalid" ? late.why : "", /replaced before it was sent/);
  });
});

describe("IDC: a hostile health VM writing the ring counters", () => {
  const ctlAt = (r: IdcRegion, g: number, n: string) => r.blockBase(g) + IDC_GUEST_CTL.offset(n);

  it("cannot make a restart's rewind loop forever: it re-sends only what the host knows is unsettled", {
    timeout: 5000,
  }, () => {
    const r = region(1, 4);
    const ch = r.channel(0);
    const a = ch.submit(ctx(1))!;
    ch.submit(ctx(2));
    serve(r, 0);
    assert.equal(ch.poll(a).state, "answered");
    ch.finalize(a);
    // The engine scribbles over every counter it can reach, then crashes.
    for (const n of ["req_published", "req_consumed", "resp_published"]) r.store64(ctlAt(r, 0, n), 1n << 63n);
    r.store64(ctlAt(r, 0, "req_settled"), 0n);
    assert.equal(r.rewindRing(0), 1, "only request 2 is re-sent");
    assert.equal(r.load64(ctlAt(r, 0, "req_published")), 2n, "the region's counters are put back from the host's");
    assert.equal(r.load64(ctlAt(r, 0, "req_settled")), 1n);
    assert.equal(r.load64(ctlAt(r, 0, "req_consumed")), 1n);
    assert.equal(ch.published, 2n);
    assert.equal(ch.settled, 1n);
  });

  it("a channel opened after the engine rewrote req_published numbers its requests from the host's count", () => {
    const r = region(1, 4);
    const first = r.channel(0);
    first.submit(ctx(1));
    r.store64(ctlAt(r, 0, "req_published"), (1n << 64n) - 2n);
    const again = r.channel(0);
    assert.equal(again.submit(ctx(2)), 2n);
  });

  it("a forged req_settled neither settles requests nor frees their slots", () => {
    const r = region(1, 2);
    const ch = r.channel(0);
    ch.submit(ctx(1));
    ch.submit(ctx(2));
    r.store64(ctlAt(r, 0, "req_settled"), 1000n);
    r.store64(ctlAt(r, 0, "req_consumed"), 1000n);
    assert.equal(ch.settled, 0n);
    assert.equal(ch.submit(ctx(3)), undefined, "two unsettled requests fill a two-slot ring");
  });
});
