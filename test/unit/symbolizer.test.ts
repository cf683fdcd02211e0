import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type ElfSymbol,
  parseElf,
  SHN_ABS,
  STB_GLOBAL,
  STB_LOCAL,
  STB_WEAK,
  STT_FILE,
  STT_FUNC,
  STT_NOTYPE,
  STT_OBJECT,
  STT_SECTION,
  STT_TLS,
} from "../../src/elf/elf.js";
import { MAX_LABEL_DISTANCE, Symbolizer } from "../../src/elf/symbolizer.js";
import { DATA, kernelElf, prng, RODATA, TEXT } from "./elf-fixtures.js";

function sym(name: string, value: number, size = 0, type = STT_FUNC, bind = STB_GLOBAL, sectionIndex = 1): ElfSymbol {
  return { name, value, size, type, bind, sectionIndex };
}

describe("Symbolizer: basic lookups", () => {
  const symbols = [
    sym("_start", 0x1000, 0, STT_NOTYPE),
    sym("main", 0x1010, 0x40),
    sym("helper", 0x1050, 0x10, STT_FUNC, STB_LOCAL),
    sym("table", 0x2000, 0x100, STT_OBJECT),
    sym("__end", 0x3000, 0, STT_NOTYPE),
  ];
  const s = new Symbolizer(symbols);

  it("names an exact match without an offset", () => {
    assert.equal(s.format(0x1010), "main");
    assert.deepEqual(s.lookup(0x1010), { name: "main", offset: 0 });
    assert.equal(s.format(0x2000), "table");
  });

  it("names an address inside a sized symbol with its offset", () => {
    assert.equal(s.format(0x1014), "main+0x4");
    assert.equal(s.format(0x104f), "main+0x3f");
    assert.equal(s.format(0x1055), "helper+0x5");
    assert.deepEqual(s.lookup(0x20ff), { name: "table", offset: 0xff });
  });

  it("names an address after a zero-sized label, up to a sized symbol", () => {
    assert.equal(s.format(0x1000), "_start");
    assert.equal(s.format(0x100c), "_start+0xc");
  });

  it("leaves addresses between a sized symbol's end and the next symbol unknown", () => {
    assert.equal(s.lookup(0x1060), undefined);
    assert.equal(s.format(0x1060), "0x1060");
    assert.equal(s.format(0x2100), "0x2100");
    assert.equal(s.format(0x2fff), "0x2fff");
  });

  it("leaves addresses before the first symbol unknown", () => {
    assert.equal(s.format(0), "0x0");
    assert.equal(s.format(0xfff), "0xfff");
  });

  it("names addresses after the last label only within MAX_LABEL_DISTANCE", () => {
    assert.equal(s.format(0x3000 + MAX_LABEL_DISTANCE - 1), "__end+0xffff");
    assert.equal(s.format(0x3000 + MAX_LABEL_DISTANCE), "0x13000");
    assert.equal(s.format(0xffff_ffff_ffff), "0xffffffffffff");
  });

  it("handles addresses that are not non-negative safe integers", () => {
    assert.equal(s.lookup(-1), undefined);
    assert.equal(s.lookup(0x1010 + 0.5), undefined);
    assert.equal(s.lookup(2 ** 60), undefined);
    assert.equal(s.format(-1), "-1");
    assert.equal(s.format(Number.NaN), "NaN");
  });

  it("works with no symbols", () => {
    const empty = new Symbolizer([]);
    assert.equal(empty.lookup(0x1000), undefined);
    assert.equal(empty.format(0x1000), "0x1000");
  });
});

