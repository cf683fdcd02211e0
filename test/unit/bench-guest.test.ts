/**
 * The benchmark guest as built (no KVM needed): the page bench-write targets
 * is a protected region of its own, backed read-only and sharing its page
 * with nothing; the #UD site and the scenarios are where the kernel and the
 * bench command expect them.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { PF_W, SHF_ALLOC, SHF_WRITE, SHT_PROGBITS } from "../../src/elf/elf.js";
import { loadElf } from "../../src/elf/kernel-image.js";
import { packageRoot } from "../../src/kvm/native.js";
import { makeRegions } from "../../src/model/regions.js";
import { MIB } from "../../src/vmm/boot.js";
import { ProtectionMap, planMemorySlots } from "../../src/vmm/protection.js";

const MEM = 32 * MIB;
const kernel = readFileSync(join(packageRoot(), "guest", "out", "gv-kernel.elf"));
const { image, regions: elfRegions } = loadElf(kernel, MEM);
const regions = makeRegions(elfRegions, MEM);
const sym = (name: string) => {
  const s = image.symbols.find((x) => x.name === name);
  assert.ok(s, `symbol ${name}`);
  return s;
};

describe("benchmark guest (gv-kernel)", () => {
  it(".benchpage is one page, allocated, read-only in the ELF, in a PT_LOAD of its own below 2 MiB", () => {
    const sec = image.sections.find((s) => s.name === ".benchpage");
    assert.ok(sec);
    assert.equal(sec.type, SHT_PROGBITS);
    assert.equal(sec.flags & (SHF_ALLOC | SHF_WRITE), SHF_ALLOC);
    assert.equal(sec.size, 4096);
    assert.equal(sec.addr % 4096, 0);
    assert.ok(sec.addr + sec.size <= 2 * MIB);
    const segs = image.loadSegments.filter((s) => s.vaddr < sec.addr + sec.size && sec.addr < s.vaddr + s.memsz);
    assert.equal(segs.length, 1);
    assert.equal(segs[0]!.flags & PF_W, 0);
    assert.equal(segs[0]!.vaddr, sec.addr);
    assert.equal(segs[0]!.memsz, 4096);
    assert.equal(sym("gv_bench_page").value, sec.addr);
  });

  it("is the last protected region, so the other regions keep their ids", () => {
    assert.deepEqual(
      regions.map((r) => [r.id, r.name]),
      [
        [1, ".text"],
        [2, ".rodata"],
        [3, ".utext"],
        [4, ".benchpage"],
      ],
    );
  });

  it("a write to the page is a protected write; the pages around it are ordinary RAM", () => {
    const page = sym("gv_bench_page").value;
    const map = new ProtectionMap(regions, MEM);
    const t = map.classifyWrite(page, 8);
    assert.equal(t.kind, "protected");
    assert.equal(t.kind === "protected" && t.region.name, ".benchpage");
    assert.equal(map.classifyWrite(page - 8, 8).kind, "writable");
    assert.equal(map.classifyWrite(page + 4096, 8).kind, "writable");
    const slots = planMemorySlots(MEM, regions);
    assert.ok(slots.some((s) => s.readonly && s.gpa === page && s.size === 4096));
  });

  it("bench_ud_site is ud2; ret in ring-3 text; bench_args is ring-3 data", () => {
    const utext = image.sections.find((s) => s.name === ".utext")!;
    const udata = image.sections.find((s) => s.name === ".udata")!;
    const site = sym("bench_ud_site").value;
    assert.ok(site >= utext.addr && site < utext.addr + utext.size);
    const at = utext.offset + (site - utext.addr);
    assert.deepEqual([...kernel.subarray(at, at + 3)], [0x0f, 0x0b, 0xc3]);
    const args = sym("bench_args").value;
    assert.ok(args >= udata.addr && args < udata.addr + udata.size);
  });

  it("registers the three scenarios and has the exception entry the baseline breaks on", () => {
    const text = kernel.toString("latin1");
    for (const name of ["bench-write", "bench-ud", "bench-benign"]) assert.ok(text.includes(`${name}\0`), name);
    const entry = sym("gv_exception_entry").value;
    const textSec = image.sections.find((s) => s.name === ".text")!;
    assert.ok(entry >= textSec.addr && entry < textSec.addr + textSec.size);
  });
});
