/**
 * What of a stock Linux kernel to write-protect, from the image itself: the
 * kernel's code `[_text, _etext)` and its read-only data
 * `[__start_rodata, __end_rodata)` (which holds `.rodata`, the exception
 * table, the notes, BTF and, at its end, the `__ro_after_init` data), at the
 * physical addresses the vmlinux's PT_LOAD segments load them to.
 *
 * From the ELF's section headers: `_text` is `.text`'s address and `_etext`
 * its end (the linker script puts `_etext` right after the section's
 * contents); `__start_rodata` is `.rodata`'s address and `__end_rodata` the
 * end of the last allocated section of the same PT_LOAD segment, rounded up
 * to a page (`RO_DATA(PAGE_SIZE)` aligns it). A System.map's symbols, when
 * given, take precedence, and the two are cross-checked.
 *
 * The ranges are exact bytes; the read-only slots over them are whole pages
 * (src/vmm/protection.ts rounds outward), and writes to unprotected bytes on
 * such a page are performed for the guest. The pages outside the ranges
 * (the text/rodata gap, which Linux frees to its page allocator at
 * mark_rodata_ro()) stay writable.
 *
 * The vmlinux is untrusted: every header field is bounded against the file
 * and every range against guest RAM. Kernel virtual addresses exceed 2^53,
 * so they stay bigints here (src/elf/elf.ts takes only smaller ones).
 */
import { GuardvisorError } from "../errors.js";
import type { RegionRange } from "../model/regions.js";
import type { SystemMap } from "./system-map.js";

export interface KernelSection {
  name: string;
  type: number;
  flags: bigint;
  /** Virtual address. */
  addr: bigint;
  /** Where its bytes start in the file (unchecked: meaningless for NOBITS; check before reading). */
  offset: bigint;
  size: bigint;
}

export interface KernelLoadSegment {
  vaddr: bigint;
  paddr: bigint;
  memsz: bigint;
}

/** One protected range: its name (the policy's region name), virtual and physical extent. */
export interface KernelRange extends RegionRange {
  /** Virtual start (the kernel's own mapping of `start`). */
  readonly vstart: bigint;
}

export interface KernelRanges {
  /** `.text` then `.rodata`, physical addresses, exact bytes. */
  ranges: KernelRange[];
  /** Where the bounds came from. */
  source: "elf" | "system-map";
  /** The ELF- and System.map-derived bounds disagree (only with a System.map): what differs. */
  mismatches: string[];
}

const SHF_ALLOC = 0x2n;
const SHT_NOBITS = 8;
const PT_LOAD = 1;
const PAGE = 4096n;
export const MAX_KERNEL_SECTIONS = 4096;

const invalid = (what: string) => new GuardvisorError("LINUX_IMAGE_INVALID", what);
const hex = (n: bigint | number) => `0x${n.toString(16)}`;
const pageUp = (a: bigint) => ((a + PAGE - 1n) / PAGE) * PAGE;

