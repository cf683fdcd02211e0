/**
 * A Linux bzImage, parsed and checked against the x86 boot protocol
 * (Documentation/arch/x86/boot.rst). The file is untrusted: every offset and
 * size is checked against the file before it is used, and every violation is
 * one LINUX_IMAGE_INVALID error saying what is wrong.
 *
 * Guardvisor boots through the 64-bit entry point, so it needs protocol 2.12
 * or newer (xloadflags), LOADED_HIGH and XLF_KERNEL_64.
 */
import { GuardvisorError } from "../errors.js";

/** Offsets of the setup header fields in the file (and in struct boot_params). */
export const HDR = {
  SETUP_SECTS: 0x1f1,
  SYSSIZE: 0x1f4,
  BOOT_FLAG: 0x1fe,
  JUMP: 0x200,
  HEADER: 0x202,
  VERSION: 0x206,
  TYPE_OF_LOADER: 0x210,
  LOADFLAGS: 0x211,
  CODE32_START: 0x214,
  RAMDISK_IMAGE: 0x218,
  RAMDISK_SIZE: 0x21c,
  HEAP_END_PTR: 0x224,
  CMD_LINE_PTR: 0x228,
  INITRD_ADDR_MAX: 0x22c,
  KERNEL_ALIGNMENT: 0x230,
  RELOCATABLE_KERNEL: 0x234,
  MIN_ALIGNMENT: 0x235,
  XLOADFLAGS: 0x236,
  CMDLINE_SIZE: 0x238,
  HARDWARE_SUBARCH: 0x23c,
  PAYLOAD_OFFSET: 0x248,
  PAYLOAD_LENGTH: 0x24c,
  SETUP_DATA: 0x250,
  PREF_ADDRESS: 0x258,
  INIT_SIZE: 0x260,
  HANDOVER_OFFSET: 0x264,
} as const;

/** "HdrS" read as a little-endian u32. */
export const HDR_MAGIC = 0x53726448;
export const BOOT_FLAG = 0xaa55;
export const MIN_PROTOCOL = 0x020c;
/** The setup header must reach at least init_size (0x260..0x263) to be a 2.10+ header. */
const MIN_HEADER_END = HDR.INIT_SIZE + 4;
/** Where struct boot_params stops holding the setup header (edd_mbr_sig_buffer begins). */
export const HEADER_AREA_END = 0x290;

export const LOADFLAG_LOADED_HIGH = 0x01;
export const LOADFLAG_KEEP_SEGMENTS = 0x40;
export const LOADFLAG_CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 0x02;

const SECTOR = 512;
/** Largest bzImage accepted (a Debian kernel is about 8 MiB). */
export const MAX_IMAGE_SIZE = 256 * 1024 * 1024;
/** Largest memory a kernel may ask for while it decompresses and starts (init_size). */
export const MAX_INIT_SIZE = 1024 * 1024 * 1024;

export type PayloadFormat = "gzip" | "bzip2" | "lzma" | "xz" | "lzo" | "lz4" | "zstd" | "elf" | "unknown";

export interface BzImage {
  /** The whole file. */
  readonly data: Uint8Array;
  /** Boot protocol version, e.g. 0x020f for 2.15. */
  readonly protocol: number;
  /** Number of 512-byte setup sectors after the boot sector (0 in the file means 4). */
  readonly setupSects: number;
  /** The real-mode setup code and header: the first (setupSects + 1) * 512 bytes. */
  readonly setup: Uint8Array;
  /** The protected-mode kernel: everything after the setup. It is copied to the load address. */
  readonly kernel: Uint8Array;
  /** The setup header bytes as in the file, from 0x1f1 to its end (0x202 + the byte at 0x201). */
  readonly header: Uint8Array;
  readonly loadflags: number;
  readonly xloadflags: number;
  readonly relocatable: boolean;
  /** Alignment a relocatable kernel must be loaded at (a power of two). */
  readonly kernelAlignment: number;
  readonly prefAddress: bigint;
  /** Bytes the kernel needs from its load address on while it decompresses and starts. */
  readonly initSize: number;
  /** Highest address the initrd may occupy (its last byte). */
  readonly initrdAddrMax: number;
  /** Longest command line the kernel accepts, without the terminating NUL. */
  readonly cmdlineSize: number;
  /** The compressed kernel inside the protected-mode part. */
  readonly payload: { offset: number; length: number; format: PayloadFormat };
}

