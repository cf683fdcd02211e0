import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  ELFCLASS32,
  ELFDATA2MSB,
  type ElfImage,
  EM_386,
  ET_DYN,
  ET_REL,
  MAX_NAME_BYTES,
  PF_R,
  PF_W,
  PF_X,
  PT_GNU_STACK,
  PT_INTERP,
  parseElf,
  SHF_ALLOC,
  SHN_ABS,
  SHN_XINDEX,
  SHT_NOBITS,
  SHT_PROGBITS,
  SHT_SYMTAB,
  STB_GLOBAL,
  STB_LOCAL,
  STT_FUNC,
  STT_NOTYPE,
  STT_OBJECT,
  segmentBytes,
} from "../../src/elf/elf.js";
import { loadElf, physicalEntry, protectedRegions, validateLayout } from "../../src/elf/kernel-image.js";
import { Symbolizer } from "../../src/elf/symbolizer.js";
import { GuardvisorError } from "../../src/errors.js";
import {
  type BuiltElf,
  buildElf,
  DATA,
  type ElfSpec,
  kernelElf,
  kernelSpec,
  MEM_32M,
  prng,
  RODATA,
  readInt,
  sectionNumber,
  TEXT,
  withEhdr,
  withPhdr,
  withShdr,
  withSym,
  writeInt,
} from "./elf-fixtures.js";

