/** Synthetic bzImages for the Linux boot tests: a setup header per the x86 boot protocol, no real kernel. */
import { gzipSync } from "node:zlib";
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