describe("Symbolizer: zero-sized symbols and ties", () => {
  it("treats zero-sized symbols as labels; a sized symbol at the same address wins", () => {
    const s = new Symbolizer([sym("__text_start", 0x1000, 0, STT_NOTYPE), sym("entry", 0x1000, 0x20)]);
    assert.equal(s.format(0x1000), "entry");
    assert.equal(s.format(0x1010), "entry+0x10");
    assert.equal(s.format(0x1020), "0x1020", "the sized symbol ended, so the label does not reach past it");
  });

  it("names an address by a zero-sized FUNC or OBJECT too", () => {
    const s = new Symbolizer([sym("asm_entry", 0x4000), sym("marker", 0x5000, 0, STT_OBJECT)]);
    assert.equal(s.format(0x4008), "asm_entry+0x8");
    assert.equal(s.format(0x5001), "marker+0x1");
  });

  it("prefers the covering sized symbol over a later label inside it", () => {
    const s = new Symbolizer([sym("func", 0x1000, 0x100), sym("inner_label", 0x1080, 0, STT_NOTYPE)]);
    assert.equal(s.format(0x1090), "func+0x90");
    assert.equal(s.format(0x1100), "inner_label+0x80");
  });

  it("picks among aliases: FUNC over OBJECT over NOTYPE, GLOBAL over WEAK over LOCAL, then by name", () => {
    const s1 = new Symbolizer([sym("obj", 0x1000, 0x10, STT_OBJECT), sym("fn", 0x1000, 0x10, STT_FUNC)]);
    assert.equal(s1.format(0x1004), "fn+0x4");
    const s2 = new Symbolizer([
      sym("local", 0x1000, 0x10, STT_FUNC, STB_LOCAL),
      sym("weak", 0x1000, 0x10, STT_FUNC, STB_WEAK),
      sym("global", 0x1000, 0x10, STT_FUNC, STB_GLOBAL),
    ]);
    assert.equal(s2.format(0x1000), "global");
    const s3 = new Symbolizer([sym("memcpy", 0x1000, 0x10), sym("__memcpy", 0x1000, 0x10)]);
    assert.equal(s3.format(0x1000), "__memcpy");
    const labels = new Symbolizer([sym("b_label", 0x1000, 0, STT_NOTYPE), sym("a_label", 0x1000, 0, STT_NOTYPE)]);
    assert.equal(labels.format(0x1001), "a_label+0x1");
  });

  it("is independent of input order", () => {
    const symbols = [
      sym("a", 0x1000, 0x10),
      sym("b", 0x1000, 0x10),
      sym("c", 0x1008, 0x4, STT_OBJECT),
      sym("d", 0x1020, 0, STT_NOTYPE),
    ];
    const forward = new Symbolizer(symbols);
    const backward = new Symbolizer([...symbols].reverse());
    for (let a = 0xff0; a < 0x1040; a++) assert.equal(forward.format(a), backward.format(a));
  });
});

describe("Symbolizer: overlapping sized symbols", () => {
  it("names the innermost of nested symbols", () => {
    const s = new Symbolizer([sym("outer", 0x1000, 0x100, STT_OBJECT), sym("inner", 0x1040, 0x10, STT_OBJECT)]);
    assert.equal(s.format(0x1020), "outer+0x20");
    assert.equal(s.format(0x1044), "inner+0x4");
    assert.equal(s.format(0x1050), "outer+0x50");
    assert.equal(s.format(0x10ff), "outer+0xff");
    assert.equal(s.format(0x1100), "0x1100");
  });

  it("names the later-starting of partly overlapping symbols", () => {
    const s = new Symbolizer([sym("a", 0x100, 0x100), sym("b", 0x180, 0x100)]);
    assert.equal(s.format(0x150), "a+0x50");
    assert.equal(s.format(0x190), "b+0x10");
    assert.equal(s.format(0x210), "b+0x90");
    assert.equal(s.format(0x280), "0x280");
  });

  it("prefers the smaller of two sized symbols at the same address", () => {
    const s = new Symbolizer([sym("big", 0x100, 0x100), sym("small", 0x100, 0x10)]);
    assert.equal(s.format(0x108), "small+0x8");
    assert.equal(s.format(0x110), "big+0x10");
  });
});

describe("Symbolizer: which symbols take part", () => {
  it("ignores STT_NOTYPE symbols with value 0 or SHN_ABS, and other types", () => {
    const s = new Symbolizer([
      sym("zero", 0, 0, STT_NOTYPE),
      sym("KERNEL_SIZE", 0x3000, 0, STT_NOTYPE, STB_GLOBAL, SHN_ABS),
      sym("tls_var", 0x10, 8, STT_TLS),
      sym("sec", 0x5000, 0x100, STT_SECTION),
      sym("file.c", 0x6000, 0, STT_FILE),
      sym("", 0x7000, 0x10, STT_FUNC),
    ]);
    for (const addr of [0, 4, 0x10, 0x3000, 0x3004, 0x5000, 0x6000, 0x7000]) assert.equal(s.lookup(addr), undefined);
  });

  it("keeps absolute FUNC and OBJECT symbols", () => {
    const s = new Symbolizer([sym("bios_entry", 0xf000, 0x10, STT_FUNC, STB_GLOBAL, SHN_ABS)]);
    assert.equal(s.format(0xf001), "bios_entry+0x1");
  });

  it("names addresses in a parsed fixture image", () => {
    const s = new Symbolizer(parseElf(kernelElf().bytes).symbols);
    assert.equal(s.format(TEXT), "_start");
    assert.equal(s.format(TEXT + 4), "_start+0x4");
    assert.equal(s.format(TEXT + 0x14), "kmain+0x4");
    assert.equal(s.format(TEXT + 0x55), "helper+0x5");
    assert.equal(s.format(TEXT + 0x70), "0x100070");
    assert.equal(s.format(RODATA + 0x1f), "banner+0x1f");
    assert.equal(s.format(DATA), "counter");
    assert.equal(s.format(DATA + 0x100), "__bss_start+0x80");
    assert.equal(s.format(0x3000), "0x3000", "SHN_ABS NOTYPE symbols are not addresses");
  });
});