type ElfCode = "ELF_INVALID" | "ELF_LAYOUT";
const MiB = 1024 * 1024;
const TWO_53 = 2n ** 53n;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** Asserts `fn` throws a one-line GuardvisorError with `code` whose message matches `pattern`. */
function assertElfError(fn: () => unknown, code: ElfCode, pattern?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GuardvisorError, `expected a GuardvisorError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), "messages are one line");
    return true;
  });
}

const invalid = (bytes: Uint8Array, pattern?: RegExp) => assertElfError(() => parseElf(bytes), "ELF_INVALID", pattern);
const badLayout = (bytes: Uint8Array, pattern?: RegExp, memSize = MEM_32M) =>
  assertElfError(() => loadElf(bytes, memSize), "ELF_LAYOUT", pattern);

/** Runs `fn` and returns the error code it threw, or "ok"; anything but a GuardvisorError ELF_* fails. */
function outcome(fn: () => unknown): "ok" | ElfCode {
  try {
    fn();
    return "ok";
  } catch (e) {
    if (e instanceof GuardvisorError && (e.code === "ELF_INVALID" || e.code === "ELF_LAYOUT")) return e.code;
    throw new assert.AssertionError({ message: `unexpected exception: ${e instanceof Error ? e.stack : String(e)}` });
  }
}

/** Parses, lays out, finds protected regions and builds a symbolizer: the whole pipeline. */
function fullPipeline(bytes: Uint8Array): void {
  const { image } = loadElf(bytes, MEM_32M);
  new Symbolizer(image.symbols).format(image.entry);
}

describe("parseElf: a valid image", () => {
  const built = kernelElf();
  const image = parseElf(built.bytes);

  it("reads the header and program headers", () => {
    assert.equal(image.entry, TEXT);
    assert.equal(image.segments.length, 4);
    assert.deepEqual(
      image.loadSegments.map((s) => [s.index, s.vaddr, s.paddr, s.filesz, s.memsz, s.flags]),
      [
        [0, TEXT, TEXT, 0x200, 0x200, PF_R | PF_X],
        [1, RODATA, RODATA, 0x100, 0x100, PF_R],
        [2, DATA, DATA, 0x80, 0x1000, PF_R | PF_W],
      ],
    );
    assert.equal(image.segments[3]!.type, PT_GNU_STACK);
    assert.equal(image.data, built.bytes);
  });

  it("names sections from .shstrtab", () => {
    assert.deepEqual(
      image.sections.map((s) => s.name),
      ["", ".text", ".rodata", ".data", ".bss", ".comment", ".symtab", ".strtab", ".shstrtab"],
    );
    const bss = image.sections[4]!;
    assert.equal(bss.type, SHT_NOBITS);
    assert.equal(bss.addr, DATA + 0x80);
  });

  it("keeps named, defined symbols and skips file, section and undefined ones", () => {
    assert.deepEqual(image.symbols.map((s) => s.name).sort(), [
      "KERNEL_SIZE",
      "__bss_start",
      "_start",
      "banner",
      "counter",
      "helper",
      "kmain",
    ]);
    const kmain = image.symbols.find((s) => s.name === "kmain");
    assert.deepEqual(kmain, {
      name: "kmain",
      value: TEXT + 0x10,
      size: 0x40,
      type: STT_FUNC,
      bind: STB_GLOBAL,
      sectionIndex: 1,
    });
    assert.equal(image.symbols.find((s) => s.name === "helper")?.bind, STB_LOCAL);
    assert.equal(image.symbols.find((s) => s.name === "KERNEL_SIZE")?.sectionIndex, SHN_ABS);
  });

  it("reads a view with a nonzero, unaligned byteOffset", () => {
    const backing = new Uint8Array(built.bytes.length + 7);
    backing.set(built.bytes, 3);
    const view = backing.subarray(3, 3 + built.bytes.length);
    const again = parseElf(view);
    assert.deepEqual(again.symbols, image.symbols);
    assert.deepEqual(again.segments, image.segments);
  });

  it("gives each segment's file bytes", () => {
    const text = segmentBytes(image, image.loadSegments[0]!);
    assert.equal(text.length, 0x200);
    assert.deepEqual(text, built.bytes.subarray(built.segmentOffsets[0]!, built.segmentOffsets[0]! + 0x200));
  });

  it("loads into 32 MiB with .text and .rodata protected", () => {
    const { regions } = loadElf(built.bytes, MEM_32M);
    assert.deepEqual(regions, [
      { name: ".text", start: TEXT, end: TEXT + 0x200 },
      { name: ".rodata", start: RODATA, end: RODATA + 0x100 },
    ]);
  });

  it("fits exactly at the end of RAM", () => {
    validateLayout(image, DATA + 0x1000);
    assertElfError(() => validateLayout(image, DATA + 0xfff), "ELF_LAYOUT", /PT_LOAD segment 2 .* outside guest RAM/);
  });

  it("clips very long symbol names", () => {
    const spec = kernelSpec();
    spec.symbols!.push({ name: "x".repeat(MAX_NAME_BYTES + 50), value: TEXT + 0x100, type: STT_FUNC });
    const names = parseElf(buildElf(spec).bytes).symbols.map((s) => s.name);
    assert.ok(names.includes(`${"x".repeat(MAX_NAME_BYTES)}...`));
  });

  it("skips symbols whose value or end is not below 2^53", () => {
    assert.equal(
      parseElf(withSym(built, "counter", "value", TWO_53)).symbols.some((s) => s.name === "counter"),
      false,
    );
    assert.equal(
      parseElf(withSym(built, "kmain", "size", U64_MAX)).symbols.some((s) => s.name === "kmain"),
      false,
    );
  });

  it("ignores the file offset of SHT_NOBITS sections", () => {
    parseElf(withShdr(built, ".bss", "offset", 0xffff_ffff));
  });
});

describe("parseElf: real system files", () => {
  it("rejects /bin/true, a position-independent executable", (t) => {
    if (!existsSync("/bin/true")) return t.skip("/bin/true not present");
    invalid(readFileSync("/bin/true"), /^ELF type 3 \(ET_DYN: .*\) is not ET_EXEC; link the kernel with -no-pie$/);
  });

  it("rejects /etc/passwd, which is not ELF", (t) => {
    if (!existsSync("/etc/passwd")) return t.skip("/etc/passwd not present");
    invalid(readFileSync("/etc/passwd"), /^not an ELF file \(bad magic\)$/);
  });
});

describe("parseElf: hostile ELF headers", () => {
  const built = kernelElf();

  it("rejects empty and tiny files", () => {
    invalid(new Uint8Array(0), /^not an ELF file \(empty\)$/);
    invalid(Uint8Array.of(0x7f, 0x45), /bad magic/);
    invalid(built.bytes.subarray(0, 10), /too short for an ELF identification/);
    invalid(built.bytes.subarray(0, 40), /too short for an ELF64 header \(40 bytes, need 64\)/);
  });

  it("rejects other classes, encodings, versions, machines and types", () => {
    invalid(withEhdr(built, "class", ELFCLASS32), /^ELF class 1 is not ELF64$/);
    invalid(withEhdr(built, "class", 0), /^ELF class 0 is not ELF64$/);
    invalid(withEhdr(built, "data", ELFDATA2MSB), /^ELF data encoding 2 \(big-endian\) is not little-endian$/);
    invalid(withEhdr(built, "identVersion", 0), /identification version 0/);
    invalid(withEhdr(built, "machine", EM_386), /^machine 3 is not x86-64 \(62\)$/);
    invalid(withEhdr(built, "machine", 40), /^machine 40 is not x86-64/);
    invalid(withEhdr(built, "type", ET_DYN), /ET_DYN/);
    invalid(withEhdr(built, "type", ET_REL), /ELF type 1 \(ET_REL/);
    invalid(withEhdr(built, "type", 0xfe00), /^ELF type 65024 is not ET_EXEC$/);
    invalid(withEhdr(built, "version", 2), /e_version 2/);
    invalid(withEhdr(built, "ehsize", 52), /e_ehsize 52 is not 64/);
  });

  it("rejects an entry point that does not fit in 53 bits", () => {
    invalid(withEhdr(built, "entry", TWO_53), /e_entry 0x20000000000000 exceeds 2\^53/);
    invalid(withEhdr(built, "entry", U64_MAX), /e_entry/);
  });

  it("rejects program header tables outside the file", () => {
    invalid(withEhdr(built, "phoff", built.bytes.length), /^program header 0 extends past end of file$/);
    invalid(withEhdr(built, "phoff", built.bytes.length - 50), /^program header 0 extends past end of file$/);
    invalid(withEhdr(built, "phoff", U64_MAX), /program header 0 extends past end of file/);
    invalid(withEhdr(built, "phoff", 0), /e_phoff 0x0 overlaps the ELF header/);
    invalid(withEhdr(built, "phoff", built.bytes.length - 64), /^program header 1 extends past end of file$/);
  });

  it("rejects section header tables outside the file", () => {
    invalid(withEhdr(built, "shoff", built.bytes.length), /^section header 0 extends past end of file$/);
    invalid(withEhdr(built, "shoff", U64_MAX), /section header 0 extends past end of file/);
    invalid(withEhdr(built, "shnum", 200), /section header \d+ extends past end of file/);
  });

  it("caps header counts", () => {
    invalid(withEhdr(built, "phnum", 0xffff), /PN_XNUM/);
    invalid(withEhdr(built, "phnum", 4097), /e_phnum 4097 exceeds the limit of 4096/);
    invalid(withEhdr(built, "phnum", 4000), /program header \d+ extends past end of file/);
    invalid(withEhdr(built, "shnum", 0xfff0), /e_shnum 65520 exceeds the limit of 4096/);
  });

  it("rejects wrong entry sizes", () => {
    invalid(withEhdr(built, "phentsize", 32), /^e_phentsize 32 is not 56$/);
    invalid(withEhdr(built, "phentsize", 64), /^e_phentsize 64 is not 56$/);
    invalid(withEhdr(built, "shentsize", 0), /^e_shentsize 0 is not 64$/);
  });

  it("rejects extended numbering and inconsistent section counts", () => {
    invalid(withEhdr(built, "shnum", 0), /extended section numbering/);
    invalid(withEhdr(built, "shoff", 0), /e_shnum is 9 but e_shoff is 0/);
    invalid(withEhdr(built, "shstrndx", SHN_XINDEX), /e_shstrndx is SHN_XINDEX/);
  });

  it("rejects a bad section name table index", () => {
    invalid(withEhdr(built, "shstrndx", 9), /^e_shstrndx 9 is out of range \(9 sections\)$/);
    invalid(withEhdr(built, "shstrndx", 1), /^section name table \(section 1\) has type 1, not SHT_STRTAB$/);
  });

  it("accepts e_shstrndx 0: sections are unnamed and regions fall back to section<N>", () => {
    const bytes = withEhdr(built, "shstrndx", 0);
    const image = parseElf(bytes);
    assert.ok(image.sections.every((s) => s.name === ""));
    assert.deepEqual(
      protectedRegions(image).map((r) => r.name),
      ["section1", "section2"],
    );
  });
});

describe("parseElf: hostile program headers", () => {
  const built = kernelElf();

  it("rejects p_filesz > p_memsz in a PT_LOAD", () => {
    invalid(withPhdr(built, 1, "memsz", 0x80), /^program header 1: p_filesz 0x100 exceeds p_memsz 0x80$/);
  });

  it("rejects file ranges past the end, without overflow", () => {
    invalid(withPhdr(built, 0, "offset", U64_MAX), /program header 0: p_offset 0xffffffffffffffff exceeds 2\^53/);
    invalid(withPhdr(built, 0, "filesz", U64_MAX), /program header 0: p_filesz 0xffffffffffffffff exceeds 2\^53/);
    invalid(withPhdr(built, 0, "offset", TWO_53 - 1n), /program header 0: file range .* extends past end of file/);
    invalid(withPhdr(built, 1, "offset", built.bytes.length - 4), /^program header 1: file range .* extends past end/);
    invalid(withPhdr(built, 3, "filesz", 1n << 40n), /program header 3: file range/);
  });

  it("rejects 64-bit addresses and sizes of 2^53 or more", () => {
    for (const field of ["vaddr", "paddr", "memsz", "align"] as const) {
      invalid(withPhdr(built, 0, field, TWO_53), new RegExp(`program header 0: p_${field} 0x20000000000000 exceeds`));
      invalid(withPhdr(built, 0, field, U64_MAX), new RegExp(`program header 0: p_${field}`));
    }
  });

  it("rejects PT_LOAD ranges that end at or past 2^53", () => {
    invalid(withPhdr(built, 0, "vaddr", TWO_53 - 0x10n), /program header 0: p_vaddr \+ p_memsz .* exceeds 2\^53/);
    invalid(withPhdr(built, 0, "paddr", TWO_53 - 0x10n), /program header 0: p_paddr \+ p_memsz/);
  });

  it("rejects PT_INTERP", () => {
    invalid(withPhdr(built, 3, "type", PT_INTERP), /program header 3 is PT_INTERP/);
  });
});

describe("parseElf: hostile sections, strings and symbols", () => {
  const built = kernelElf();

  it("rejects section contents outside the file", () => {
    invalid(
      withShdr(built, ".comment", "offset", built.bytes.length),
      /^section 5: file range .* extends past end of file/,
    );
    invalid(withShdr(built, ".comment", "size", 0x10000), /^section 5: file range/);
    invalid(withShdr(built, ".comment", "size", U64_MAX), /section 5: sh_size 0xffffffffffffffff exceeds 2\^53/);
    invalid(withShdr(built, ".text", "offset", TWO_53 - 1n), /section 1: file range/);
  });

  it("rejects 64-bit section fields of 2^53 or more", () => {
    invalid(withShdr(built, ".text", "flags", 1n << 60n), /section 1: sh_flags 0x1000000000000000 exceeds 2\^53/);
    invalid(withShdr(built, ".text", "addr", U64_MAX), /section 1: sh_addr/);
    invalid(withShdr(built, ".bss", "addr", TWO_53 - 0x10n), /section 4: sh_addr \+ sh_size .* exceeds 2\^53/);
  });

  it("rejects section name indexes outside .shstrtab", () => {
    invalid(withShdr(built, ".text", "name", 0xffff), /^section 1 name index 0xffff is outside the section name table/);
    const shstrtabSize = Number(readInt(built.bytes, built.shoff + sectionNumber(built, ".shstrtab") * 64 + 32, 8));
    invalid(withShdr(built, ".text", "name", shstrtabSize), /section 1 name index/);
  });

  it("rejects string tables that are not NUL-terminated", () => {
    const shstrtabSize = readInt(built.bytes, built.shoff + sectionNumber(built, ".shstrtab") * 64 + 32, 8);
    invalid(
      withShdr(built, ".shstrtab", "size", shstrtabSize - 1n),
      /section name table \(section 8\) is not NUL-terminated/,
    );
    const strtabSize = readInt(built.bytes, built.shoff + sectionNumber(built, ".strtab") * 64 + 32, 8);
    invalid(
      withShdr(built, ".strtab", "size", strtabSize - 1n),
      /^symbol string table \(section 7\) is not NUL-terminated$/,
    );
  });

  it("accepts an empty string table only for name index 0", () => {
    const bytes = withShdr(built, ".strtab", "size", 0);
    invalid(bytes, /^symbol 1 name index 0x1 is outside the symbol string table \(section 7, 0 bytes\)$/);
  });

  it("rejects symbol name indexes outside .strtab", () => {
    invalid(withSym(built, "kmain", "name", 0x7fffffff), /^symbol 4 name index 0x7fffffff is outside/);
    invalid(withSym(built, "kernel.c", "name", 0x7fffffff), /^symbol 1 name index/);
  });

  it("rejects a symbol table linked to something other than a string table", () => {
    invalid(withShdr(built, ".symtab", "link", 1), /symbol table \(section 6\): sh_link 1 is not a string table/);
    invalid(withShdr(built, ".symtab", "link", 6), /sh_link 6 is not a string table/);
    invalid(withShdr(built, ".symtab", "link", 9999), /sh_link 9999 is not a string table/);
  });

  it("rejects bad symbol table entry sizes and sizes", () => {
    invalid(withShdr(built, ".symtab", "entsize", 0), /symbol table \(section 6\): sh_entsize 0 is not 24/);
    invalid(withShdr(built, ".symtab", "entsize", 16), /sh_entsize 16 is not 24/);
    invalid(withShdr(built, ".symtab", "size", 25), /sh_size 0x19 is not a multiple of 24/);
  });

  it("caps the number of symbols", () => {
    const symtabOffset = built.sectionOffsets[sectionNumber(built, ".symtab")]!;
    const count = 1_000_001;
    const big = new Uint8Array(symtabOffset + count * 24);
    big.set(built.bytes);
    writeInt(big, built.shoff + sectionNumber(built, ".symtab") * 64 + 32, 8, count * 24);
    invalid(big, /symbol table \(section 6\) has 1000001 entries \(limit 1000000\)/);
  });

  it("limits the bytes of names read from one string table", () => {
    // 70,000 symbols that all name the same 1,024-byte string: 70 MiB of names from a 1.5 MiB file.
    const count = 70_000;
    const symtabAt = built.bytes.length;
    const strtabAt = symtabAt + count * 24;
    const bytes = new Uint8Array(strtabAt + MAX_NAME_BYTES + 2);
    bytes.set(built.bytes);
    bytes.fill(0x61, strtabAt + 1, strtabAt + 1 + MAX_NAME_BYTES);
    for (let i = 1; i < count; i++) {
      writeInt(bytes, symtabAt + i * 24, 4, 1);
      writeInt(bytes, symtabAt + i * 24 + 4, 1, STT_FUNC);
      writeInt(bytes, symtabAt + i * 24 + 6, 2, 1);
      writeInt(bytes, symtabAt + i * 24 + 8, 8, TEXT);
    }
    const header = (name: string, field: number, value: number) =>
      writeInt(bytes, built.shoff + sectionNumber(built, name) * 64 + field, 8, value);
    header(".symtab", 24, symtabAt);
    header(".symtab", 32, count * 24);
    header(".strtab", 24, strtabAt);
    header(".strtab", 32, MAX_NAME_BYTES + 2);
    invalid(bytes, /^names read from the symbol string table \(section 7\) exceed 64 MiB in total$/);
    header(".symtab", 32, 60_000 * 24);
    assert.equal(parseElf(bytes).symbols.length, 60_000 - 1);
  });

  it("rejects more than one symbol table", () => {
    invalid(withShdr(built, ".comment", "type", SHT_SYMTAB), /2 SHT_SYMTAB sections/);
  });

  it("rejects symbols with an out-of-range section index", () => {
    invalid(withSym(built, "kmain", "shndx", 500), /^symbol 4: section index 500 is out of range \(9 sections\)$/);
    parseElf(withSym(built, "kmain", "shndx", SHN_ABS));
  });
});

describe("validateLayout", () => {
  const layout = (spec: ElfSpec) => buildElf(spec).bytes;
  const textAt = (paddr: number, extra: Partial<ElfSpec> = {}): ElfSpec => ({
    entry: paddr,
    segments: [{ flags: PF_R | PF_X, vaddr: paddr, filesz: 0x100 }],
    sections: false,
    ...extra,
  });

  it("rejects segments outside guest RAM", () => {
    badLayout(kernelElf().bytes, /^PT_LOAD segment 0 \[0x100000,0x100200\) lies outside guest RAM \(1 MiB\)$/, MiB);
    badLayout(
      layout(textAt(32 * MiB - 0x80)),
      /PT_LOAD segment 0 \[0x1ffff80,0x2000080\) lies outside guest RAM \(32 MiB\)/,
    );
    badLayout(kernelElf().bytes, /outside guest RAM \(\d+ bytes\)$/, DATA + 0xfff);
  });

  it("rejects overlapping segments", () => {
    const spec = kernelSpec();
    spec.segments[1]!.paddr = TEXT + 0x100;
    spec.sections = false;
    badLayout(layout(spec), /^PT_LOAD segments 0 and 1 overlap$/);
    const reversed = kernelSpec();
    reversed.segments[0]!.paddr = RODATA + 0x80;
    reversed.sections = false;
    badLayout(layout(reversed), /^PT_LOAD segments 0 and 1 overlap$/);
  });

  it("rejects segments in page 0 or the boot area", () => {
    badLayout(layout(textAt(0x8000)), /^segment 0 \[0x8000,0x8100\) overlaps the boot area \[0x1000,0x10000\)$/);
    badLayout(layout(textAt(0x1000)), /overlaps the boot area/);
    badLayout(layout(textAt(0xff80)), /^segment 0 \[0xff80,0x10080\) overlaps the boot area/);
    badLayout(layout(textAt(0)), /^segment 0 \[0x0,0x100\) touches page 0/);
    badLayout(layout(textAt(0x800)), /touches page 0/);
    loadElf(layout(textAt(0x10000)), MEM_32M);
  });

  it("ignores empty PT_LOAD segments", () => {
    const spec = kernelSpec();
    spec.segments.push({ flags: PF_R, vaddr: 0, filesz: 0, memsz: 0 });
    loadElf(layout(spec), MEM_32M);
  });

  it("requires the entry point inside an executable PT_LOAD", () => {
    const built = kernelElf();
    badLayout(
      withEhdr(built, "entry", RODATA + 4),
      /^entry point 0x101004 is in segment 1, which is not executable \(no PF_X\)$/,
    );
    badLayout(withEhdr(built, "entry", 0x500000), /^entry point 0x500000 is not inside any PT_LOAD segment$/);
    badLayout(withEhdr(built, "entry", TEXT + 0x200), /is not inside any PT_LOAD segment/);
    badLayout(withEhdr(built, "entry", 0), /not inside any PT_LOAD/);
    loadElf(withEhdr(built, "entry", TEXT + 0x1ff), MEM_32M);
  });

  it("requires at least one PT_LOAD", () => {
    const spec: ElfSpec = {
      entry: TEXT,
      segments: [{ type: PT_GNU_STACK, flags: PF_R | PF_W, vaddr: 0 }],
      sections: false,
    };
    badLayout(layout(spec), /no non-empty PT_LOAD segment/);
    badLayout(layout({ entry: TEXT, segments: [], sections: false }), /no non-empty PT_LOAD segment/);
  });

  it("translates the entry point through the segment's vaddr -> paddr", () => {
    const spec: ElfSpec = {
      entry: 0x4000_0010,
      segments: [{ flags: PF_R | PF_X, vaddr: 0x4000_0000, paddr: 0x20_0000, filesz: 0x100 }],
      sections: [{ name: ".text", flags: SHF_ALLOC, addr: 0x4000_0000, size: 0x100 }],
    };
    const { image, regions } = loadElf(layout(spec), MEM_32M);
    assert.equal(physicalEntry(image), 0x20_0010);
    assert.deepEqual(regions, [{ name: ".text", start: 0x20_0000, end: 0x20_0100 }]);
  });

  it("rejects a memory size that is not a positive integer", () => {
    const image = parseElf(kernelElf().bytes);
    for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 60]) {
      assert.throws(
        () => validateLayout(image, bad),
        (e: unknown) => e instanceof GuardvisorError && e.code === "CONFIG_INVALID",
      );
    }
  });
});

describe("protectedRegions", () => {
  it("uses non-writable PT_LOADs when there are no section headers", () => {
    const spec = kernelSpec();
    spec.sections = false;
    const { image, regions } = loadElf(buildElf(spec).bytes, MEM_32M);
    assert.equal(image.sections.length, 0);
    assert.deepEqual(regions, [
      { name: "segment0", start: TEXT, end: TEXT + 0x200 },
      { name: "segment1", start: RODATA, end: RODATA + 0x100 },
    ]);
  });

  it("uses non-writable PT_LOADs when no section is allocated", () => {
    const spec = kernelSpec();
    spec.sections = [{ name: ".comment", data: Uint8Array.of(1, 2, 3) }];
    delete spec.symbols;
    assert.deepEqual(
      protectedRegions(parseElf(buildElf(spec).bytes)).map((r) => r.name),
      ["segment0", "segment1"],
    );
  });

  it("leaves out empty, NOBITS and writable sections", () => {
    const spec = kernelSpec();
    spec.sections = [
      ...(spec.sections || []),
      { name: ".empty", flags: SHF_ALLOC, addr: TEXT + 0x100, size: 0 },
      { name: ".rbss", type: SHT_NOBITS, flags: SHF_ALLOC, addr: RODATA + 0x80, size: 0x20 },
    ];
    assert.deepEqual(
      protectedRegions(parseElf(buildElf(spec).bytes)).map((r) => r.name),
      [".text", ".rodata"],
    );
  });

  it("sorts regions by start", () => {
    const spec = kernelSpec();
    spec.sections = [
      { name: ".rodata", flags: SHF_ALLOC, addr: RODATA, size: 0x100 },
      { name: ".text", flags: SHF_ALLOC, addr: TEXT, size: 0x200 },
      { name: ".text.tail", type: SHT_PROGBITS, flags: SHF_ALLOC, addr: TEXT + 0x200, size: 0 },
    ];
    delete spec.symbols;
    assert.deepEqual(
      protectedRegions(parseElf(buildElf(spec).bytes)).map((r) => r.name),
      [".text", ".rodata"],
    );
  });

  it("rejects a protected section outside every PT_LOAD", () => {
    const built = kernelElf();
    const image = parseElf(withShdr(built, ".rodata", "addr", 0x200000));
    assertElfError(
      () => protectedRegions(image),
      "ELF_INVALID",
      /^section 2 \(\.rodata\) \[0x200000,0x200100\) is not inside any PT_LOAD segment$/,
    );
    const straddling = parseElf(withShdr(built, ".text", "size", 0x201));
    assertElfError(() => protectedRegions(straddling), "ELF_INVALID", /section 1 \(\.text\)/);
  });

  it("rejects overlapping protected sections", () => {
    const built = kernelElf();
    const bytes = withShdr(built, ".rodata", "addr", TEXT + 0x100);
    writeInt(bytes, built.shoff + 2 * 64 + 32, 8, 0x80);
    assertElfError(
      () => protectedRegions(parseElf(bytes)),
      "ELF_INVALID",
      /^protected regions \.text and \.rodata overlap$/,
    );
  });

  it("escapes control characters in section names in messages", () => {
    const spec = kernelSpec();
    spec.sections = [{ name: ".ro\ndata", flags: SHF_ALLOC, addr: 0x300000, size: 0x10 }];
    const image = parseElf(buildElf(spec).bytes);
    assertElfError(() => protectedRegions(image), "ELF_INVALID", /\(\.ro\\x0adata\)/);
  });
});

describe("hostile inputs: truncation, garbage and mutation", () => {
  const built = kernelElf();

  it("handles truncation at every length", () => {
    const tally = { ok: 0, ELF_INVALID: 0, ELF_LAYOUT: 0 };
    for (let n = 0; n <= built.bytes.length; n++) {
      const result = outcome(() => parseElf(built.bytes.subarray(0, n)));
      tally[result]++;
      if (n < built.bytes.length) assert.equal(result, "ELF_INVALID", `truncated to ${n} bytes`);
    }
    assert.deepEqual(tally, { ok: 1, ELF_INVALID: built.bytes.length, ELF_LAYOUT: 0 });
  });

  it("handles truncation of a copy (no shared buffer beyond the end)", () => {
    for (let n = 0; n < built.bytes.length; n += 7) {
      assert.equal(
        outcome(() => parseElf(built.bytes.slice(0, n))),
        "ELF_INVALID",
      );
    }
  });

  it("rejects random garbage, with and without a valid identification", () => {
    const random = prng(0x5eed);
    const header = built.bytes.subarray(0, 64);
    for (let i = 0; i < 500; i++) {
      const bytes = new Uint8Array(Math.floor(random() * 4096));
      for (let k = 0; k < bytes.length; k++) bytes[k] = Math.floor(random() * 256);
      if (i % 2 === 1 && bytes.length >= 16)
        bytes.set(header.subarray(0, Math.min(bytes.length, i % 4 === 1 ? 16 : 64)));
      const result = outcome(() => fullPipeline(bytes));
      assert.notEqual(result, "ok", `garbage ${i} parsed`);
    }
  });

  it("survives 2000 seeded mutations of a valid image", (t) => {
    const random = prng(20240611);
    const pick = (n: number) => Math.floor(random() * n);
    const headerEnd = built.phoff + 4 * 56;
    const tally = { ok: 0, ELF_INVALID: 0, ELF_LAYOUT: 0 };
    for (let i = 0; i < 2000; i++) {
      const bytes = built.bytes.slice();
      const mutations = 1 + pick(4);
      for (let m = 0; m < mutations; m++) mutate(bytes, random, pick, headerEnd, built);
      tally[outcome(() => fullPipeline(bytes))]++;
    }
    t.diagnostic(`mutation outcomes: ${JSON.stringify(tally)}`);
    assert.ok(tally.ELF_INVALID > 0 && tally.ok > 0);
  });
});

/** One random mutation: a byte flip in the headers, anywhere, or a wide value at a 64-bit field. */
function mutate(
  bytes: Uint8Array,
  random: () => number,
  pick: (n: number) => number,
  headerEnd: number,
  built: BuiltElf,
): void {
  const choice = random();
  if (choice < 0.4) {
    bytes[pick(headerEnd)] ^= 1 << pick(8);
  } else if (choice < 0.6) {
    bytes[pick(bytes.length)] = pick(256);
  } else if (choice < 0.8) {
    const shdrs = bytes.length - built.shoff;
    bytes[built.shoff + pick(shdrs)] = pick(256);
  } else {
    const interesting = [0n, 1n, 0xffn, 0x7fff_ffffn, 0xffff_ffffn, TWO_53 - 1n, TWO_53, U64_MAX, BigInt(bytes.length)];
    const at = pick(Math.floor(bytes.length / 8)) * 8;
    writeInt(bytes, at, 8, interesting[pick(interesting.length)]!);
  }
}

describe("a gcc-built kernel image", () => {
  let dir = "";
  let image: ElfImage | undefined;
  let skipReason = "";

  before(() => {
    const probe = spawnSync("gcc", ["--version"], { encoding: "utf8" });
    if (probe.error || probe.status !== 0) {
      skipReason = "gcc not found: SKIPPING the gcc-built kernel image tests";
      console.warn(`\n*** ${skipReason} ***\n`);
      return;
    }
    dir = mkdtempSync(join(tmpdir(), "gv-elf-test-"));
    writeFileSync(join(dir, "kernel.c"), KERNEL_C);
    writeFileSync(join(dir, "kernel.ld"), KERNEL_LD);
    const out = join(dir, "kernel.elf");
    const cc = spawnSync("gcc", [...GCC_FLAGS, `-Wl,-T,${join(dir, "kernel.ld")}`, "-o", out, join(dir, "kernel.c")], {
      encoding: "utf8",
    });
    assert.equal(cc.status, 0, `gcc failed: ${cc.stderr}`);
    image = parseElf(readFileSync(out));
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("parses and lays out", (t) => {
    if (!image) return t.skip(skipReason);
    validateLayout(image, MEM_32M);
    assert.equal(image.loadSegments[0]!.paddr, 0x100000);
    const start = image.symbols.find((s) => s.name === "_start");
    assert.equal(image.entry, start?.value);
    assert.equal(start?.type, STT_FUNC);
  });

  it("protects .text and .rodata but not .data or .bss", (t) => {
    if (!image) return t.skip(skipReason);
    const regions = protectedRegions(image);
    assert.deepEqual(
      regions.map((r) => r.name),
      [".text", ".rodata"],
    );
    const text = image.sections.find((s) => s.name === ".text")!;
    const rodata = image.sections.find((s) => s.name === ".rodata")!;
    assert.deepEqual(regions[0], { name: ".text", start: 0x100000, end: 0x100000 + text.size });
    assert.equal(regions[1]!.start % 4096, 0);
    assert.equal(regions[1]!.end, rodata.addr + rodata.size);
  });

  it("reads functions, objects and linker-script symbols", (t) => {
    if (!image) return t.skip(skipReason);
    const byName = new Map(image.symbols.map((s) => [s.name, s]));
    assert.equal(byName.get("add")?.type, STT_FUNC);
    assert.equal(byName.get("counter")?.type, STT_OBJECT);
    assert.equal(byName.get("table")?.size, 32);
    assert.equal(byName.get("__kernel_end")?.type, STT_NOTYPE);
    assert.equal(byName.has("kernel.c"), false);
  });

  it("symbolizes addresses in functions and data", (t) => {
    if (!image) return t.skip(skipReason);
    const sym = new Symbolizer(image.symbols);
    const add = image.symbols.find((s) => s.name === "add")!;
    const table = image.symbols.find((s) => s.name === "table")!;
    assert.equal(sym.format(add.value), "add");
    assert.equal(sym.format(add.value + 3), "add+0x3");
    assert.equal(sym.format(table.value + 8), "table+0x8");
    assert.equal(sym.format(image.entry), "_start");
    assert.equal(sym.format(0x10), "0x10");
  });
});

const KERNEL_C = `
static const char greeting[] = "hello from rodata";
const unsigned long table[4] = {1, 2, 3, 4};
int counter = 5;
long scratch[64];

__attribute__((noinline)) int add(int a, int b) { return a + b + counter; }

void _start(void) {
  for (;;) {
    counter = add(counter, greeting[counter & 7] + (int)table[counter & 3]);
    scratch[counter & 63] = counter;
    __asm__ volatile("hlt");
  }
}
`;

const KERNEL_LD = `
ENTRY(_start)
SECTIONS {
  . = 0x100000;
  __text_start = .;
  .text : { *(.text .text.*) }
  . = ALIGN(4096);
  .rodata : { *(.rodata .rodata.*) }
  . = ALIGN(4096);
  .data : { *(.data .data.*) }
  .bss : { *(.bss .bss.* COMMON) }
  __kernel_end = .;
  /DISCARD/ : { *(.note*) *(.eh_frame*) *(.comment) }
}
`;

const GCC_FLAGS = [
  "-ffreestanding",
  "-O1",
  "-g0",
  "-fno-asynchronous-unwind-tables",
  "-fno-stack-protector",
  "-fcf-protection=none",
  "-mno-red-zone",
  "-nostdlib",
  "-static",
  "-no-pie",
  "-fno-pic",
  "-Wl,--build-id=none",
];