/** The section headers and PT_LOAD segments of a decompressed vmlinux (addresses as bigints). */
export function readKernelElf(bytes: Uint8Array): { sections: KernelSection[]; segments: KernelLoadSegment[] } {
  if (bytes.length < 64) throw invalid("the vmlinux is too short for an ELF header");
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, false) !== 0x7f454c46 || bytes[4] !== 2 || bytes[5] !== 1) {
    throw invalid("the vmlinux is not a little-endian ELF64 file");
  }
  const size = BigInt(bytes.length);
  const phoff = v.getBigUint64(32, true);
  const shoff = v.getBigUint64(40, true);
  const phentsize = v.getUint16(54, true);
  const phnum = v.getUint16(56, true);
  const shentsize = v.getUint16(58, true);
  const shnum = v.getUint16(60, true);
  const shstrndx = v.getUint16(62, true);
  if (phentsize < 56 || phnum > 64 || phoff + BigInt(phentsize * phnum) > size) {
    throw invalid(
      `the vmlinux's program headers (${phnum} of ${phentsize} bytes at ${hex(phoff)}) do not fit the file`,
    );
  }
  if (shnum === 0) throw invalid("the vmlinux has no section headers: its code and read-only data cannot be found");
  if (shentsize < 64 || shnum > MAX_KERNEL_SECTIONS || shoff + BigInt(shentsize * shnum) > size) {
    throw invalid(
      `the vmlinux's section headers (${shnum} of ${shentsize} bytes at ${hex(shoff)}) do not fit the file`,
    );
  }
  if (shstrndx >= shnum) throw invalid(`the vmlinux's section-name table index ${shstrndx} is not a section`);
  const segments: KernelLoadSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = Number(phoff) + i * phentsize;
    if (v.getUint32(at, true) !== PT_LOAD) continue;
    const memsz = v.getBigUint64(at + 40, true);
    if (memsz === 0n) continue;
    segments.push({ vaddr: v.getBigUint64(at + 16, true), paddr: v.getBigUint64(at + 24, true), memsz });
  }
  const raw = Array.from({ length: shnum }, (_, i) => {
    const at = Number(shoff) + i * shentsize;
    return {
      nameAt: v.getUint32(at, true),
      type: v.getUint32(at + 4, true),
      flags: v.getBigUint64(at + 8, true),
      addr: v.getBigUint64(at + 16, true),
      offset: v.getBigUint64(at + 24, true),
      size: v.getBigUint64(at + 32, true),
    };
  });
  const strtab = raw[shstrndx] as (typeof raw)[number];
  if (strtab.offset + strtab.size > size) throw invalid("the vmlinux's section-name table lies past its end");
  const names = bytes.subarray(Number(strtab.offset), Number(strtab.offset + strtab.size));
  const nameOf = (at: number) => {
    if (at >= names.length) throw invalid(`a vmlinux section name at ${at} lies outside the name table`);
    let end = at;
    while (end < names.length && end - at < 256 && names[end] !== 0) end++;
    return Buffer.from(names.subarray(at, end))
      .toString("latin1")
      .replace(/[^\x21-\x7e]/g, "?");
  };
  const sections = raw.slice(1).map((s) => {
    if (s.addr + s.size > 0xffffffffffffffffn) throw invalid(`a vmlinux section wraps the address space`);
    return { name: nameOf(s.nameAt), type: s.type, flags: s.flags, addr: s.addr, offset: s.offset, size: s.size };
  });
  return { sections, segments };
}

/**
 * The physical address of virtual [va, va + len) through the PT_LOAD segment
 * holding it (up to the end of the segment's last page), or undefined.
 */
function physical(segments: readonly KernelLoadSegment[], va: bigint, len: bigint): bigint | undefined {
  const s = segments.find((g) => va >= g.vaddr && va + len <= pageUp(g.vaddr + g.memsz));
  return s ? s.paddr + (va - s.vaddr) : undefined;
}

interface VirtualBounds {
  text: [bigint, bigint];
  rodata: [bigint, bigint];
}

/** `_text`, `_etext`, `__start_rodata`, `__end_rodata` from the section headers. */
function boundsFromSections(sections: readonly KernelSection[], segments: readonly KernelLoadSegment[]): VirtualBounds {
  const one = (name: string) => {
    const found = sections.filter((s) => s.name === name);
    if (found.length !== 1) throw invalid(`the vmlinux has ${found.length} ${name} sections (one expected)`);
    const s = found[0] as KernelSection;
    if ((s.flags & SHF_ALLOC) === 0n || s.size === 0n) throw invalid(`the vmlinux's ${name} is not loaded memory`);
    return s;
  };
  const text = one(".text");
  const rodata = one(".rodata");
  const seg = segments.find((g) => rodata.addr >= g.vaddr && rodata.addr < g.vaddr + g.memsz);
  if (!seg) throw invalid(`the vmlinux's .rodata at ${hex(rodata.addr)} is in no loadable segment`);
  // The read-only sections: .rodata and the allocated sections after it in the same segment.
  let end = rodata.addr + rodata.size;
  for (const s of sections) {
    if ((s.flags & SHF_ALLOC) === 0n || s.type === SHT_NOBITS || s.addr < rodata.addr) continue;
    if (s.addr + s.size <= seg.vaddr + seg.memsz && s.addr + s.size > end) end = s.addr + s.size;
  }
  return { text: [text.addr, text.addr + text.size], rodata: [rodata.addr, pageUp(end)] };
}

