/**
 * The kernel inside a bzImage, decompressed on the host: the compressed
 * payload (setup header payload_offset/payload_length) holds the ELF vmlinux
 * (stripped, with its relocation table appended), whose PT_LOAD segments go
 * to their physical addresses and whose e_entry is the physical address of
 * startup_64. Loading it this way does on the host what the bzImage's own
 * decompressor would do in the guest, for a kernel loaded at its link
 * address (LINUX_LOAD_ADDR, no KASLR: no relocation to apply).
 *
 * The payload and the ELF are untrusted: sizes are bounded before the
 * decompressor runs, and every header field is checked against the file.
 */
import { spawnSync } from "node:child_process";
import { gunzipSync } from "node:zlib";
import { GuardvisorError } from "../errors.js";
import type { BzImage, PayloadFormat } from "./bzimage.js";

export interface VmlinuxSegment {
  /** Guest-physical load address. */
  paddr: number;
  /** Bytes from the file. */
  data: Uint8Array;
  /** Bytes in memory (the tail past `data` is zeroed). */
  memsz: number;
}

export interface Vmlinux {
  /** Physical entry point (startup_64). */
  entry: number;
  segments: VmlinuxSegment[];
  /** Lowest and highest (exclusive) physical byte any segment occupies. */
  start: number;
  end: number;
}

const invalid = (what: string) => new GuardvisorError("LINUX_IMAGE_INVALID", what);
const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** Largest decompressed kernel accepted. */
export const MAX_VMLINUX_SIZE = 512 * 1024 * 1024;

/** The host tool that decompresses each format the kernel build uses (gzip is done in-process). */
const TOOLS: Partial<Record<PayloadFormat, [string, string[], string]>> = {
  xz: ["xz", ["-dc"], "xz-utils"],
  lzma: ["xz", ["-dc", "--format=lzma"], "xz-utils"],
  zstd: ["zstd", ["-dc"], "zstd"],
  bzip2: ["bzip2", ["-dc"], "bzip2"],
  lz4: ["lz4", ["-dc"], "lz4"],
  lzo: ["lzop", ["-dc"], "lzop"],
};

/** The decompressed payload: the ELF vmlinux (plus whatever the build appended after it). */
export function decompressPayload(image: BzImage): Uint8Array {
  const { offset, length, format } = image.payload;
  const payload = image.kernel.subarray(offset, offset + length);
  // The build appends the decompressed size as the payload's last 4 bytes.
  const expected =
    length >= 4 ? new DataView(payload.buffer, payload.byteOffset + length - 4, 4).getUint32(0, true) : 0;
  if (expected === 0 || expected > MAX_VMLINUX_SIZE) {
    throw invalid(`the payload claims a decompressed size of ${expected} bytes (1 to ${MAX_VMLINUX_SIZE} accepted)`);
  }
  const limit = expected + 1;
  if (format === "elf") return payload;
  // The compressed stream without the size trailer (decompressors reject bytes after their stream).
  const stream = payload.subarray(0, length - 4);
  if (format === "gzip") {
    try {
      return gunzipSync(stream, { maxOutputLength: limit });
    } catch (e) {
      throw invalid(`the gzip payload does not decompress: ${(e as Error).message}`);
    }
  }
  const tool = TOOLS[format];
  if (!tool) throw invalid(`the payload's compression is not recognised (format ${format})`);
  const [cmd, args, pkg] = tool;
  const r = spawnSync(cmd, args, { input: stream, maxBuffer: limit, timeout: 120_000 });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new GuardvisorError("IO", `decompressing a ${format} kernel needs ${cmd} (Debian package ${pkg})`);
    }
    throw invalid(`the ${format} payload does not decompress: ${r.error.message}`);
  }
  if (r.status !== 0) {
    throw invalid(`the ${format} payload does not decompress: ${r.stderr.toString("utf8").trim().split("\n")[0]}`);
  }
  if (r.stdout.length !== expected) {
    throw invalid(`the payload decompressed to ${r.stdout.length} bytes, its trailer says ${expected}`);
  }
  return r.stdout;
}

const PT_LOAD = 1;

/** Parse the decompressed vmlinux: its PT_LOAD segments by physical address, and its physical entry. */
export function parseVmlinux(bytes: Uint8Array, memSize: number): Vmlinux {
  if (bytes.length < 64) throw invalid(`the decompressed kernel is ${bytes.length} bytes, too short for ELF`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, false) !== 0x7f454c46) throw invalid("the decompressed kernel is not an ELF file");
  if (bytes[4] !== 2 || bytes[5] !== 1) throw invalid("the decompressed kernel is not a little-endian ELF64 file");
  if (v.getUint16(18, true) !== 62) throw invalid("the decompressed kernel is not an x86-64 ELF file");
  const entry = v.getBigUint64(24, true);
  const phoff = v.getBigUint64(32, true);
  const phentsize = v.getUint16(54, true);
  const phnum = v.getUint16(56, true);
  if (phentsize < 56 || phnum === 0 || phnum > 64) {
    throw invalid(`the decompressed kernel has ${phnum} program headers of ${phentsize} bytes`);
  }
  if (phoff + BigInt(phentsize * phnum) > BigInt(bytes.length)) {
    throw invalid("the decompressed kernel's program headers lie past its end");
  }
  const segments: VmlinuxSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = Number(phoff) + i * phentsize;
    if (v.getUint32(at, true) !== PT_LOAD) continue;
    const offset = v.getBigUint64(at + 8, true);
    const paddr = v.getBigUint64(at + 24, true);
    const filesz = v.getBigUint64(at + 32, true);
    const memsz = v.getBigUint64(at + 40, true);
    if (memsz === 0n) continue;
    if (filesz > memsz) throw invalid(`vmlinux segment ${i}: p_filesz ${hex(filesz)} exceeds p_memsz ${hex(memsz)}`);
    if (offset + filesz > BigInt(bytes.length)) throw invalid(`vmlinux segment ${i} lies past the end of the file`);
    if (paddr < 0x100000n || paddr + memsz > BigInt(memSize)) {
      throw invalid(
        `vmlinux segment ${i} [${hex(paddr)}, ${hex(paddr + memsz)}) is outside [1 MiB, RAM end ${hex(memSize)})`,
      );
    }
    segments.push({
      paddr: Number(paddr),
      data: bytes.subarray(Number(offset), Number(offset + filesz)),
      memsz: Number(memsz),
    });
  }
  if (segments.length === 0) throw invalid("the decompressed kernel has no loadable segment");
  const sorted = [...segments].sort((a, b) => a.paddr - b.paddr);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1] as VmlinuxSegment;
    if ((sorted[i] as VmlinuxSegment).paddr < prev.paddr + prev.memsz) throw invalid("vmlinux segments overlap");
  }
  const start = (sorted[0] as VmlinuxSegment).paddr;
  const end = Math.max(...sorted.map((s) => s.paddr + s.memsz));
  if (!sorted.some((s) => entry >= BigInt(s.paddr) && entry < BigInt(s.paddr + s.memsz))) {
    throw invalid(`the vmlinux entry ${hex(entry)} is not a physical address inside a loaded segment`);
  }
  return { entry: Number(entry), segments: sorted, start, end };
}
