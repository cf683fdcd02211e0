/** The 64-bit boot protocol: memory plan, zero page, page tables, GDT, entry state; and the host-side decompression. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GuardvisorError } from "../../src/errors.js";
import {
  BOOT_CS,
  BOOT_DS,
  BP,
  buildZeroPage,
  DEFAULT_LINUX_CMDLINE,
  E820_ENTRY_SIZE,
  E820_RAM,
  E820_RESERVED,
  LINUX_CMDLINE,
  LINUX_GDT,
  LINUX_LOAD_ADDR,
  LINUX_PD,
  LINUX_PDPT,
  LINUX_PML4,
  LINUX_ZERO_PAGE,
  linuxBootRegs,
  linuxBootSregs,
  MIB,
  planLinuxBoot,
  writeLinuxBoot,
} from "../../src/linux/boot-params.js";
import { HDR, parseBzImage } from "../../src/linux/bzimage.js";
import { decompressPayload, parseVmlinux } from "../../src/linux/vmlinux.js";
import { fakeBzImage, fakeVmlinux } from "./linux-fixtures.js";

const MEM = 64 * MIB;

function configError(pattern: RegExp) {
  return (e: unknown) => e instanceof GuardvisorError && e.code === "CONFIG_INVALID" && pattern.test(e.message);
}

describe("Linux boot plan", () => {
  const image = parseBzImage(fakeBzImage({ initSize: 0x800000 }));

  it("puts the kernel at 16 MiB, the entry 0x200 into it, and the initrd at the top of RAM", () => {
    const initrd = new Uint8Array(10_000).fill(7);
    const plan = planLinuxBoot(image, { memSize: MEM, cmdline: "console=ttyS0", initrd });
    assert.equal(plan.kernelAddr, LINUX_LOAD_ADDR);
    assert.equal(plan.kernelAddr, 0x1000000);
    assert.equal(plan.entry, 0x1000200);
    assert.equal(plan.kernelEnd, 0x1800000);
    assert.deepEqual(plan.initrd, { addr: MEM - 3 * 4096, size: 10_000 });
    assert.deepEqual(plan.e820, [
      { addr: 0, size: 0x9fc00, type: E820_RAM },
      { addr: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820_RESERVED },
      { addr: 0x100000, size: MEM - 0x100000, type: E820_RAM },
    ]);
  });

  it("keeps the initrd below initrd_addr_max", () => {
    const low = parseBzImage(fakeBzImage({ initSize: 0x800000, initrdAddrMax: 0x2ffffff }));
    const plan = planLinuxBoot(low, { memSize: 128 * MIB, cmdline: "", initrd: new Uint8Array(4096) });
    assert.equal(plan.initrd?.addr, 0x3000000 - 4096);
  });

  it("refuses what does not fit, naming the field", () => {
    assert.throws(() => planLinuxBoot(image, { memSize: 32 * MIB, cmdline: "" }), configError(/memory: .*64 to 3072/));
    const big = parseBzImage(fakeBzImage({ initSize: 60 * MIB }));
    assert.throws(() => planLinuxBoot(big, { memSize: MEM, cmdline: "" }), configError(/too small/));
    assert.throws(
      () => planLinuxBoot(image, { memSize: MEM, cmdline: "", initrd: new Uint8Array(41 * MIB) }),
      configError(/initrd: .*do not fit/),
    );
    assert.throws(
      () => planLinuxBoot(image, { memSize: MEM, cmdline: "a".repeat(0x800) }),
      configError(/at most 2047/),
    );
    assert.throws(() => planLinuxBoot(image, { memSize: MEM, cmdline: "tab\there" }), configError(/printable ASCII/));
    const fixed = parseBzImage(fakeBzImage({ relocatable: false, prefAddress: 0x2000000n }));
    assert.throws(() => planLinuxBoot(fixed, { memSize: MEM, cmdline: "" }), configError(/not relocatable/));
    const aligned = parseBzImage(fakeBzImage({ kernelAlignment: 0x2000000 }));
    assert.throws(() => planLinuxBoot(aligned, { memSize: MEM, cmdline: "" }), configError(/alignment/));
  });

  it("builds the zero page: the image's setup header, the loader's fields and the e820 table", () => {
    const initrd = new Uint8Array(5000);
    const plan = planLinuxBoot(image, { memSize: MEM, cmdline: DEFAULT_LINUX_CMDLINE, initrd });
    const zp = buildZeroPage(image, plan);
    const v = new DataView(zp.buffer);
    assert.equal(zp.length, 4096);
    // The header is copied: version, HdrS, init_size.
    assert.equal(v.getUint16(HDR.VERSION, true), 0x020f);
    assert.equal(v.getUint32(HDR.HEADER, true), 0x53726448);
    assert.equal(v.getUint32(HDR.INIT_SIZE, true), 0x800000);
    assert.equal(v.getUint8(HDR.TYPE_OF_LOADER), 0xff);
    assert.equal(v.getUint8(HDR.LOADFLAGS), 0x01);
    assert.equal(v.getUint32(HDR.CMD_LINE_PTR, true), LINUX_CMDLINE);
    assert.equal(v.getUint32(HDR.RAMDISK_IMAGE, true), plan.initrd?.addr);
    assert.equal(v.getUint32(HDR.RAMDISK_SIZE, true), 5000);
    assert.equal(v.getUint16(BP.VID_MODE, true), 0xffff);
    assert.equal(v.getUint8(BP.E820_ENTRIES), 3);
    const e = (i: number) => {
      const at = BP.E820_TABLE + i * E820_ENTRY_SIZE;
      return [Number(v.getBigUint64(at, true)), Number(v.getBigUint64(at + 8, true)), v.getUint32(at + 16, true)];
    };
    assert.deepEqual(e(0), [0, 0x9fc00, 1]);
    assert.deepEqual(e(2), [0x100000, MEM - 0x100000, 1]);
    // Nothing past the header but the loader's fields: the header area ends where the file's does.
    assert.equal(v.getUint32(0x270, true), 0);
  });

  it("writes GDT, page tables, command line, kernel and initrd into RAM", () => {
    const initrd = new Uint8Array(5000).fill(0xab);
    const plan = planLinuxBoot(image, { memSize: MEM, cmdline: "console=ttyS0 gv.scenario=x", initrd });
    const ram = new Uint8Array(MEM);
    writeLinuxBoot(ram, image, plan, initrd);
    const v = new DataView(ram.buffer);
    // GDT: __BOOT_CS 0x10 64-bit code, __BOOT_DS 0x18 flat data.
    assert.equal(v.getBigUint64(LINUX_GDT + BOOT_CS, true), 0x00af9b000000ffffn);
    assert.equal(v.getBigUint64(LINUX_GDT + BOOT_DS, true), 0x00cf93000000ffffn);
    // Page tables: PML4 -> PDPT -> 4 PDs of 2 MiB pages, identity.
    assert.equal(v.getBigUint64(LINUX_PML4, true), BigInt(LINUX_PDPT) | 3n);
    assert.equal(v.getBigUint64(LINUX_PDPT + 8 * 3, true), BigInt(LINUX_PD + 3 * 4096) | 3n);
    assert.equal(v.getBigUint64(LINUX_PD + 8 * 8, true), BigInt(16 * MIB) | 0x83n);
    assert.equal(v.getBigUint64(LINUX_PD + 8 * 2047, true), (BigInt(4096 - 2) * BigInt(MIB)) | 0x83n);
    assert.equal(
      Buffer.from(ram.subarray(LINUX_CMDLINE, LINUX_CMDLINE + 28)).toString("latin1"),
      "console=ttyS0 gv.scenario=x\0",
    );
    assert.equal(ram[LINUX_LOAD_ADDR], 0x90);
    assert.equal(ram[(plan.initrd?.addr ?? 0) + 4999], 0xab);
    assert.equal(v.getUint32(LINUX_ZERO_PAGE + HDR.HEADER, true), 0x53726448);
  });

  it("enters long mode at the 64-bit entry with RSI at the zero page and interrupts off", () => {
    const plan = planLinuxBoot(image, { memSize: MEM, cmdline: "" });
    const r = linuxBootRegs(plan);
    assert.equal(r.rip, 0x1000200n);
    assert.equal(r.rsi, BigInt(LINUX_ZERO_PAGE));
    assert.equal(r.rflags & 0x200n, 0n);
    const seg = {
      base: 1n,
      limit: 0,
      selector: 0,
      type: 0,
      present: 0,
      dpl: 0,
      db: 0,
      s: 0,
      l: 0,
      g: 0,
      avl: 0,
      unusable: 1,
    };
    const current = {
      cs: seg,
      ds: seg,
      es: seg,
      fs: seg,
      gs: seg,
      ss: seg,
      tr: seg,
      ldt: seg,
      gdt: { base: 0n, limit: 0 },
      idt: { base: 0n, limit: 0 },
      cr0: 0n,
      cr2: 0n,
      cr3: 0n,
      cr4: 0n,
      cr8: 0n,
      efer: 0n,
      apicBase: 0xfee00900n,
    };
    const s = linuxBootSregs(current);
    assert.equal(s.cs.selector, BOOT_CS);
    assert.equal(s.cs.l, 1);
    assert.equal(s.ds.selector, BOOT_DS);
    assert.equal(s.ss.selector, BOOT_DS);
    assert.equal(s.cr3, BigInt(LINUX_PML4));
    assert.equal(s.cr0 & 0x80000001n, 0x80000001n);
    assert.equal(s.cr4 & 0x20n, 0x20n);
    assert.equal(s.efer & 0x500n, 0x500n);
    assert.equal(s.gdt.base, BigInt(LINUX_GDT));
    assert.equal(s.gdt.limit, 31);
    assert.equal(s.apicBase, 0xfee00900n); // what KVM set is kept
  });
});

describe("host-side decompression of the payload", () => {
  const text = new Uint8Array(0x3000).fill(0xcc);
  const data = new Uint8Array(0x1000).fill(0xdd);
  const vmlinux = fakeVmlinux(0x1000000, [
    { paddr: 0x1000000, data: text },
    { paddr: 0x1200000, data, memsz: 0x4000 },
  ]);

  it("loads vmlinux segments at their physical addresses, zeroes the tails and enters at e_entry", () => {
    const image = parseBzImage(fakeBzImage({ vmlinux, initSize: 0x800000 }));
    assert.equal(image.payload.format, "gzip");
    const k = parseVmlinux(decompressPayload(image), MEM);
    assert.equal(k.entry, 0x1000000);
    assert.deepEqual([k.start, k.end], [0x1000000, 0x1204000]);
    const plan = planLinuxBoot(image, { memSize: MEM, cmdline: "", vmlinux: k });
    assert.equal(plan.entry, 0x1000000);
    const ram = new Uint8Array(MEM).fill(0x55);
    writeLinuxBoot(ram, image, plan);
    assert.equal(ram[0x1000000], 0xcc);
    assert.equal(ram[0x1002fff], 0xcc);
    assert.equal(ram[0x1200fff], 0xdd);
    assert.equal(ram[0x1201000], 0); // p_memsz past p_filesz is zeroed
    assert.equal(ram[0x1203fff], 0);
    assert.equal(ram[0x1204000], 0x55);
  });

  it("rejects a payload whose size trailer lies, and hostile ELF headers", () => {
    const image = parseBzImage(fakeBzImage({ vmlinux, initSize: 0x800000 }));
    const bad = image.data.slice();
    bad[bad.length - 1] = 0x7f; // the trailer now claims ~2 GiB
    assert.throws(() => decompressPayload(parseBzImage(bad)), /decompressed size/);
    const invalid = (p: RegExp) => (e: unknown) =>
      e instanceof GuardvisorError && e.code === "LINUX_IMAGE_INVALID" && p.test(e.message);
    assert.throws(() => parseVmlinux(new Uint8Array(10), MEM), invalid(/too short/));
    assert.throws(
      () => parseVmlinux(fakeVmlinux(0x5000000, [{ paddr: 0x1000000, data: text }]), MEM),
      invalid(/entry/),
    );
    assert.throws(
      () => parseVmlinux(fakeVmlinux(0x1000000, [{ paddr: 0x1000000, data: text, memsz: 0x7000000 }]), MEM),
      invalid(/outside/),
    );
    assert.throws(
      () =>
        parseVmlinux(
          fakeVmlinux(0x1000000, [
            { paddr: 0x1000000, data: text },
            { paddr: 0x1001000, data },
          ]),
          MEM,
        ),
      invalid(/overlap/),
    );
    const cut = fakeVmlinux(0x1000000, [{ paddr: 0x1000000, data: text }]);
    assert.throws(() => parseVmlinux(cut.subarray(0, cut.length - 1), MEM), invalid(/past the end/));
    const phnum = cut.slice();
    new DataView(phnum.buffer).setUint16(56, 1000, true);
    assert.throws(() => parseVmlinux(phnum, MEM), invalid(/program headers/));
  });
});
