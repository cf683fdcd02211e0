/**
 * Test helpers: a small builder for ELF64 x86-64 executables, field patchers for
 * making them hostile, and a seeded PRNG for fuzzing.
 */
import {
  ELF64_EHDR_SIZE,
  ELF64_PHDR_SIZE,
  ELF64_SHDR_SIZE,
  ELF64_SYM_SIZE,
  EM_X86_64,
  ET_EXEC,
  PF_R,
  PF_W,
  PF_X,
  PT_GNU_STACK,
  PT_LOAD,
  SHF_ALLOC,
  SHF_EXECINSTR,
  SHF_WRITE,
  SHN_ABS,
  SHN_UNDEF,
  SHT_NOBITS,
  SHT_PROGBITS,
  SHT_STRTAB,
  SHT_SYMTAB,
  STB_GLOBAL,
  STB_LOCAL,
  STB_WEAK,
  STT_FILE,
  STT_FUNC,
  STT_NOTYPE,
  STT_OBJECT,
  STT_SECTION,
} from "../../src/elf/elf.js";

export interface SegmentSpec {
  type?: number;
  flags: number;
  vaddr: number;
  /** Defaults to vaddr. */
  paddr?: number;
  /** File contents (p_filesz is its length); defaults to `filesz` bytes of a pattern. */
  data?: Uint8Array;
  filesz?: number;
  /** Defaults to p_filesz. */
  memsz?: number;
  align?: number;
}

export interface SectionSpec {
  name: string;
  type?: number;
  flags?: number;
  /** For SHF_ALLOC sections: the virtual address; the file offset follows from the containing segment. */
  addr?: number;
  size?: number;
  /** For sections outside every segment: their contents. */
  data?: Uint8Array;
  link?: number;
  info?: number;
  entsize?: number;
}

export interface SymbolSpec {
  name: string;
  value: number;
  size?: number;
  type?: number;
  bind?: number;
  /** A section name, a raw st_shndx, or (default) the allocated section containing `value`, else SHN_ABS. */
  section?: string | number;
}

export interface ElfSpec {
  entry: number;
  segments: SegmentSpec[];
  /** `false`: no section headers at all (e_shoff = 0). */
  sections?: SectionSpec[] | false;
  /** Adds .symtab and .strtab when present. */
  symbols?: SymbolSpec[];
}

/** A built file and where its parts are, for tests that patch fields. */
export interface BuiltElf {
  bytes: Uint8Array;
  phoff: number;
  shoff: number;
  segmentOffsets: number[];
  /** Section header index by name (includes .symtab, .strtab, .shstrtab). */
  sectionIndex: Record<string, number>;
  /** File offset of each section's contents, by header index. */
  sectionOffsets: number[];
  /** Index in .symtab of each named symbol (the null symbol is 0). */
  symbolIndex: Record<string, number>;
}

export const EHDR = {
  ident: 0,
  class: 4,
  data: 5,
  identVersion: 6,
  type: 16,
  machine: 18,
  version: 20,
  entry: 24,
  phoff: 32,
  shoff: 40,
  flags: 48,
  ehsize: 52,
  phentsize: 54,
  phnum: 56,
  shentsize: 58,
  shnum: 60,
  shstrndx: 62,
} as const;

const EHDR_WIDTH: Record<keyof typeof EHDR, 1 | 2 | 4 | 8> = {
  ident: 1,
  class: 1,
  data: 1,
  identVersion: 1,
  type: 2,
  machine: 2,
  version: 4,
  entry: 8,
  phoff: 8,
  shoff: 8,
  flags: 4,
  ehsize: 2,
  phentsize: 2,
  phnum: 2,
  shentsize: 2,
  shnum: 2,
  shstrndx: 2,
};

/** Program header fields: [offset, width]. */
export const PHDR = {
  type: [0, 4],
  flags: [4, 4],
  offset: [8, 8],
  vaddr: [16, 8],
  paddr: [24, 8],
  filesz: [32, 8],
  memsz: [40, 8],
  align: [48, 8],
} as const;

