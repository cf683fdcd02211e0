/**
 * ELF64 parser: reads a kernel image into segments, sections and symbols.
 * Guardvisor's own rules for a kernel image (where it may load, what is
 * protected) are in kernel-image.ts.
 *
 * Every byte of the file is treated as hostile: every offset, size, count, string
 * index and entry size is bounds-checked before use, 64-bit fields are read as
 * BigInt and must fit in 53 bits before they become numbers (a larger value is
 * rejected, never rounded), and table sizes driven by header fields are capped.
 * A malformed or unsupported file raises GuardvisorError `ELF_INVALID`; a
 * well-formed file whose segments do not fit the guest raises `ELF_LAYOUT`.
 */
import { elfError } from "../errors.js";

// ---------------------------------------------------------------------------
// Constants (ELF gABI and the x86-64 psABI)
// ---------------------------------------------------------------------------

/** The four magic bytes at the start of every ELF file: 0x7f 'E' 'L' 'F'. */
export const ELF_MAGIC = Object.freeze([0x7f, 0x45, 0x4c, 0x46]);
export const ELFCLASS32 = 1;
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const ELFDATA2MSB = 2;
export const EV_CURRENT = 1;

export const ET_REL = 1;
export const ET_EXEC = 2;
export const ET_DYN = 3;
export const ET_CORE = 4;

export const EM_386 = 3;
export const EM_X86_64 = 62;

export const PT_NULL = 0;
export const PT_LOAD = 1;
export const PT_DYNAMIC = 2;
export const PT_INTERP = 3;
export const PT_NOTE = 4;
export const PT_PHDR = 6;
export const PT_TLS = 7;
export const PT_GNU_STACK = 0x6474e551;
/** e_phnum value meaning "the real count is in section 0" (extended numbering). */
export const PN_XNUM = 0xffff;

export const PF_X = 0x1;
export const PF_W = 0x2;
export const PF_R = 0x4;

export const SHT_NULL = 0;
export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_NOBITS = 8;
export const SHT_DYNSYM = 11;

export const SHF_WRITE = 0x1;
export const SHF_ALLOC = 0x2;
export const SHF_EXECINSTR = 0x4;

export const SHN_UNDEF = 0;
export const SHN_LORESERVE = 0xff00;
export const SHN_ABS = 0xfff1;
export const SHN_COMMON = 0xfff2;
export const SHN_XINDEX = 0xffff;

export const STT_NOTYPE = 0;
export const STT_OBJECT = 1;
export const STT_FUNC = 2;
export const STT_SECTION = 3;
export const STT_FILE = 4;
export const STT_COMMON = 5;
export const STT_TLS = 6;
export const STT_GNU_IFUNC = 10;

export const STB_LOCAL = 0;
export const STB_GLOBAL = 1;
export const STB_WEAK = 2;

/** Sizes of the ELF64 on-disk records. */
export const ELF64_EHDR_SIZE = 64;
export const ELF64_PHDR_SIZE = 56;
export const ELF64_SHDR_SIZE = 64;
export const ELF64_SYM_SIZE = 24;

/** Limits on header-driven counts, so a hostile header cannot force huge work or allocations. */
export const MAX_PROGRAM_HEADERS = 4096;
export const MAX_SECTIONS = 4096;
export const MAX_SYMBOLS = 1_000_000;
/** Longer section and symbol names are kept as their first this-many bytes plus "...". */
export const MAX_NAME_BYTES = 1024;
/**
 * Limit on the bytes of names read from one string table. Names may overlap in
 * the table, so a small file could otherwise make a million symbols expand into
 * a gigabyte of strings.
 */
export const MAX_NAME_TABLE_READ_BYTES = 64 * 1024 * 1024;

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/** One program header. Every numeric field is validated to be below 2^53. */
export interface ElfSegment {
  /** Index in the program header table. */
  index: number;
  /** p_type (PT_*). */
  type: number;
  /** p_flags (PF_*). */
  flags: number;
  offset: number;
  vaddr: number;
  paddr: number;
  filesz: number;
  memsz: number;
  align: number;
}