/** A direct, slow statement of the documented rule, to check the indexed implementation against. */
function referenceLookup(symbols: ElfSymbol[], addr: number): { name: string; offset: number } | undefined {
  const typeRank = (t: number) => (t === STT_FUNC ? 0 : t === STT_OBJECT ? 1 : t === STT_NOTYPE ? 2 : 3);
  const bindRank = (b: number) => (b === STB_GLOBAL ? 0 : b === STB_WEAK ? 1 : 2);
  const better = (a: ElfSymbol, b: ElfSymbol) =>
    a.size - b.size ||
    typeRank(a.type) - typeRank(b.type) ||
    bindRank(a.bind) - bindRank(b.bind) ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const usable = symbols.filter(
    (s) =>
      s.name !== "" &&
      (s.type === STT_FUNC ||
        s.type === STT_OBJECT ||
        (s.type === STT_NOTYPE && s.value !== 0 && s.sectionIndex !== SHN_ABS)),
  );
  const covering = usable.filter((s) => s.size > 0 && s.value <= addr && addr < s.value + s.size);
  if (covering.length > 0) {
    const best = covering.sort((a, b) => b.value - a.value || better(a, b))[0]!;
    return { name: best.name, offset: addr - best.value };
  }
  const preceding = usable.filter((s) => s.value <= addr);
  if (preceding.length === 0) return undefined;
  const nearest = Math.max(...preceding.map((s) => s.value));
  const group = preceding.filter((s) => s.value === nearest);
  if (group.some((s) => s.size > 0) || addr - nearest >= MAX_LABEL_DISTANCE) return undefined;
  const best = group.sort(better)[0]!;
  return { name: best.name, offset: addr - nearest };
}

describe("Symbolizer: agrees with the reference rule", () => {
  it("on 300 random symbol sets", () => {
    const random = prng(7);
    const pick = (n: number) => Math.floor(random() * n);
    const types = [STT_FUNC, STT_OBJECT, STT_NOTYPE, STT_NOTYPE, STT_SECTION];
    const binds = [STB_GLOBAL, STB_WEAK, STB_LOCAL];
    for (let round = 0; round < 300; round++) {
      const symbols: ElfSymbol[] = [];
      const count = pick(12);
      for (let i = 0; i < count; i++) {
        const size = random() < 0.3 ? 0 : pick(0x40);
        symbols.push(sym(`s${pick(6)}`, pick(0x100), size, types[pick(types.length)]!, binds[pick(binds.length)]!));
      }
      const s = new Symbolizer(symbols);
      for (let addr = 0; addr < 0x160; addr++) {
        assert.deepEqual(
          s.lookup(addr),
          referenceLookup(symbols, addr),
          `round ${round} addr ${addr}: ${JSON.stringify(symbols)}`,
        );
      }
    }
  });
});

describe("Symbolizer: scale", () => {
  it("indexes 200,000 symbols and answers 200,000 lookups quickly", () => {
    const symbols: ElfSymbol[] = [];
    for (let i = 0; i < 200_000; i++) symbols.push(sym(`f${i}`, 0x100000 + i * 0x40, 0x30));
    const started = performance.now();
    const s = new Symbolizer(symbols);
    let named = 0;
    for (let i = 0; i < 200_000; i++) if (s.lookup(0x100000 + i * 0x40 + 0x10)) named++;
    const elapsed = performance.now() - started;
    assert.equal(named, 200_000);
    assert.equal(s.format(0x100000 + 1234 * 0x40 + 8), "f1234+0x8");
    assert.equal(s.format(0x100000 + 1234 * 0x40 + 0x38), "0x1134b8");
    assert.ok(elapsed < 5000, `took ${elapsed.toFixed(0)} ms`);
  });
});