/** Section header fields: [offset, width]. */
export const SHDR = {
  name: [0, 4],
  type: [4, 4],
  flags: [8, 8],
  addr: [16, 8],
  offset: [24, 8],
  size: [32, 8],
  link: [40, 4],
  info: [44, 4],
  addralign: [48, 8],
  entsize: [56, 8],
} as const;

/** Symbol fields: [offset, width]. */
export const SYM = {
  name: [0, 4],
  info: [4, 1],
  other: [5, 1],
  shndx: [6, 2],
  value: [8, 8],
  size: [16, 8],
} as const;

/** Writes a little-endian integer of `width` bytes. */
export function writeInt(bytes: Uint8Array, offset: number, width: 1 | 2 | 4 | 8, value: number | bigint): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (width === 1) view.setUint8(offset, Number(value));
  else if (width === 2) view.setUint16(offset, Number(value), true);
  else if (width === 4) view.setUint32(offset, Number(value), true);
  else view.setBigUint64(offset, BigInt(value), true);
}

export function readInt(bytes: Uint8Array, offset: number, width: 1 | 2 | 4 | 8): bigint {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (width === 1) return BigInt(view.getUint8(offset));
  if (width === 2) return BigInt(view.getUint16(offset, true));
  if (width === 4) return BigInt(view.getUint32(offset, true));
  return view.getBigUint64(offset, true);
}

/** Returns a copy of `built.bytes` with one ELF header field changed. */
export function withEhdr(built: BuiltElf, field: keyof typeof EHDR, value: number | bigint): Uint8Array {
  const bytes = built.bytes.slice();
  writeInt(bytes, EHDR[field], EHDR_WIDTH[field], value);
  return bytes;
}

/** Returns a copy of `built.bytes` with one field of program header `index` changed. */
export function withPhdr(built: BuiltElf, index: number, field: keyof typeof PHDR, value: number | bigint): Uint8Array {
  const bytes = built.bytes.slice();
  const [at, width] = PHDR[field];
  writeInt(bytes, built.phoff + index * ELF64_PHDR_SIZE + at, width, value);
  return bytes;
}

/** Returns a copy of `built.bytes` with one field of section header `index` (or name) changed. */
export function withShdr(
  built: BuiltElf,
  section: number | string,
  field: keyof typeof SHDR,
  value: number | bigint,
): Uint8Array {
  const bytes = built.bytes.slice();
  const index = typeof section === "number" ? section : sectionNumber(built, section);
  const [at, width] = SHDR[field];
  writeInt(bytes, built.shoff + index * ELF64_SHDR_SIZE + at, width, value);
  return bytes;
}

/** Returns a copy of `built.bytes` with one field of a .symtab entry changed. */
export function withSym(built: BuiltElf, symbol: string, field: keyof typeof SYM, value: number | bigint): Uint8Array {
  const bytes = built.bytes.slice();
  const index = built.symbolIndex[symbol];
  if (index === undefined) throw new Error(`fixture has no symbol ${symbol}`);
  const symtab = built.sectionOffsets[sectionNumber(built, ".symtab")]!;
  const [at, width] = SYM[field];
  writeInt(bytes, symtab + index * ELF64_SYM_SIZE + at, width, value);
  return bytes;
}