/** The same bounds from a System.map (all four symbols needed). */
function boundsFromMap(map: SystemMap): VirtualBounds {
  const at = (name: string) => {
    const s = map.byName.get(name);
    if (!s) throw new GuardvisorError("LINUX_SYSTEM_MAP_INVALID", `the System.map has no ${name}`);
    return s.address;
  };
  return { text: [at("_text"), at("_etext")], rodata: [at("__start_rodata"), at("__end_rodata")] };
}

/**
 * The kernel's code and read-only data as protected physical ranges, checked
 * to lie in loadable segments and in guest RAM `[1 MiB, memSize)`, in order
 * and apart. With a System.map its symbols decide, and what differs from the
 * section headers is listed in `mismatches`.
 */
export function kernelProtectedRanges(vmlinux: Uint8Array, memSize: number, map?: SystemMap): KernelRanges {
  const { sections, segments } = readKernelElf(vmlinux);
  const fromElf = boundsFromSections(sections, segments);
  const bounds = map ? boundsFromMap(map) : fromElf;
  const mismatches: string[] = [];
  if (map) {
    const names = [
      ["_text", fromElf.text[0], bounds.text[0]],
      ["_etext", fromElf.text[1], bounds.text[1]],
      ["__start_rodata", fromElf.rodata[0], bounds.rodata[0]],
      ["__end_rodata", fromElf.rodata[1], bounds.rodata[1]],
    ] as const;
    for (const [name, e, m] of names) {
      if (e !== m) mismatches.push(`${name}: System.map ${hex(m)}, section headers ${hex(e)}`);
    }
  }
  const ranges = (
    [
      [".text", bounds.text],
      [".rodata", bounds.rodata],
    ] as const
  ).map(([name, [vs, ve]]): KernelRange => {
    if (!(ve > vs)) throw invalid(`the kernel's ${name} [${hex(vs)}, ${hex(ve)}) is empty`);
    const ps = physical(segments, vs, ve - vs);
    if (ps === undefined)
      throw invalid(`the kernel's ${name} [${hex(vs)}, ${hex(ve)}) is not inside one loadable segment`);
    const pe = ps + (ve - vs);
    if (ps < 0x100000n || pe > BigInt(memSize)) {
      throw invalid(
        `the kernel's ${name} at physical [${hex(ps)}, ${hex(pe)}) is outside guest RAM [1 MiB, ${hex(memSize)})`,
      );
    }
    if (ps % PAGE !== 0n) throw invalid(`the kernel's ${name} starts at ${hex(ps)}, not on a page boundary`);
    return { name, start: Number(ps), end: Number(pe), vstart: vs };
  });
  const [text, rodata] = ranges as [KernelRange, KernelRange];
  if (rodata.start < text.end) throw invalid("the kernel's .rodata does not lie after its .text");
  return { ranges, source: map ? "system-map" : "elf", mismatches };
}

/** A physical address inside `ranges` as "name+0xoff". */
export function rangeOffset(ranges: readonly KernelRange[], gpa: number): string | undefined {
  const r = ranges.find((x) => gpa >= x.start && gpa < x.end);
  return r ? `${r.name}+${hex(gpa - r.start)}` : undefined;
}

/** The kernel virtual address of physical `gpa` inside `ranges`. */
export function kernelVirtual(ranges: readonly KernelRange[], gpa: number): bigint | undefined {
  const r = ranges.find((x) => gpa >= x.start && gpa < x.end);
  return r ? r.vstart + BigInt(gpa - r.start) : undefined;
}

/** "symbol+0xoff" for a kernel virtual address, from a System.map (the nearest symbol at or below it). */
export function symbolize(map: SystemMap, va: bigint): string | undefined {
  const s = map.symbols;
  let lo = 0;
  let hi = s.length - 1;
  let best = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if ((s[mid] as { address: bigint }).address <= va) {
      best = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (best < 0) return undefined;
  const sym = s[best] as { address: bigint; name: string };
  return `${sym.name}+${hex(va - sym.address)}`;
}