/** One section header. Every numeric field is validated to be below 2^53. */
export interface ElfSection {
  /** Index in the section header table (0 is the null section). */
  index: number;
  /** Name from the section-name string table; "" when the file has none. */
  name: string;
  /** sh_type (SHT_*). */
  type: number;
  /** sh_flags (SHF_*). */
  flags: number;
  addr: number;
  offset: number;
  size: number;
  link: number;
  info: number;
  addralign: number;
  entsize: number;
}

/** A defined, named symbol from `.symtab` (section and file symbols are left out). */
export interface ElfSymbol {
  name: string;
  value: number;
  size: number;
  /** STT_* */
  type: number;
  /** STB_* */
  bind: number;
  /** st_shndx: a section index or a reserved value such as SHN_ABS. */
  sectionIndex: number;
}

/** A parsed, structurally valid ELF64 x86-64 executable. */
export interface ElfImage {
  /** e_entry, a virtual address. */
  entry: number;
  /** Every program header, in table order. */
  segments: ElfSegment[];
  /** The PT_LOAD entries of `segments`, in table order. */
  loadSegments: ElfSegment[];
  /** Every section header, in table order (empty when the file has none). */
  sections: ElfSection[];
  /** Symbols from the SHT_SYMTAB section (empty when there is none). */
  symbols: ElfSymbol[];
  /** The file bytes that were parsed (not copied). */
  data: Uint8Array;
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

export const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

export const range = (start: number | bigint, end: number | bigint): string => `[${hex(start)},${hex(end)})`;

/** Makes a name from the file safe to put in a one-line message. */
export function printable(name: string): string {
  const clipped = name.length > 64 ? `${name.slice(0, 64)}...` : name;
  return clipped.replace(/[^\x20-\x7e]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

/** Converts a 64-bit field to a number, rejecting values that would lose precision. */
function toSafe(value: bigint, what: string): number {
  if (value > MAX_SAFE) throw elfError(`${what} ${hex(value)} exceeds 2^53`);
  return Number(value);
}

/** Whether `[offset, offset + size)` lies inside a file of `fileSize` bytes (no overflow: BigInt). */
function fitsInFile(offset: bigint | number, size: bigint | number, fileSize: number): boolean {
  return BigInt(offset) + BigInt(size) <= BigInt(fileSize);
}

export function formatSize(bytes: number): string {
  const units: [number, string][] = [
    [2 ** 30, "GiB"],
    [2 ** 20, "MiB"],
    [2 ** 10, "KiB"],
  ];
  for (const [unit, label] of units) {
    if (bytes >= unit && bytes % unit === 0) return `${bytes / unit} ${label}`;
  }
  return `${bytes} bytes`;
}

/** Bounds-checked little-endian reads over the file; any read past the end is ELF_INVALID. */
class FileReader {
  readonly size: number;
  private readonly view: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.size = bytes.byteLength;
  }

  u8(offset: number): number {
    this.check(offset, 1);
    return this.view.getUint8(offset);
  }

  u16(offset: number): number {
    this.check(offset, 2);
    return this.view.getUint16(offset, true);
  }

  u32(offset: number): number {
    this.check(offset, 4);
    return this.view.getUint32(offset, true);
  }

  u64(offset: number): bigint {
    this.check(offset, 8);
    return this.view.getBigUint64(offset, true);
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.size) {
      throw elfError(`read of ${length} bytes at ${hex(offset)} is past end of file (${this.size} bytes)`);
    }
  }
}

// ---------------------------------------------------------------------------
// ELF header
// ---------------------------------------------------------------------------

interface ElfHeader {
  entry: number;
  phoff: bigint;
  shoff: bigint;
  phentsize: number;
  phnum: number;
  shentsize: number;
  shnum: number;
  shstrndx: number;
}

const TYPE_NAMES: Record<number, string> = {
  [ET_REL]: " (ET_REL: a relocatable object)",
  [ET_DYN]: " (ET_DYN: a shared object or position-independent executable)",
  [ET_CORE]: " (ET_CORE: a core dump)",
};

function checkIdent(r: FileReader): void {
  if (r.size < ELF_MAGIC.length || ELF_MAGIC.some((b, i) => r.u8(i) !== b)) {
    throw elfError(r.size === 0 ? "not an ELF file (empty)" : "not an ELF file (bad magic)");
  }
  if (r.size < 16) throw elfError(`file is too short for an ELF identification (${r.size} bytes)`);
  const elfClass = r.u8(4);
  if (elfClass !== ELFCLASS64) throw elfError(`ELF class ${elfClass} is not ELF64`);
  const encoding = r.u8(5);
  if (encoding !== ELFDATA2LSB) {
    const what = encoding === ELFDATA2MSB ? " (big-endian)" : "";
    throw elfError(`ELF data encoding ${encoding}${what} is not little-endian`);
  }
  const version = r.u8(6);
  if (version !== EV_CURRENT) throw elfError(`ELF identification version ${version} is not EV_CURRENT (1)`);
  if (r.size < ELF64_EHDR_SIZE) {
    throw elfError(`file is too short for an ELF64 header (${r.size} bytes, need ${ELF64_EHDR_SIZE})`);
  }
}

function readHeader(r: FileReader): ElfHeader {
  checkIdent(r);
  const machine = r.u16(18);
  if (machine !== EM_X86_64) throw elfError(`machine ${machine} is not x86-64 (${EM_X86_64})`);
  const type = r.u16(16);
  if (type !== ET_EXEC) {
    const hint = type === ET_DYN ? "; link the kernel with -no-pie" : "";
    throw elfError(`ELF type ${type}${TYPE_NAMES[type] ?? ""} is not ET_EXEC${hint}`);
  }
  const version = r.u32(20);
  if (version !== EV_CURRENT) throw elfError(`e_version ${version} is not EV_CURRENT (1)`);
  const ehsize = r.u16(52);
  if (ehsize !== ELF64_EHDR_SIZE) throw elfError(`e_ehsize ${ehsize} is not ${ELF64_EHDR_SIZE}`);
  return {
    entry: toSafe(r.u64(24), "e_entry"),
    phoff: r.u64(32),
    shoff: r.u64(40),
    phentsize: r.u16(54),
    phnum: r.u16(56),
    shentsize: r.u16(58),
    shnum: r.u16(60),
    shstrndx: r.u16(62),
  };
}

/**
 * Checks a header table (program or section headers) and returns the file
 * offset of each entry. `kind` names the entries in messages.
 */
function tableOffsets(
  r: FileReader,
  kind: "program header" | "section header",
  tableOffset: bigint,
  count: number,
  entrySize: number,
  expectedEntrySize: number,
  limit: number,
): number[] {
  const field = kind === "program header" ? "e_ph" : "e_sh";
  if (count > limit) throw elfError(`${field}num ${count} exceeds the limit of ${limit}`);
  if (entrySize !== expectedEntrySize) {
    throw elfError(`${field}entsize ${entrySize} is not ${expectedEntrySize}`);
  }
  if (tableOffset < BigInt(ELF64_EHDR_SIZE)) {
    throw elfError(`${field}off ${hex(tableOffset)} overlaps the ELF header`);
  }
  const offsets: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = tableOffset + BigInt(i * entrySize);
    if (!fitsInFile(start, entrySize, r.size)) throw elfError(`${kind} ${i} extends past end of file`);
    offsets.push(Number(start));
  }
  return offsets;
}