export function sectionNumber(built: BuiltElf, name: string): number {
  const index = built.sectionIndex[name];
  if (index === undefined) throw new Error(`fixture has no section ${name}`);
  return index;
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

class StrTab {
  private readonly parts: number[] = [0];
  private readonly index = new Map<string, number>([["", 0]]);

  add(s: string): number {
    const known = this.index.get(s);
    if (known !== undefined) return known;
    const at = this.parts.length;
    this.parts.push(...new TextEncoder().encode(s), 0);
    this.index.set(s, at);
    return at;
  }

  bytes(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

function segmentData(spec: SegmentSpec, index: number): Uint8Array {
  if (spec.data) return spec.data;
  const data = new Uint8Array(spec.filesz ?? 0);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + index) & 0xff;
  return data;
}

function segmentMemsz(spec: SegmentSpec, index: number): number {
  return spec.memsz ?? segmentData(spec, index).length;
}

interface PlannedSection {
  spec: SectionSpec;
  type: number;
  offset: number;
  size: number;
  data?: Uint8Array;
}

/** Builds an ELF64 little-endian x86-64 ET_EXEC file from a description. */
export function buildElf(spec: ElfSpec): BuiltElf {
  const phoff = ELF64_EHDR_SIZE;
  let cursor = phoff + spec.segments.length * ELF64_PHDR_SIZE;
  const chunks: { offset: number; data: Uint8Array }[] = [];

  const segmentOffsets = spec.segments.map((seg, i) => {
    const data = segmentData(seg, i);
    cursor = alignUp(cursor, 16);
    const offset = cursor;
    chunks.push({ offset, data });
    cursor += data.length;
    return offset;
  });

  const sectionIndex: Record<string, number> = {};
  const symbolIndex: Record<string, number> = {};
  const planned: PlannedSection[] = [];
  const withSections = spec.sections !== false;
  if (withSections) {
    const userSections = spec.sections || [];
    for (const s of userSections) {
      const type = s.type ?? SHT_PROGBITS;
      const size = s.size ?? s.data?.length ?? 0;
      let offset = 0;
      if (((s.flags ?? 0) & SHF_ALLOC) !== 0) {
        const segIndex = spec.segments.findIndex(
          (seg, i) => seg.type !== PT_GNU_STACK && s.addr! >= seg.vaddr && s.addr! <= seg.vaddr + segmentMemsz(seg, i),
        );
        offset = segIndex >= 0 ? segmentOffsets[segIndex]! + (s.addr! - spec.segments[segIndex]!.vaddr) : 0;
      } else if (s.data) {
        cursor = alignUp(cursor, 8);
        offset = cursor;
        chunks.push({ offset, data: s.data });
        cursor += s.data.length;
      }
      planned.push({ spec: s, type, offset, size });
    }
  }

  const sectionNames = new StrTab();
  const headers: {
    name: number;
    type: number;
    flags: number;
    addr: number;
    offset: number;
    size: number;
    link: number;
    info: number;
    align: number;
    entsize: number;
  }[] = [{ name: 0, type: 0, flags: 0, addr: 0, offset: 0, size: 0, link: 0, info: 0, align: 0, entsize: 0 }];
  for (const p of planned) {
    sectionIndex[p.spec.name] = headers.length;
    headers.push({
      name: sectionNames.add(p.spec.name),
      type: p.type,
      flags: p.spec.flags ?? 0,
      addr: p.spec.addr ?? 0,
      offset: p.offset,
      size: p.size,
      link: p.spec.link ?? 0,
      info: p.spec.info ?? 0,
      align: 1,
      entsize: p.spec.entsize ?? 0,
    });
  }

  if (withSections && spec.symbols) {
    const names = new StrTab();
    const symtab = new Uint8Array((spec.symbols.length + 1) * ELF64_SYM_SIZE);
    const symtabIndex = headers.length;
    spec.symbols.forEach((sym, i) => {
      const at = (i + 1) * ELF64_SYM_SIZE;
      symbolIndex[sym.name] = i + 1;
      writeInt(symtab, at, 4, names.add(sym.name));
      writeInt(symtab, at + 4, 1, ((sym.bind ?? STB_GLOBAL) << 4) | (sym.type ?? STT_NOTYPE));
      writeInt(symtab, at + 6, 2, symbolSection(sym, planned, sectionIndex));
      writeInt(symtab, at + 8, 8, sym.value);
      writeInt(symtab, at + 16, 8, sym.size ?? 0);
    });
    const strtab = names.bytes();
    cursor = alignUp(cursor, 8);
    chunks.push({ offset: cursor, data: symtab });
    sectionIndex[".symtab"] = symtabIndex;
    headers.push({
      name: sectionNames.add(".symtab"),
      type: SHT_SYMTAB,
      flags: 0,
      addr: 0,
      offset: cursor,
      size: symtab.length,
      link: symtabIndex + 1,
      info: 1,
      align: 8,
      entsize: ELF64_SYM_SIZE,
    });
    cursor += symtab.length;
    chunks.push({ offset: cursor, data: strtab });
    sectionIndex[".strtab"] = headers.length;
    headers.push({
      name: sectionNames.add(".strtab"),
      type: SHT_STRTAB,
      flags: 0,
      addr: 0,
      offset: cursor,
      size: strtab.length,
      link: 0,
      info: 0,
      align: 1,
      entsize: 0,
    });
    cursor += strtab.length;
  }

  let shoff = 0;
  let shstrndx = 0;
  if (withSections) {
    shstrndx = headers.length;
    sectionIndex[".shstrtab"] = shstrndx;
    const nameOfShstrtab = sectionNames.add(".shstrtab");
    const shstrtab = sectionNames.bytes();
    chunks.push({ offset: cursor, data: shstrtab });
    headers.push({
      name: nameOfShstrtab,
      type: SHT_STRTAB,
      flags: 0,
      addr: 0,
      offset: cursor,
      size: shstrtab.length,
      link: 0,
      info: 0,
      align: 1,
      entsize: 0,
    });
    cursor += shstrtab.length;
    shoff = alignUp(cursor, 8);
    cursor = shoff + headers.length * ELF64_SHDR_SIZE;
  }

  const bytes = new Uint8Array(cursor);
  for (const c of chunks) bytes.set(c.data, c.offset);
  writeHeader(bytes, spec, phoff, shoff, withSections ? headers.length : 0, shstrndx);
  for (const [i, seg] of spec.segments.entries()) {
    writeSegment(bytes, phoff + i * ELF64_PHDR_SIZE, seg, segmentOffsets[i]!, i);
  }
  if (!withSections) headers.length = 0;
  for (const [i, h] of headers.entries()) {
    const values = [h.name, h.type, h.flags, h.addr, h.offset, h.size, h.link, h.info, h.align, h.entsize];
    writeRecord(bytes, shoff + i * ELF64_SHDR_SIZE, SHDR, values);
  }
  return {
    bytes,
    phoff,
    shoff,
    segmentOffsets,
    sectionIndex,
    sectionOffsets: headers.map((h) => h.offset),
    symbolIndex,
  };
}

function symbolSection(sym: SymbolSpec, planned: PlannedSection[], index: Record<string, number>): number {
  if (typeof sym.section === "number") return sym.section;
  if (typeof sym.section === "string") return index[sym.section] ?? SHN_UNDEF;
  const owner = planned.find(
    (p) => ((p.spec.flags ?? 0) & SHF_ALLOC) !== 0 && sym.value >= p.spec.addr! && sym.value <= p.spec.addr! + p.size,
  );
  return owner ? index[owner.spec.name]! : SHN_ABS;
}

function writeHeader(
  bytes: Uint8Array,
  spec: ElfSpec,
  phoff: number,
  shoff: number,
  shnum: number,
  shstrndx: number,
): void {
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0);
  writeInt(bytes, EHDR.type, 2, ET_EXEC);
  writeInt(bytes, EHDR.machine, 2, EM_X86_64);
  writeInt(bytes, EHDR.version, 4, 1);
  writeInt(bytes, EHDR.entry, 8, spec.entry);
  writeInt(bytes, EHDR.phoff, 8, spec.segments.length > 0 ? phoff : 0);
  writeInt(bytes, EHDR.shoff, 8, shoff);
  writeInt(bytes, EHDR.ehsize, 2, ELF64_EHDR_SIZE);
  writeInt(bytes, EHDR.phentsize, 2, ELF64_PHDR_SIZE);
  writeInt(bytes, EHDR.phnum, 2, spec.segments.length);
  writeInt(bytes, EHDR.shentsize, 2, ELF64_SHDR_SIZE);
  writeInt(bytes, EHDR.shnum, 2, shnum);
  writeInt(bytes, EHDR.shstrndx, 2, shstrndx);
}

function writeSegment(bytes: Uint8Array, at: number, seg: SegmentSpec, offset: number, index: number): void {
  const filesz = segmentData(seg, index).length;
  const values = [
    seg.type ?? PT_LOAD,
    seg.flags,
    filesz > 0 ? offset : 0,
    seg.vaddr,
    seg.paddr ?? seg.vaddr,
    filesz,
    seg.memsz ?? filesz,
    seg.align ?? 16,
  ];
  writeRecord(bytes, at, PHDR, values);
}

/** Writes `values` into the fields of a record layout, in field order. */
function writeRecord(
  bytes: Uint8Array,
  at: number,
  layout: Record<string, readonly [number, 1 | 2 | 4 | 8]>,
  values: number[],
): void {
  Object.values(layout).forEach(([off, width], k) => {
    writeInt(bytes, at + off, width, values[k]!);
  });
}

// ---------------------------------------------------------------------------
// Standard fixtures
// ---------------------------------------------------------------------------

export const TEXT = 0x100000;
export const RODATA = 0x101000;
export const DATA = 0x102000;
export const MEM_32M = 32 * 1024 * 1024;

/**
 * A small kernel-like image: .text (R X) at 1 MiB, .rodata (R) and .data/.bss (RW)
 * on the following pages, a PT_GNU_STACK, a comment section and a symbol table
 * with functions, objects, labels and the kinds of symbols the parser skips.
 */
export function kernelSpec(): ElfSpec {
  return {
    entry: TEXT,
    segments: [
      { flags: PF_R | PF_X, vaddr: TEXT, filesz: 0x200 },
      { flags: PF_R, vaddr: RODATA, filesz: 0x100 },
      { flags: PF_R | PF_W, vaddr: DATA, filesz: 0x80, memsz: 0x1000 },
      { type: PT_GNU_STACK, flags: PF_R | PF_W, vaddr: 0, filesz: 0, align: 16 },
    ],
    sections: [
      { name: ".text", flags: SHF_ALLOC | SHF_EXECINSTR, addr: TEXT, size: 0x200 },
      { name: ".rodata", flags: SHF_ALLOC, addr: RODATA, size: 0x100 },
      { name: ".data", flags: SHF_ALLOC | SHF_WRITE, addr: DATA, size: 0x80 },
      { name: ".bss", type: SHT_NOBITS, flags: SHF_ALLOC | SHF_WRITE, addr: DATA + 0x80, size: 0xf80 },
      { name: ".comment", data: new TextEncoder().encode("GCC: test\0") },
    ],
    symbols: [
      { name: "kernel.c", value: 0, type: STT_FILE, bind: STB_LOCAL, section: SHN_ABS },
      { name: "", value: TEXT, type: STT_SECTION, bind: STB_LOCAL, section: ".text" },
      { name: "_start", value: TEXT, type: STT_NOTYPE },
      { name: "kmain", value: TEXT + 0x10, size: 0x40, type: STT_FUNC },
      { name: "helper", value: TEXT + 0x50, size: 0x20, type: STT_FUNC, bind: STB_LOCAL },
      { name: "banner", value: RODATA, size: 0x20, type: STT_OBJECT },
      { name: "counter", value: DATA, size: 8, type: STT_OBJECT },
      { name: "__bss_start", value: DATA + 0x80, type: STT_NOTYPE },
      { name: "KERNEL_SIZE", value: 0x3000, type: STT_NOTYPE, section: SHN_ABS },
      { name: "optional_hook", value: 0, type: STT_FUNC, bind: STB_WEAK, section: SHN_UNDEF },
    ],
  };
}

export function kernelElf(): BuiltElf {
  return buildElf(kernelSpec());
}

/** A seeded PRNG (mulberry32): the same seed gives the same sequence. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
