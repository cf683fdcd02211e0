/**
 * The <linux/kvm.h> register structs (src/kvm/structs.ts): each register is
 * read from and written to the offset the addon's offsetof() table gives it,
 * whatever order the decoder spells them out in.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { REG_NAMES } from "../../src/abi/guest-abi.js";
import { kernelLayout } from "../../src/kvm/native.js";
import { decodeRegs, encodeRegs, zeroRegs } from "../../src/kvm/structs.js";

describe("kvm_regs", () => {
  const L = kernelLayout("kvm_regs");
  const base = 24;
  const view = new DataView(new ArrayBuffer(base + L.size));

  it("decodes every register from its own offset", () => {
    REG_NAMES.forEach((r, i) => {
      view.setBigUint64(base + L.off(r), 0x1111_0000_0000_0000n * BigInt(i + 1) + BigInt(i), true);
    });
    const regs = decodeRegs(view, base);
    assert.deepEqual(Object.keys(regs), [...REG_NAMES]);
    REG_NAMES.forEach((r, i) => {
      assert.equal(regs[r], BigInt.asUintN(64, 0x1111_0000_0000_0000n * BigInt(i + 1) + BigInt(i)), r);
    });
  });

  it("encodes every register to its own offset, negative values as two's complement", () => {
    const regs = zeroRegs();
    assert.deepEqual(Object.keys(regs), [...REG_NAMES]);
    REG_NAMES.forEach((r, i) => {
      regs[r] = BigInt(i + 1) * 0x0101n;
    });
    regs.rflags = -2n;
    encodeRegs(regs, view, base);
    for (const r of REG_NAMES) assert.equal(view.getBigUint64(base + L.off(r), true), BigInt.asUintN(64, regs[r]), r);
    assert.deepEqual(decodeRegs(view, base), { ...regs, rflags: BigInt.asUintN(64, -2n) });
  });
});