// ---------------------------------------------------------------------------
// Program headers
// ---------------------------------------------------------------------------

function readProgramHeaders(r: FileReader, h: ElfHeader): ElfSegment[] {
  if (h.phnum === 0) return [];
  if (h.phnum === PN_XNUM) {
    throw elfError("e_phnum is PN_XNUM (0xffff): extended program header numbering is not supported");
  }
  const offsets = tableOffsets(
    r,
    "program header",
    h.phoff,
    h.phnum,
    h.phentsize,
    ELF64_PHDR_SIZE,
    MAX_PROGRAM_HEADERS,
  );
  return offsets.map((offset, index) => readSegment(r, index, offset));
}

function readSegment(r: FileReader, index: number, at: number): ElfSegment {
  const what = `program header ${index}`;
  const seg: ElfSegment = {
    index,
    type: r.u32(at),
    flags: r.u32(at + 4),
    offset: toSafe(r.u64(at + 8), `${what}: p_offset`),
    vaddr: toSafe(r.u64(at + 16), `${what}: p_vaddr`),
    paddr: toSafe(r.u64(at + 24), `${what}: p_paddr`),
    filesz: toSafe(r.u64(at + 32), `${what}: p_filesz`),
    memsz: toSafe(r.u64(at + 40), `${what}: p_memsz`),
    align: toSafe(r.u64(at + 48), `${what}: p_align`),
  };
  checkSegment(r, seg, what);
  return seg;
}

