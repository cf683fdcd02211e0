/** Synthetic bzImages for the Linux boot tests: a setup header per the x86 boot protocol, no real kernel. */

import { gzipSync } from "node:zlib";
import { isGuardvisorError } from "../../src/errors.js";
import { HDR, HDR_MAGIC } from "../../src/linux/bzimage.js";

export interface FakeImage {
  setupSects?: number;
  version?: number;
  loadflags?: number;
  xloadflags?: number;
  relocatable?: boolean;
  kernelAlignment?: number;
  prefAddress?: bigint;
  initSize?: number;
  initrdAddrMax?: number;
  cmdlineSize?: number;
  /** The protected-mode kernel (default: a gzip payload of `vmlinux`, or 4 KiB of 0x90). */
  kernel?: Uint8Array;
  /** An ELF vmlinux to put, gzip-compressed, in the payload. */
  vmlinux?: Uint8Array;
  payload?: { offset: number; length: number };
  /** The byte at 0x201 (header length after 0x202). */
  jump?: number;
}

/** A bzImage with the given header fields; the payload is the whole protected-mode part unless given. */
export function fakeBzImage(o: FakeImage = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  let kernel = o.kernel;
  if (!kernel && o.vmlinux) {
    const z = gzipSync(o.vmlinux);
    const size = Buffer.alloc(4);
    size.writeUInt32LE(o.vmlinux.length);
    kernel = Buffer.concat([z, size]);
  }
  kernel ??= new Uint8Array(4096).fill(0x90);
  const setup = (setupSects === 0 ? 5 : setupSects + 1) * 512;
  const img = new Uint8Array(setup + kernel.length);
  const v = new DataView(img.buffer);
  v.setUint8(HDR.SETUP_SECTS, setupSects);
  v.setUint32(HDR.SYSSIZE, Math.ceil(kernel.length / 16), true);
  v.setUint16(HDR.BOOT_FLAG, 0xaa55, true);
  v.setUint8(HDR.JUMP, 0xeb);
  v.setUint8(HDR.JUMP + 1, o.jump ?? 0x6a);
  v.setUint32(HDR.HEADER, HDR_MAGIC, true);
  v.setUint16(HDR.VERSION, o.version ?? 0x020f, true);
  v.setUint8(HDR.LOADFLAGS, o.loadflags ?? 0x01);
  v.setUint32(HDR.CODE32_START, 0x100000, true);
  v.setUint32(HDR.INITRD_ADDR_MAX, o.initrdAddrMax ?? 0x7fffffff, true);
  v.setUint32(HDR.KERNEL_ALIGNMENT, o.kernelAlignment ?? 0x200000, true);
  v.setUint8(HDR.RELOCATABLE_KERNEL, (o.relocatable ?? true) ? 1 : 0);
  v.setUint8(HDR.MIN_ALIGNMENT, 21);
  v.setUint16(HDR.XLOADFLAGS, o.xloadflags ?? 0x7f, true);
  v.setUint32(HDR.CMDLINE_SIZE, o.cmdlineSize ?? 0x7ff, true);
  v.setUint32(HDR.PAYLOAD_OFFSET, o.payload?.offset ?? 0, true);
  v.setUint32(HDR.PAYLOAD_LENGTH, o.payload?.length ?? kernel.length, true);
  v.setBigUint64(HDR.PREF_ADDRESS, o.prefAddress ?? 0x1000000n, true);
  v.setUint32(HDR.INIT_SIZE, o.initSize ?? 0x400000, true);
  img.set(kernel, setup);
  return img;
}

export interface FakeSegment {
  paddr: number;
  data: Uint8Array;
  memsz?: number;
}

/** A minimal ELF64 x86-64 executable with PT_LOAD segments at physical addresses (vaddr in the kernel's high half). */
export function fakeVmlinux(entry: number, segments: FakeSegment[]): Uint8Array {
  const phoff = 64;
  const dataStart = phoff + 56 * segments.length;
  const size = dataStart + segments.reduce((n, s) => n + s.data.length, 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, BigInt(entry), true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, segments.length, true);
  let off = dataStart;
  segments.forEach((s, i) => {
    const at = phoff + 56 * i;
    v.setUint32(at, 1, true); // PT_LOAD
    v.setUint32(at + 4, 5, true);
    v.setBigUint64(at + 8, BigInt(off), true);
    v.setBigUint64(at + 16, 0xffffffff80000000n + BigInt(s.paddr), true);
    v.setBigUint64(at + 24, BigInt(s.paddr), true);
    v.setBigUint64(at + 32, BigInt(s.data.length), true);
    v.setBigUint64(at + 40, BigInt(s.memsz ?? s.data.length), true);
    out.set(s.data, off);
    off += s.data.length;
  });
  return out;
}

