import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CONTEXT_RECORD, REG_NAMES } from "../../src/abi/guest-abi.js";
import { GuardvisorError } from "../../src/errors.js";
import { decodeContext, emptyContext, encodeContext } from "../../src/model/context.js";

function sample() {
  const c = emptyContext("protected-write");
  c.seq = 42;
  c.vmId = 3;
  c.vcpu = 1;
  c.cpl = 0;
  c.regionId = 2;
  c.gpa = 0x100004;
  c.regionOffset = 4;
  c.data = Uint8Array.of(0xb8, 1, 0, 0, 0, 0xc3);
  REG_NAMES.forEach((r, i) => {
    c.regs[r] = BigInt.asUintN(64, 0x1111111111111111n * BigInt(i + 1));
  });
  c.regs.rip = 0xffffffff80001234n;
  c.cr0 = 0x80050033n;
  c.cr2 = 0xdeadbeefn;
  c.cr3 = 0x1000n;
  c.cr4 = 0x620n;
  c.efer = 0xd01n;
  c.insn = Uint8Array.of(0x48, 0x89, 0x07);
  c.flags = 1;
  return c;
}

describe("context record", () => {
  it("has the size the layout declares", () => {
    assert.equal(encodeContext(sample()).length, CONTEXT_RECORD.size);
  });

  it("round-trips every field", () => {
    const c = sample();
    assert.deepEqual(decodeContext(encodeContext(c)), c);
  });

  it("puts fields at the declared offsets", () => {
    const buf = encodeContext(sample());
    const v = new DataView(buf.buffer);
    assert.equal(v.getBigUint64(CONTEXT_RECORD.offset("seq"), true), 42n);
    assert.equal(v.getBigUint64(CONTEXT_RECORD.offset("gpa"), true), 0x100004n);
    assert.equal(v.getUint32(CONTEXT_RECORD.offset("access_len"), true), 6);
    assert.equal(v.getBigUint64(CONTEXT_RECORD.offset("regs") + 16 * 8, true), 0xffffffff80001234n);
  });

  it("encodes at an offset inside a larger buffer", () => {
    const big = new Uint8Array(CONTEXT_RECORD.size * 3);
    encodeContext(sample(), big, CONTEXT_RECORD.size);
    assert.deepEqual(decodeContext(big, CONTEXT_RECORD.size), sample());
    assert.throws(() => encodeContext(sample(), big, CONTEXT_RECORD.size * 2 + 1));
  });

  it("rejects corrupt records", () => {
    const good = encodeContext(sample());
    const bad = (mutate: (v: DataView) => void, why: RegExp) => {
      const b = good.slice();
      mutate(new DataView(b.buffer));
      assert.throws(
        () => decodeContext(b),
        (e: unknown) => e instanceof GuardvisorError && why.test(e.message),
      );
    };
    bad((v) => v.setUint32(0, 0), /magic/);
    bad((v) => v.setUint32(CONTEXT_RECORD.offset("version"), 99, true), /version/);
    bad((v) => v.setUint32(CONTEXT_RECORD.offset("kind"), 99, true), /kind/);
    bad((v) => v.setUint32(CONTEXT_RECORD.offset("insn_len"), 17, true), /length/);
    bad((v) => v.setBigUint64(CONTEXT_RECORD.offset("gpa"), 1n << 60n, true), /gpa/);
    assert.throws(() => decodeContext(good.subarray(0, 10)), /truncated/);
  });

  it("carries a write longer than its data: access_len whole, data its first 8 bytes", () => {
    const c = emptyContext("protected-write");
    c.data = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
    c.accessLen = 512;
    const back = decodeContext(encodeContext(c));
    assert.equal(back.accessLen, 512);
    assert.deepEqual(back.data, c.data);
    const short = decodeContext(encodeContext({ ...c, accessLen: undefined }));
    assert.equal(short.accessLen, undefined);
    assert.throws(() => encodeContext({ ...c, accessLen: 4 }), /access length/);
  });
});