function checkSegment(r: FileReader, seg: ElfSegment, what: string): void {
  if (seg.type === PT_INTERP) {
    throw elfError(`${what} is PT_INTERP: the file is a dynamically linked program, not a kernel`);
  }
  if (!fitsInFile(seg.offset, seg.filesz, r.size)) {
    const end = BigInt(seg.offset) + BigInt(seg.filesz);
    throw elfError(`${what}: file range ${range(seg.offset, end)} extends past end of file (${r.size} bytes)`);
  }
  if (seg.type !== PT_LOAD) return;
  if (seg.filesz > seg.memsz) {
    throw elfError(`${what}: p_filesz ${hex(seg.filesz)} exceeds p_memsz ${hex(seg.memsz)}`);
  }
  for (const [field, base] of [
    ["p_vaddr", seg.vaddr],
    ["p_paddr", seg.paddr],
  ] as const) {
    const end = BigInt(base) + BigInt(seg.memsz);
    if (end > MAX_SAFE) throw elfError(`${what}: ${field} + p_memsz ${hex(end)} exceeds 2^53`);
  }
}

// ---------------------------------------------------------------------------
// Section headers and string tables
// ---------------------------------------------------------------------------

type RawSection = Omit<ElfSection, "name"> & { nameIndex: number };

function readSectionHeaders(r: FileReader, h: ElfHeader): RawSection[] {
  if (h.shoff === 0n) {
    if (h.shnum !== 0) throw elfError(`e_shnum is ${h.shnum} but e_shoff is 0`);
    return [];
  }
  if (h.shnum === 0) {
    throw elfError("e_shnum is 0 but e_shoff is set: extended section numbering is not supported");
  }
  const offsets = tableOffsets(r, "section header", h.shoff, h.shnum, h.shentsize, ELF64_SHDR_SIZE, MAX_SECTIONS);
  return offsets.map((offset, index) => readSection(r, index, offset));
}

function readSection(r: FileReader, index: number, at: number): RawSection {
  const what = `section ${index}`;
  const sec: RawSection = {
    index,
    nameIndex: r.u32(at),
    type: r.u32(at + 4),
    flags: toSafe(r.u64(at + 8), `${what}: sh_flags`),
    addr: toSafe(r.u64(at + 16), `${what}: sh_addr`),
    offset: toSafe(r.u64(at + 24), `${what}: sh_offset`),
    size: toSafe(r.u64(at + 32), `${what}: sh_size`),
    link: r.u32(at + 40),
    info: r.u32(at + 44),
    addralign: toSafe(r.u64(at + 48), `${what}: sh_addralign`),
    entsize: toSafe(r.u64(at + 56), `${what}: sh_entsize`),
  };
  if (sec.type !== SHT_NULL && sec.type !== SHT_NOBITS && !fitsInFile(sec.offset, sec.size, r.size)) {
    const end = BigInt(sec.offset) + BigInt(sec.size);
    throw elfError(`${what}: file range ${range(sec.offset, end)} extends past end of file (${r.size} bytes)`);
  }
  const end = BigInt(sec.addr) + BigInt(sec.size);
  if (end > MAX_SAFE) throw elfError(`${what}: sh_addr + sh_size ${hex(end)} exceeds 2^53`);
  return sec;
}