export interface FakeKernelSection {
  name: string;
  /** Virtual address. */
  addr: bigint;
  size: number;
  /** SHF_* (default SHF_ALLOC). */
  flags?: number;
  /** SHT_* (default SHT_PROGBITS). */
  type?: number;
  /** Its bytes in the file (default none: offset 0). */
  data?: Uint8Array;
}

/** The kernel's virtual base: physical = virtual - START_KERNEL_MAP. */
export const START_KERNEL_MAP = 0xffffffff80000000n;

/** The kernel virtual address of physical `p`. */
export const k = (p: number): bigint => START_KERNEL_MAP + BigInt(p);

/** For assert.throws: a GuardvisorError with code `c`. */
export const code =
  (c: string) =>
  (e: unknown): boolean =>
    isGuardvisorError(e) && e.code === c;

/**
 * An ELF64 vmlinux with PT_LOAD segments (virtual, physical, size) and
 * section headers, no contents: enough for kernel-ranges.ts.
 */
export function fakeKernelElf(
  segments: { vaddr: bigint; paddr: number; memsz: number }[],
  sections: FakeKernelSection[],
): Uint8Array {
  const phoff = 64;
  const names = [""];
  const nameAt: number[] = [];
  let strSize = 1;
  for (const s of [...sections.map((x) => x.name), ".shstrtab"]) {
    nameAt.push(strSize);
    names.push(s);
    strSize += s.length + 1;
  }
  const strOff = phoff + 56 * segments.length;
  const shoff = Math.ceil((strOff + strSize) / 8) * 8;
  const shnum = sections.length + 2;
  const dataAt: number[] = [];
  let end = shoff + 64 * shnum;
  for (const s of sections) {
    dataAt.push(s.data ? end : 0);
    end += s.data?.length ?? 0;
  }
  const out = new Uint8Array(end);
  sections.forEach((s, i) => {
    if (s.data) out.set(s.data, dataAt[i] as number);
  });
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(16, 2, true);
  v.setUint16(18, 62, true);
  v.setUint32(20, 1, true);
  v.setBigUint64(24, 0x1000000n, true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setBigUint64(40, BigInt(shoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, segments.length, true);
  v.setUint16(58, 64, true);
  v.setUint16(60, shnum, true);
  v.setUint16(62, shnum - 1, true);
  segments.forEach((s, i) => {
    const at = phoff + 56 * i;
    v.setUint32(at, 1, true);
    v.setBigUint64(at + 16, s.vaddr, true);
    v.setBigUint64(at + 24, BigInt(s.paddr), true);
    v.setBigUint64(at + 40, BigInt(s.memsz), true);
  });
  out.set(Buffer.from(`${names.join("\0")}\0`, "latin1"), strOff);
  sections.forEach((s, i) => {
    const at = shoff + 64 * (i + 1);
    v.setUint32(at, nameAt[i] as number, true);
    v.setUint32(at + 4, s.type ?? 1, true);
    v.setBigUint64(at + 8, BigInt(s.flags ?? 0x2), true);
    v.setBigUint64(at + 16, s.addr, true);
    v.setBigUint64(at + 24, BigInt(dataAt[i] as number), true);
    v.setBigUint64(at + 32, BigInt(s.size), true);
  });
  const str = shoff + 64 * (shnum - 1);
  v.setUint32(str, nameAt[sections.length] as number, true);
  v.setUint32(str + 4, 3, true); // SHT_STRTAB
  v.setBigUint64(str + 24, BigInt(strOff), true);
  v.setBigUint64(str + 32, BigInt(strSize), true);
  return out;
}

/** A small kernel laid out like x86-64's: .text, a gap, .rodata and friends in segment 0; .data in segment 1. */
export function fakeLinuxKernel(): Uint8Array {
  const k = (p: number) => START_KERNEL_MAP + BigInt(p);
  return fakeKernelElf(
    [
      { vaddr: k(0x1000000), paddr: 0x1000000, memsz: 0x2345a0 },
      { vaddr: k(0x1400000), paddr: 0x1400000, memsz: 0x10000 },
    ],
    [
      { name: ".text", addr: k(0x1000000), size: 0x101d32, flags: 0x6 },
      { name: ".rodata", addr: k(0x1200000), size: 0x20000, flags: 0x3 },
      { name: "__ex_table", addr: k(0x1220000), size: 0x1000 },
      { name: ".notes", addr: k(0x1221000), size: 0x1000, type: 7 },
      { name: ".BTF", addr: k(0x1222000), size: 0x125a0 },
      { name: ".data", addr: k(0x1400000), size: 0x10000, flags: 0x3 },
      { name: ".bss", addr: k(0x1410000), size: 0x10000, flags: 0x3, type: 8 },
    ],
  );
}