const invalid = (what: string) => new GuardvisorError("LINUX_IMAGE_INVALID", what);

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** The compression of a payload, from its first bytes (what the kernel's decompressor accepts). */
export function payloadFormat(b: Uint8Array): PayloadFormat {
  const at = (i: number) => b[i] ?? -1;
  if (at(0) === 0x1f && (at(1) === 0x8b || at(1) === 0x9e)) return "gzip";
  if (at(0) === 0x42 && at(1) === 0x5a && at(2) === 0x68) return "bzip2";
  if (at(0) === 0x5d && at(1) === 0x00 && at(2) === 0x00) return "lzma";
  if (at(0) === 0xfd && at(1) === 0x37 && at(2) === 0x7a && at(3) === 0x58 && at(4) === 0x5a && at(5) === 0x00)
    return "xz";
  if (at(0) === 0x89 && at(1) === 0x4c && at(2) === 0x5a && at(3) === 0x4f) return "lzo";
  if (at(0) === 0x02 && at(1) === 0x21 && at(2) === 0x4c && at(3) === 0x18) return "lz4";
  if (at(0) === 0x28 && at(1) === 0xb5 && at(2) === 0x2f && at(3) === 0xfd) return "zstd";
  if (at(0) === 0x7f && at(1) === 0x45 && at(2) === 0x4c && at(3) === 0x46) return "elf";
  return "unknown";
}

/** Parse and validate a bzImage. Throws LINUX_IMAGE_INVALID with a one-line reason. */
export function parseBzImage(data: Uint8Array, name = "the kernel image"): BzImage {
  if (data.length > MAX_IMAGE_SIZE) {
    throw invalid(`${name} is ${data.length} bytes, larger than the ${MAX_IMAGE_SIZE / 1024 / 1024} MiB accepted`);
  }
  if (data.length < HDR.HEADER + 4) throw invalid(`${name} is not a bzImage: ${data.length} bytes is too short`);
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const u8 = (o: number) => v.getUint8(o);
  const u16 = (o: number) => v.getUint16(o, true);
  const u32 = (o: number) => v.getUint32(o, true);
  if (u32(HDR.HEADER) !== HDR_MAGIC) {
    if (u32(0) === 0x464c457f) {
      throw invalid(`${name} is an ELF file (vmlinux?), not a bzImage: boot the bzImage (vmlinuz)`);
    }
    throw invalid(`${name} is not a bzImage: no "HdrS" magic at 0x202`);
  }
  if (u16(HDR.BOOT_FLAG) !== BOOT_FLAG) throw invalid(`${name} is not a bzImage: no boot flag 0xaa55 at 0x1fe`);
  const protocol = u16(HDR.VERSION);
  const ver = `${protocol >> 8}.${protocol & 0xff}`;
  if (protocol < MIN_PROTOCOL) {
    throw invalid(`${name} uses boot protocol ${ver}; Guardvisor needs 2.12 or newer (a kernel from 2012 on)`);
  }
  const headerEnd = HDR.HEADER + u8(HDR.JUMP + 1);
  if (headerEnd < MIN_HEADER_END || headerEnd > HEADER_AREA_END) {
    throw invalid(`${name}: setup header ends at ${hex(headerEnd)}; protocol ${ver} needs it between 0x264 and 0x290`);
  }
  if (headerEnd > data.length) throw invalid(`${name} is truncated: the setup header ends past the end of the file`);
  const sects = u8(HDR.SETUP_SECTS);
  const setupSects = sects === 0 ? 4 : sects;
  const setupSize = (setupSects + 1) * SECTOR;
  if (setupSize < headerEnd) throw invalid(`${name}: ${setupSects} setup sectors cannot hold the setup header`);
  if (setupSize >= data.length) {
    throw invalid(`${name} is truncated: ${setupSects} setup sectors leave no protected-mode kernel`);
  }
  const loadflags = u8(HDR.LOADFLAGS);
  if ((loadflags & LOADFLAG_LOADED_HIGH) === 0) {
    throw invalid(`${name} is a zImage (loadflags lack LOADED_HIGH); only a bzImage loaded at 1 MiB or above boots`);
  }
  const xloadflags = u16(HDR.XLOADFLAGS);
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw invalid(`${name} is not a 64-bit kernel: xloadflags ${hex(xloadflags)} lack XLF_KERNEL_64`);
  }
  const kernelAlignment = u32(HDR.KERNEL_ALIGNMENT);
  if (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0) {
    throw invalid(`${name}: kernel_alignment ${hex(kernelAlignment)} is not a power of two`);
  }
  const initSize = u32(HDR.INIT_SIZE);
  const kernel = data.subarray(setupSize);
  if (initSize === 0 || initSize > MAX_INIT_SIZE) {
    throw invalid(`${name}: init_size ${hex(initSize)} is out of range (1 byte to 1 GiB)`);
  }
  if (initSize < kernel.length) {
    throw invalid(
      `${name}: init_size ${hex(initSize)} is smaller than the ${kernel.length}-byte protected-mode kernel`,
    );
  }
  const payloadOffset = u32(HDR.PAYLOAD_OFFSET);
  const payloadLength = u32(HDR.PAYLOAD_LENGTH);
  if (payloadLength === 0 || payloadOffset > kernel.length || payloadLength > kernel.length - payloadOffset) {
    throw invalid(
      `${name}: payload [${hex(payloadOffset)}, +${hex(payloadLength)}) lies outside the ${kernel.length}-byte protected-mode kernel`,
    );
  }
  const cmdlineSize = u32(HDR.CMDLINE_SIZE);
  if (cmdlineSize === 0) throw invalid(`${name}: cmdline_size is 0`);
  const initrdAddrMax = u32(HDR.INITRD_ADDR_MAX);
  if (initrdAddrMax < 0x100000) throw invalid(`${name}: initrd_addr_max ${hex(initrdAddrMax)} is below 1 MiB`);
  return {
    data,
    protocol,
    setupSects,
    setup: data.subarray(0, setupSize),
    kernel,
    header: data.subarray(HDR.SETUP_SECTS, headerEnd),
    loadflags,
    xloadflags,
    relocatable: u8(HDR.RELOCATABLE_KERNEL) !== 0,
    kernelAlignment,
    prefAddress: v.getBigUint64(HDR.PREF_ADDRESS, true),
    initSize,
    initrdAddrMax,
    cmdlineSize,
    payload: {
      offset: payloadOffset,
      length: payloadLength,
      format: payloadFormat(kernel.subarray(payloadOffset, payloadOffset + 8)),
    },
  };
}

/** "2.15" */
export function protocolString(image: BzImage): string {
  return `${image.protocol >> 8}.${image.protocol & 0xff}`;
}