const utf8 = new TextDecoder("utf-8", { fatal: false });

/** A validated SHT_STRTAB section: non-empty tables must end in NUL, so every index is terminated. */
class StringTable {
  private readonly start: number;
  private readonly size: number;
  private readonly index: number;
  /** Bytes read so far, limited by MAX_NAME_TABLE_READ_BYTES. */
  private bytesRead = 0;

  constructor(
    private readonly r: FileReader,
    sec: RawSection,
    private readonly label: string,
  ) {
    if (sec.type !== SHT_STRTAB) {
      throw elfError(`${label} (section ${sec.index}) has type ${sec.type}, not SHT_STRTAB`);
    }
    this.start = sec.offset;
    this.size = sec.size;
    this.index = sec.index;
    if (this.size > 0 && r.u8(this.start + this.size - 1) !== 0) {
      throw elfError(`${label} (section ${sec.index}) is not NUL-terminated`);
    }
  }

  /** Checks that `index` lies inside the table. */
  check(index: number, owner: string): void {
    if (index === 0 && this.size === 0) return;
    if (index >= this.size) {
      const where = `${this.label} (section ${this.index}, ${this.size} bytes)`;
      throw elfError(`${owner} name index ${hex(index)} is outside the ${where}`);
    }
  }

  /** The NUL-terminated string at `index`, clipped to MAX_NAME_BYTES. */
  get(index: number, owner: string): string {
    this.check(index, owner);
    if (this.size === 0) return "";
    const from = this.start + index;
    const limit = Math.min(this.start + this.size, from + MAX_NAME_BYTES + 1);
    const bytes = this.r.bytes;
    let end = from;
    while (end < limit && bytes[end] !== 0) end++;
    this.charge(end - from + 1);
    const name = utf8.decode(bytes.subarray(from, Math.min(end, from + MAX_NAME_BYTES)));
    return end - from > MAX_NAME_BYTES ? `${name}...` : name;
  }

  private charge(bytes: number): void {
    this.bytesRead += bytes;
    if (this.bytesRead > MAX_NAME_TABLE_READ_BYTES) {
      const limit = MAX_NAME_TABLE_READ_BYTES / (1024 * 1024);
      throw elfError(`names read from the ${this.label} (section ${this.index}) exceed ${limit} MiB in total`);
    }
  }
}

function nameSections(r: FileReader, h: ElfHeader, raw: RawSection[]): ElfSection[] {
  if (raw.length === 0) return [];
  if (h.shstrndx === SHN_XINDEX) {
    throw elfError("e_shstrndx is SHN_XINDEX: extended section numbering is not supported");
  }
  if (h.shstrndx >= raw.length) {
    throw elfError(`e_shstrndx ${h.shstrndx} is out of range (${raw.length} sections)`);
  }
  const names = h.shstrndx === SHN_UNDEF ? undefined : new StringTable(r, raw[h.shstrndx]!, "section name table");
  return raw.map(({ nameIndex, ...sec }) => ({
    ...sec,
    name: names ? names.get(nameIndex, `section ${sec.index}`) : "",
  }));
}

// ---------------------------------------------------------------------------
// Symbols
// ---------------------------------------------------------------------------

