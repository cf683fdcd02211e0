import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GuardvisorError } from "../../src/errors.js";
import { makeRegions } from "../../src/model/regions.js";
import { ProtectionMap, planMemorySlots } from "../../src/vmm/protection.js";

const MEM = 8 * 1024 * 1024;
const regions = makeRegions(
  [
    { name: ".rodata", start: 0x102000, end: 0x102800 },
    { name: ".text", start: 0x100000, end: 0x101234 },
  ],
  MEM,
);

describe("protected regions", () => {
  it("are sorted and numbered from 1", () => {
    assert.deepEqual(
      regions.map((r) => [r.id, r.name]),
      [
        [1, ".text"],
        [2, ".rodata"],
      ],
    );
  });

  it("reject overlap and ranges outside RAM", () => {
    assert.throws(
      () =>
        makeRegions(
          [
            { name: "a", start: 0x1000, end: 0x3000 },
            { name: "b", start: 0x2000, end: 0x4000 },
          ],
          MEM,
        ),
      (e: unknown) => e instanceof GuardvisorError && e.code === "ELF_LAYOUT" && /a and b overlap/.test(e.message),
    );
    assert.throws(() => makeRegions([{ name: "x", start: MEM - 16, end: MEM + 16 }], MEM), GuardvisorError);
  });
});

describe("planMemorySlots", () => {
  it("covers RAM exactly with read-only slots over protected pages", () => {
    const slots = planMemorySlots(MEM, regions);
    assert.deepEqual(slots, [
      { gpa: 0, size: 0x100000, readonly: false },
      { gpa: 0x100000, size: 0x3000, readonly: true }, // .text pages and the adjacent .rodata page, merged
      { gpa: 0x103000, size: MEM - 0x103000, readonly: false },
    ]);
    let at = 0;
    for (const s of slots) {
      assert.equal(s.gpa, at);
      assert.equal(s.gpa % 4096, 0);
      at += s.size;
    }
    assert.equal(at, MEM);
  });

  it("merges regions that share a page", () => {
    const r = makeRegions(
      [
        { name: "a", start: 0x5000, end: 0x5100 },
        { name: "b", start: 0x5200, end: 0x6100 },
      ],
      MEM,
    );
    const ro = planMemorySlots(MEM, r).filter((s) => s.readonly);
    assert.deepEqual(ro, [{ gpa: 0x5000, size: 0x2000, readonly: true }]);
  });

  it("gives one writable slot when nothing is protected", () => {
    assert.deepEqual(planMemorySlots(MEM, []), [{ gpa: 0, size: MEM, readonly: false }]);
  });
});

describe("ProtectionMap.classifyWrite", () => {
  const map = new ProtectionMap(regions, MEM);

  it("names the region and offset of a protected write", () => {
    const t = map.classifyWrite(0x100010, 4);
    assert.equal(t.kind, "protected");
    assert.equal(t.kind === "protected" && t.region.name, ".text");
    assert.equal(t.kind === "protected" && t.offset, 0x10);
  });

  it("treats a write that touches any protected byte as protected", () => {
    const t = map.classifyWrite(0x101230, 8); // last 4 bytes of .text + 4 after
    assert.equal(t.kind, "protected");
    const before = map.classifyWrite(0x101ffc, 8); // straddles into .rodata's page? no: .rodata starts 0x102000
    assert.equal(before.kind, "protected");
    assert.equal(before.kind === "protected" && before.region.name, ".rodata");
  });

  it("recognises unprotected bytes on a read-only page", () => {
    assert.deepEqual(map.classifyWrite(0x101800, 8), { kind: "shared-page" });
    assert.deepEqual(map.classifyWrite(0x102800, 1), { kind: "shared-page" });
  });

  it("recognises ordinary RAM and addresses outside RAM", () => {
    assert.deepEqual(map.classifyWrite(0x200000, 8), { kind: "writable" });
    assert.deepEqual(map.classifyWrite(MEM, 1), { kind: "unbacked" });
    assert.deepEqual(map.classifyWrite(MEM - 4, 8), { kind: "unbacked" });
    assert.deepEqual(map.classifyWrite(-8, 8), { kind: "unbacked" });
  });

  it("counts protected bytes", () => {
    assert.equal(map.protectedBytes, 0x1234 + 0x800);
  });
});
