import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { BOOT_INFO, ABI_CONSTANTS as C } from "../../src/abi/guest-abi.js";
import { readField } from "../../src/abi/layout.js";
import { GuardvisorError } from "../../src/errors.js";
import { GuestMemory } from "../../src/kvm/guest-memory.js";
import { MIB, validateMemMiB, writeBootArea } from "../../src/vmm/boot.js";
import { readVirtual, translate } from "../../src/vmm/paging.js";

const mem = GuestMemory.allocate(32 * MIB);
after(() => mem.release());
writeBootArea(mem, { memSize: mem.size, cmdline: "scenario=benign role=guest", role: 0, vmId: 5 });

describe("boot area", () => {
  it("identity-maps RAM, with page 0 absent", () => {
    const cr3 = BigInt(C.BOOT_PML4);
    assert.equal(translate(mem, cr3, 0n), undefined);
    assert.equal(translate(mem, cr3, 0xfffn), undefined);
    for (const a of [0x1000, 0x1234, 0x100000, 0x1ff000, 0x200000, 0x1456789, mem.size - 1]) {
      assert.equal(translate(mem, cr3, BigInt(a)), a, `0x${a.toString(16)}`);
    }
    assert.equal(translate(mem, cr3, BigInt(1 << 30)), undefined);
    assert.equal(translate(mem, cr3, 0xffff800000000000n), undefined);
    assert.equal(translate(mem, cr3, 0x0000800000000000n), undefined, "non-canonical");
  });

  it("writes boot info and the command line", () => {
    const v = new DataView(mem.bytes.buffer, C.BOOT_INFO, BOOT_INFO.size);
    assert.equal(readField(v, 0, BOOT_INFO, "magic"), C.BOOT_MAGIC);
    assert.equal(readField(v, 0, BOOT_INFO, "mem_size"), 32n * BigInt(MIB));
    assert.equal(readField(v, 0, BOOT_INFO, "vm_id"), 5);
    assert.equal(mem.readCString(C.BOOT_CMDLINE, C.BOOT_CMDLINE_MAX), "scenario=benign role=guest");
    assert.equal(readField(v, 0, BOOT_INFO, "cmdline_len"), "scenario=benign role=guest".length);
  });

  it("reads virtual memory across pages and stops where the mapping ends", () => {
    mem.write(0x1ffffe, Uint8Array.of(1, 2, 3, 4)); // crosses from a 4 KiB page into a 2 MiB page
    assert.deepEqual([...readVirtual(mem, BigInt(C.BOOT_PML4), 0x1ffffen, 4)], [1, 2, 3, 4]);
    assert.equal(readVirtual(mem, BigInt(C.BOOT_PML4), BigInt(mem.size - 2), 16).length, 2);
  });

  it("survives hostile page tables (entries pointing outside RAM)", () => {
    const m = GuestMemory.allocate(4 * MIB);
    try {
      m.writeU64(0x1000, 0xfffff000n | 1n); // PML4[0] -> far outside RAM
      assert.equal(translate(m, 0x1000n, 0x5000n), undefined);
      assert.equal(translate(m, BigInt(m.size + 0x1000), 0x5000n), undefined);
    } finally {
      m.release();
    }
  });

  it("validates memory size and command line", () => {
    assert.equal(validateMemMiB(32), 32 * MIB);
    for (const bad of [0, 2, 3, 31, 4098, 1e9, 1.5]) {
      assert.throws(
        () => validateMemMiB(bad),
        (e: unknown) => e instanceof GuardvisorError && /--mem/.test(e.message),
      );
    }
    assert.throws(
      () => writeBootArea(mem, { memSize: mem.size, cmdline: "x".repeat(4000), role: 0, vmId: 0 }),
      /cmdline/,
    );
    assert.throws(() => writeBootArea(mem, { memSize: mem.size, cmdline: "a\nb", role: 0, vmId: 0 }), /cmdline/);
  });
});

describe("guest memory bounds", () => {
  it("rejects every access outside RAM", () => {
    const n = mem.size;
    for (const [gpa, len] of [
      [n, 1],
      [n - 1, 2],
      [-1, 1],
      [0, n + 1],
      [Number.MAX_SAFE_INTEGER, 1],
      [0.5, 1],
      [Number.NaN, 1],
    ] as const) {
      assert.throws(
        () => mem.slice(gpa, len),
        (e: unknown) => e instanceof GuardvisorError && e.code === "GUEST_MEMORY_BOUNDS",
      );
    }
    assert.throws(() => mem.readU64(n - 4), GuardvisorError);
    assert.throws(() => mem.write(n - 1, Uint8Array.of(1, 2)), GuardvisorError);
    assert.equal(mem.slice(n - 1, 1).length, 1);
    assert.equal(mem.slice(n, 0).length, 0);
  });
});