function readSymbols(r: FileReader, sections: ElfSection[]): ElfSymbol[] {
  const tables = sections.filter((s) => s.type === SHT_SYMTAB);
  if (tables.length === 0) return [];
  if (tables.length > 1) throw elfError(`the file has ${tables.length} SHT_SYMTAB sections (at most one is allowed)`);
  const symtab = tables[0]!;
  const label = `symbol table (section ${symtab.index})`;
  const count = symbolCount(symtab, label);
  const linked = sections[symtab.link];
  if (!linked || linked.type !== SHT_STRTAB) {
    throw elfError(`${label}: sh_link ${symtab.link} is not a string table`);
  }
  const names = new StringTable(r, { ...linked, nameIndex: 0 }, "symbol string table");
  const symbols: ElfSymbol[] = [];
  for (let i = 0; i < count; i++) {
    const symbol = readSymbol(r, symtab.offset + i * ELF64_SYM_SIZE, i, names, sections.length);
    if (symbol) symbols.push(symbol);
  }
  return symbols;
}

function symbolCount(symtab: ElfSection, label: string): number {
  if (symtab.entsize !== ELF64_SYM_SIZE) {
    throw elfError(`${label}: sh_entsize ${symtab.entsize} is not ${ELF64_SYM_SIZE}`);
  }
  if (symtab.size % ELF64_SYM_SIZE !== 0) {
    throw elfError(`${label}: sh_size ${hex(symtab.size)} is not a multiple of ${ELF64_SYM_SIZE}`);
  }
  const count = symtab.size / ELF64_SYM_SIZE;
  if (count > MAX_SYMBOLS) throw elfError(`${label} has ${count} entries (limit ${MAX_SYMBOLS})`);
  return count;
}

/**
 * Reads one symbol. Returns undefined for symbols that name no address we can
 * use: the null symbol and other unnamed ones, STT_SECTION and STT_FILE,
 * undefined (SHN_UNDEF) symbols, and symbols whose value or end is not below 2^53.
 */
function readSymbol(
  r: FileReader,
  at: number,
  index: number,
  names: StringTable,
  sectionCount: number,
): ElfSymbol | undefined {
  const what = `symbol ${index}`;
  const nameIndex = r.u32(at);
  const info = r.u8(at + 4);
  const sectionIndex = r.u16(at + 6);
  const value = r.u64(at + 8);
  const size = r.u64(at + 16);
  names.check(nameIndex, what);
  if (sectionIndex >= sectionCount && sectionIndex < SHN_LORESERVE) {
    throw elfError(`${what}: section index ${sectionIndex} is out of range (${sectionCount} sections)`);
  }
  const type = info & 0xf;
  if (type === STT_SECTION || type === STT_FILE || sectionIndex === SHN_UNDEF) return undefined;
  if (value + size > MAX_SAFE) return undefined;
  const name = names.get(nameIndex, what);
  if (name === "") return undefined;
  return { name, value: Number(value), size: Number(size), type, bind: info >> 4, sectionIndex };
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/**
 * Parses and structurally validates an ELF64 little-endian x86-64 ET_EXEC
 * image: identification, header sizes, the program and section header tables
 * (inside the file, within MAX_PROGRAM_HEADERS / MAX_SECTIONS), every segment's
 * and section's file range, PT_LOAD p_filesz <= p_memsz, the section-name and
 * symbol string tables, and the symbol table (at most MAX_SYMBOLS entries).
 * Does not check where segments land in guest RAM: see validateLayout.
 * @throws GuardvisorError ELF_INVALID naming the first problem found.
 */
export function parseElf(bytes: Uint8Array): ElfImage {
  const r = new FileReader(bytes);
  const header = readHeader(r);
  const segments = readProgramHeaders(r, header);
  const sections = nameSections(r, header, readSectionHeaders(r, header));
  const symbols = readSymbols(r, sections);
  return {
    entry: header.entry,
    segments,
    loadSegments: segments.filter((s) => s.type === PT_LOAD),
    sections,
    symbols,
    data: bytes,
  };
}

/** The file bytes of a segment: `[p_offset, p_offset + p_filesz)` (validated by parseElf). */
export function segmentBytes(img: ElfImage, seg: ElfSegment): Uint8Array {
  return img.data.subarray(seg.offset, seg.offset + seg.filesz);
}
