/**
 * The <linux/kvm.h> register structs (src/kvm/structs.ts): each register is
 * read from and written to the offset the addon's offsetof() table gives it,
 * whatever order the decoder spells them out in.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { REG_NAMES } from "../../src/abi/guest-abi.js";
import { kernelLayout } from "../../src/kvm/native.js";
import { decodeRegs, decodeSregs, encodeRegs, zeroRegs } from "../../src/kvm/structs.js";

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

describe("kvm_sregs", () => {
  const L = kernelLayout("kvm_sregs");
  const view = new DataView(new ArrayBuffer(8 + L.size));

  it("hands out the same frozen set while the bytes stay the same, and a new one when they change", () => {
    view.setBigUint64(8 + L.off("cr3"), 0x1000n, true);
    const a = decodeSregs(view, 8);
    assert.equal(a.cr3, 0x1000n);
    assert.ok(Object.isFrozen(a) && Object.isFrozen(a.cs) && Object.isFrozen(a.idt));
    assert.throws(() => {
      (a as { cr3: bigint }).cr3 = 0n;
    }, TypeError);
    assert.equal(decodeSregs(view, 8), a, "unchanged bytes: the same set");
    view.setBigUint64(8 + L.off("cr3"), 0x2000n, true);
    const b = decodeSregs(view, 8);
    assert.notEqual(b, a);
    assert.equal(b.cr3, 0x2000n);
    assert.equal(a.cr3, 0x1000n, "the set handed out before is unchanged");
    assert.deepEqual({ ...b, cr3: 0x1000n }, a, "only CR3 differs");
  });

  it("decodes at an offset that is not 4-aligned too", () => {
    const odd = new DataView(new ArrayBuffer(3 + L.size));
    odd.setBigUint64(3 + L.off("cr4"), 0x20n, true);
    assert.equal(decodeSregs(odd, 3).cr4, 0x20n);
    odd.setBigUint64(3 + L.off("cr4"), 0x620n, true);
    assert.equal(decodeSregs(odd, 3).cr4, 0x620n);
  });
});
