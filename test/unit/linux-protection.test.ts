/**
 * Stock-Linux protection without KVM: the kernel's sanctioned patching
 * (patch sites read from a synthetic vmlinux, the text_poke test on a write),
 * the page-table walk's R/W answer, hardware breakpoints on several entries,
 * oops/panic capture at __die and panic, and the seal's pinned-register check
 * and text_poke path. Guest memory is real (no KVM needed); its page tables
 * are built by hand; every other dependency is a fake.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, beforeEach, describe, it } from "node:test";
import { ABI_CONSTANTS as C, CONTEXT_FLAGS } from "../../src/abi/guest-abi.js";
import { VmmDecider } from "../../src/decide/decider.js";
import { compilePolicy, DEFAULT_POLICY, type Policy } from "../../src/decide/policy.js";
import { GuestMemory } from "../../src/kvm/guest-memory.js";
import { packageRoot } from "../../src/kvm/native.js";
import { type Regs, type Sregs, zeroRegs } from "../../src/kvm/structs.js";
import {
  atPatchSite,
  type KernelPatching,
  kernelPatching,
  notSanctioned,
  PATCH_SITE_BYTES,
  symbolSpan,
} from "../../src/linux/kernel-patching.js";
import { kernelProtectedRanges, kernelVirtual } from "../../src/linux/kernel-ranges.js";
import {
  decodePtRegs,
  guestString,
  LinuxCrashCapture,
  MAX_GUEST_STRING,
  PT_REGS_FIELDS,
  PT_REGS_SIZE,
} from "../../src/linux/linux-crash.js";
import { LinuxHangWatch } from "../../src/linux/linux-hang.js";
import {
  LinuxSeal,
  type LinuxSealDeps,
  PIN_CHECK_EVERY_IO,
  SANCTIONED_REASON,
  SANCTIONED_RULE,
} from "../../src/linux/linux-seal.js";
import { linuxPolicyKernel } from "../../src/linux/policy-kernel.js";
import { type KernelSymbol, systemMapOf } from "../../src/linux/system-map.js";
import { capturedContext, decodeContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";
import { loadPolicyFile, parsePolicyText } from "../../src/policy/load.js";
import { resolvePolicy } from "../../src/policy/resolve.js";
import type { CapturedEvent } from "../../src/vmm/dispatcher.js";
import {
  type DebugControl,
  DR6_BS,
  DR7_EXEC_DR0,
  dr7Exec,
  ExceptionCapture,
  MAX_BREAKPOINTS,
} from "../../src/vmm/exception-capture.js";
import { mappedWritable, translate } from "../../src/vmm/paging.js";
import { sregs } from "../support/dispatch.js";
import { code, fakeKernelElf, fakeLinuxKernel, k } from "./linux-fixtures.js";

const MIB = 1024 * 1024;
const MEM = 32 * MIB;

// ---------------------------------------------------------------------------
// Guest memory and hand-built 4-level page tables
// ---------------------------------------------------------------------------

const mem = GuestMemory.allocate(MEM);
after(() => mem.release());

/** The PML4 (support/dispatch.js's sregs() has CR3 = 0x1000). */
const CR3 = 0x1000n;
const TABLE_POOL = 0x2000;
const PTE_P = 1n;
const PTE_RW = 2n;
const PTE_PS = 0x80n;
const PTE_ADDR = 0x000ffffffffff000n;

/** Page tables written entry by entry: the PML4 at CR3, further tables taken from a pool. */
class PageTables {
  private next = TABLE_POOL;

  constructor() {
    mem.fill(Number(CR3), 0x1000, 0);
  }

  /** The guest-physical address of `va`'s entry at `level` (0 PML4 … 3 PT), making the tables above it. */
  entry(va: bigint, level: number): number {
    let table = Number(CR3);
    for (let l = 0; ; l++) {
      const at = table + Number((va >> BigInt(39 - 9 * l)) & 0x1ffn) * 8;
      if (l === level) return at;
      let e = mem.readU64(at);
      if ((e & PTE_P) === 0n) {
        const t = this.next;
        this.next += 0x1000;
        mem.fill(t, 0x1000, 0);
        e = BigInt(t) | PTE_P | PTE_RW;
        mem.writeU64(at, e);
      }
      table = Number(e & PTE_ADDR);
    }
  }

  /** A 4 KiB page. */
  map(va: bigint, pa: number, flags = PTE_P | PTE_RW): void {
    mem.writeU64(this.entry(va, 3), BigInt(pa) | flags);
  }

  /** A 2 MiB page (PS in the PD entry). */
  map2m(va: bigint, pa: number, flags = PTE_P | PTE_RW): void {
    mem.writeU64(this.entry(va, 2), BigInt(pa) | flags | PTE_PS);
  }

  /** Change the flag bits of `va`'s entry at `level`. */
  update(va: bigint, level: number, f: (e: bigint) => bigint): void {
    const at = this.entry(va, level);
    mem.writeU64(at, f(mem.readU64(at)));
  }
}

/** Kernel data (direct map): strings and pt_regs frames. */
const DATA_VA = 0xffff888000100000n;
const DATA_PA = 0x100000;
/** One page of kernel stack; the page after it is not mapped. */
const STACK_VA = 0xffffc90000010000n;
const STACK_PA = 0x101000;

/** Fresh tables mapping the data and stack pages. */
function standardTables(): PageTables {
  mem.fill(DATA_PA, 0x2000, 0);
  const pt = new PageTables();
  pt.map(DATA_VA, DATA_PA);
  pt.map(STACK_VA, STACK_PA);
  return pt;
}

const writeString = (va: bigint, s: string | Uint8Array) => {
  const bytes = typeof s === "string" ? Buffer.from(`${s}\0`, "latin1") : s;
  mem.write(DATA_PA + Number(va - DATA_VA), bytes);
};

// ---------------------------------------------------------------------------
// A vmlinux with patch-site tables, and its symbols
// ---------------------------------------------------------------------------

const JUMP_TABLE = k(0x1200100);
const CALL_SITES = k(0x1200200);
const MCOUNT = k(0x1200300);
const MEMCPY = k(0x1010000);
const MEMCPY_ERMS = k(0x1010080);
const MEMCPY_ORIG = k(0x1010100);
const TEXT_POKE = k(0x1020000);
const SCT_FOO = k(0x1030000);

/** Where each table puts a site (the expected list, sorted, is SITES). */
const JUMP_SITES = [k(0x1000500), k(0x1000100)];
const CALL_SITE_ADDRS = [k(0x1000900), k(0x1000300)];
const MCOUNT_SITES = [k(0x1000700), k(0x1000040)];
const SITES = [...JUMP_SITES, ...CALL_SITE_ADDRS, ...MCOUNT_SITES, SCT_FOO].sort((a, b) => (a < b ? -1 : 1));

/** .rodata holding __jump_table, .static_call_sites and __mcount_loc as the kernel lays them out. */
function patchRodata(): Uint8Array {
  const b = Buffer.alloc(0x400);
  const off = (va: bigint) => Number(va - k(0x1200000));
  JUMP_SITES.forEach((site, i) => {
    const entry = JUMP_TABLE + BigInt(16 * i);
    b.writeInt32LE(Number(site - entry), off(entry)); // code, relative to the entry
    b.writeInt32LE(0x40, off(entry) + 4); // target
    b.writeBigUInt64LE(k(0x1400000), off(entry) + 8); // key
  });
  CALL_SITE_ADDRS.forEach((site, i) => {
    const entry = CALL_SITES + BigInt(8 * i);
    b.writeInt32LE(Number(site - entry), off(entry)); // addr, relative to the entry
    b.writeInt32LE(0x123, off(entry) + 4); // key
  });
  MCOUNT_SITES.forEach((site, i) => {
    b.writeBigUInt64LE(site, off(MCOUNT) + 8 * i); // absolute
  });
  return b;
}

const TEXT_SECTION = { name: ".text", addr: k(0x1000000), size: 0x101d32, flags: 0x6 };

function patchVmlinux(rodataSize = 0x400): Uint8Array {
  return fakeKernelElf(
    [{ vaddr: k(0x1000000), paddr: 0x1000000, memsz: 0x2345a0 }],
    [
      TEXT_SECTION,
      { name: ".bss", addr: k(0x1300000), size: 0x1000, flags: 0x3, type: 8 },
      { name: ".rodata", addr: k(0x1200000), size: rodataSize, flags: 0x3, data: patchRodata() },
    ],
  );
}

const sym = (address: bigint, name: string, type = "T"): KernelSymbol => ({ address, type, name });

/** The symbols kernelPatching() reads, each routine followed by another symbol so its span ends. */
function patchSymbols(): KernelSymbol[] {
  return [
    sym(k(0x1000000), "_text"),
    sym(MEMCPY, "__memcpy"),
    sym(MEMCPY, "memcpy"), // an alias at the same address: the span runs to the next higher symbol
    sym(MEMCPY_ERMS, "memcpy_erms"),
    sym(MEMCPY_ORIG, "memcpy_orig"),
    sym(k(0x1010400), "memmove"),
    sym(TEXT_POKE, "__text_poke"),
    sym(k(0x1020300), "text_poke"),
    sym(SCT_FOO, "__SCT__foo"),
    sym(k(0x1030008), "foo"),
    sym(k(0x1101d32), "_etext"),
    sym(k(0x1200000), "__start_rodata", "R"),
    sym(JUMP_TABLE, "__start___jump_table", "R"),
    sym(JUMP_TABLE + 32n, "__stop___jump_table", "R"),
    sym(CALL_SITES, "__start_static_call_sites", "R"),
    sym(CALL_SITES + 16n, "__stop_static_call_sites", "R"),
    sym(MCOUNT, "__start_mcount_loc", "R"),
    sym(MCOUNT + 16n, "__stop_mcount_loc", "R"),
    sym(k(0x1235000), "__end_rodata", "R"),
  ];
}

/** The symbols with some replaced (by name) or removed (null). */
function withSymbols(changes: Record<string, bigint | null>): KernelSymbol[] {
  return patchSymbols()
    .filter((s) => changes[s.name] !== null)
    .map((s) => (changes[s.name] !== undefined ? { ...s, address: changes[s.name] as bigint } : s));
}

const PATCHING = kernelPatching(patchVmlinux(), systemMapOf(patchSymbols()));

// ---------------------------------------------------------------------------
// 1. kernel-patching
// ---------------------------------------------------------------------------

describe("patch sites (atPatchSite)", () => {
  const sites = BigUint64Array.from([0x1000n, 0x1100n, 0x1102n]);

  it("takes [site, site + PATCH_SITE_BYTES) and nothing past it", () => {
    assert.equal(PATCH_SITE_BYTES, 5n);
    assert.equal(atPatchSite(sites, 0x1000n), true);
    assert.equal(atPatchSite(sites, 0x1004n), true);
    assert.equal(atPatchSite(sites, 0x1005n), false, "just past");
    assert.equal(atPatchSite(sites, 0x10ffn), false, "just before the next");
  });

  it("answers no before the first site, past the last, and with no sites", () => {
    assert.equal(atPatchSite(sites, 0xfffn), false);
    assert.equal(atPatchSite(sites, 0n), false);
    assert.equal(atPatchSite(sites, 0x1107n), false);
    assert.equal(atPatchSite(new BigUint64Array(0), 0x1000n), false);
  });

  it("takes the nearest site below when sites are closer than 5 bytes", () => {
    assert.equal(atPatchSite(sites, 0x1101n), true);
    assert.equal(atPatchSite(sites, 0x1106n), true);
  });
});

describe("routine spans (symbolSpan)", () => {
  const map = systemMapOf(patchSymbols());

  it("run from the symbol to the next higher one, skipping aliases at the same address", () => {
    assert.deepEqual(symbolSpan(map, "__memcpy"), [MEMCPY, MEMCPY_ERMS]);
    assert.deepEqual(symbolSpan(map, "memcpy"), [MEMCPY, MEMCPY_ERMS]);
    assert.deepEqual(symbolSpan(map, "__text_poke"), [TEXT_POKE, k(0x1020300)]);
  });

  it("are undefined for an unknown symbol and for the last one (no end)", () => {
    assert.equal(symbolSpan(map, "no_such_symbol"), undefined);
    assert.equal(symbolSpan(map, "__end_rodata"), undefined);
  });
});

describe("the sanctioned-patching facts of a vmlinux (kernelPatching)", () => {
  it("lists jump-label, static-call, ftrace and trampoline sites, sorted, and the routines' spans", () => {
    assert.ok(PATCHING);
    assert.deepEqual([...PATCHING.sites], SITES);
    assert.deepEqual(PATCHING.poker, [TEXT_POKE, k(0x1020300)]);
    assert.deepEqual(PATCHING.copiers, [
      [MEMCPY, MEMCPY_ERMS],
      [MEMCPY_ERMS, MEMCPY_ORIG],
      [MEMCPY_ORIG, k(0x1010400)],
    ]);
  });

  it("needs __text_poke and at least one copier; takes the copiers it finds", () => {
    const vmlinux = patchVmlinux();
    assert.equal(kernelPatching(vmlinux, systemMapOf(withSymbols({ __text_poke: null }))), undefined);
    assert.equal(
      kernelPatching(vmlinux, systemMapOf(withSymbols({ __memcpy: null, memcpy_erms: null, memcpy_orig: null }))),
      undefined,
    );
    const one = kernelPatching(vmlinux, systemMapOf(withSymbols({ __memcpy: null, memcpy_erms: null })));
    assert.deepEqual(one?.copiers, [[MEMCPY_ORIG, k(0x1010400)]]);
  });

  it("skips a table whose symbols are missing or reversed, or whose bytes are in no section with contents", () => {
    const vmlinux = patchVmlinux();
    const noJumps = kernelPatching(vmlinux, systemMapOf(withSymbols({ __stop___jump_table: null })));
    assert.deepEqual(
      [...(noJumps?.sites ?? [])],
      SITES.filter((s) => !JUMP_SITES.includes(s)),
    );
    const reversed = kernelPatching(vmlinux, systemMapOf(withSymbols({ __stop_static_call_sites: CALL_SITES - 8n })));
    assert.deepEqual(
      [...(reversed?.sites ?? [])],
      SITES.filter((s) => !CALL_SITE_ADDRS.includes(s)),
    );
    // __mcount_loc pointing into .bss (NOBITS): no bytes to read.
    const inBss = kernelPatching(
      vmlinux,
      systemMapOf(withSymbols({ __start_mcount_loc: k(0x1300000), __stop_mcount_loc: k(0x1300010) })),
    );
    assert.deepEqual(
      [...(inBss?.sites ?? [])],
      SITES.filter((s) => !MCOUNT_SITES.includes(s)),
    );
  });

  it("rejects a table a section claims but the file does not hold", () => {
    // .rodata claims 0x1000 bytes; the file holds 0x400 of them.
    const short = patchVmlinux(0x1000);
    const map = systemMapOf(withSymbols({ __start_mcount_loc: k(0x1200800), __stop_mcount_loc: k(0x1200810) }));
    assert.throws(() => kernelPatching(short, map), code("LINUX_IMAGE_INVALID"));
    assert.throws(() => kernelPatching(short, map), /lies past the file's end/);
  });
});

describe("a write recognised as text_poke's (notSanctioned)", () => {
  const P = PATCHING as KernelPatching;
  const RSP = STACK_VA + 0xf00n;
  const SITE = k(0x1000100);
  beforeEach(() => {
    standardTables();
    mem.writeU64(STACK_PA + 0xf00, TEXT_POKE + 0x42n); // memcpy's return address
  });

  /** memcpy_orig, called from __text_poke, writing through a lower-half alias onto a jump-label site. */
  const poke = (o: { cpl?: number; regs?: Partial<Regs>; writerRip?: bigint; target?: bigint | undefined } = {}) =>
    notSanctioned(P, {
      cpl: o.cpl ?? 0,
      regs: { ...zeroRegs(), rdi: 0x7f0000001105n, rsp: RSP, ...o.regs },
      writerRip: o.writerRip ?? MEMCPY_ORIG + 0x10n,
      cr3: CR3,
      target: "target" in o ? o.target : SITE,
      memory: mem,
    });

  it("sanctions memcpy called from __text_poke, at a site or its tail, in any copier", () => {
    assert.equal(poke(), undefined);
    assert.equal(poke({ target: SITE + 4n }), undefined);
    assert.equal(poke({ writerRip: MEMCPY }), undefined);
    assert.equal(poke({ writerRip: MEMCPY_ERMS + 7n }), undefined);
    assert.equal(poke({ target: SCT_FOO + 1n }), undefined, "a static-call trampoline");
    // CR3 with PCID bits: the walk ignores them.
    assert.equal(
      notSanctioned(P, {
        cpl: 0,
        regs: { ...zeroRegs(), rdi: 0x7f0000001105n, rsp: RSP },
        writerRip: MEMCPY,
        cr3: CR3 | 0x5n,
        target: SITE,
        memory: mem,
      }),
      undefined,
    );
  });

  it("names each reason a write is not text_poke's", () => {
    assert.equal(poke({ cpl: 3 }), "written from ring 3");
    assert.equal(poke({ writerRip: TEXT_POKE + 0x10n }), "not written by memcpy");
    assert.equal(poke({ writerRip: k(0x1010400) }), "not written by memcpy", "the copiers' spans end there");
    assert.equal(poke({ regs: { rdi: k(0x1000105) } }), "not written through a lower-half alias");
    assert.equal(poke({ regs: { rsp: STACK_VA + 0x2000n } }), "the stack top cannot be read");
    assert.equal(poke({ regs: { rsp: STACK_VA + 0xffcn } }), "the stack top cannot be read", "half of it mapped");
    mem.writeU64(STACK_PA + 0xf00, k(0x1020300)); // text_poke, not __text_poke
    assert.equal(poke(), "memcpy not called from __text_poke");
    mem.writeU64(STACK_PA + 0xf00, TEXT_POKE);
    assert.equal(poke({ target: SITE + 5n }), "not at a static key, static call or ftrace site");
    assert.equal(poke({ target: undefined }), "not at a static key, static call or ftrace site");
  });
});

// ---------------------------------------------------------------------------
// 2. paging: translate and mappedWritable
// ---------------------------------------------------------------------------

describe("the page-table walk's R/W answer (mappedWritable)", () => {
  const VA = 0xffffffff81200000n;
  const LARGE = 0xffff888040000000n;
  let pt: PageTables;
  beforeEach(() => {
    pt = standardTables();
    pt.map(VA + 0x3000n, 0x123000);
    pt.map2m(LARGE, 0x200000);
  });

  it("translates 4 KiB and 2 MiB pages", () => {
    assert.equal(translate(mem, CR3, VA + 0x3abcn), 0x123abc);
    assert.equal(translate(mem, CR3, LARGE + 0x1abcdn), 0x21abcd);
    assert.equal(translate(mem, CR3, VA), undefined);
    assert.equal(translate(mem, CR3, 0x0000800000000000n), undefined, "not canonical");
  });

  it("is writable only with R/W set at every level", () => {
    assert.equal(mappedWritable(mem, CR3, VA + 0x3000n), true);
    assert.equal(mappedWritable(mem, CR3, LARGE + 0x1000n), true);
    for (let level = 0; level < 4; level++) {
      pt.update(VA + 0x3000n, level, (e) => e & ~PTE_RW);
      assert.equal(mappedWritable(mem, CR3, VA + 0x3000n), false, `R/W clear at level ${level}`);
      pt.update(VA + 0x3000n, level, (e) => e | PTE_RW);
      assert.equal(mappedWritable(mem, CR3, VA + 0x3000n), true);
    }
    pt.update(LARGE, 2, (e) => e & ~PTE_RW);
    assert.equal(mappedWritable(mem, CR3, LARGE), false, "a read-only 2 MiB page");
  });

  it("is undefined when not mapped, whatever an earlier walk found", () => {
    assert.equal(mappedWritable(mem, CR3, VA + 0x3000n), true);
    assert.equal(mappedWritable(mem, CR3, VA + 0x4000n), undefined);
    pt.update(VA + 0x3000n, 1, (e) => e & ~PTE_P);
    assert.equal(mappedWritable(mem, CR3, VA + 0x3000n), undefined, "a not-present PDPT entry");
  });
});

// ---------------------------------------------------------------------------
// 3. ExceptionCapture with several breakpoints
// ---------------------------------------------------------------------------

const FLAGS = { enable: 1, singlestep: 2, useHwBp: 0x20000 };

/** A vCPU that records KVM_SET_GUEST_DEBUG. */
function fakeDebug(): DebugControl & { calls: { control: number; regs?: readonly bigint[] }[] } {
  const calls: { control: number; regs?: readonly bigint[] }[] = [];
  return {
    calls,
    setGuestDebug(control, regs) {
      calls.push({ control, regs: regs ? [...regs] : undefined });
    },
  };
}

describe("breakpoints on several entries (ExceptionCapture)", () => {
  const A = k(0x1001000);
  const B = k(0x1002000);
  const D = k(0x1003000);

  it("builds DR7 for n execute breakpoints", () => {
    assert.equal(dr7Exec(1), DR7_EXEC_DR0);
    assert.equal(dr7Exec(3), 0x415n);
    assert.equal(dr7Exec(4), 0x455n);
  });

  it("takes 1 to MAX_BREAKPOINTS entries", () => {
    assert.throws(() => new ExceptionCapture([], fakeDebug(), FLAGS), RangeError);
    const five = Array.from({ length: MAX_BREAKPOINTS + 1 }, (_, i) => A + BigInt(i));
    assert.throws(() => new ExceptionCapture(five, fakeDebug(), FLAGS), RangeError);
  });

  it("arms DR0..DRn-1 with DR7 = dr7Exec(n)", () => {
    const cpu = fakeDebug();
    const xc = new ExceptionCapture([A, B, D], cpu, FLAGS);
    assert.equal(xc.armed, false);
    xc.arm();
    assert.equal(xc.armed, true);
    assert.deepEqual(cpu.calls, [{ control: 1 | 0x20000, regs: [A, B, D, 0n, 0n, 0n, 0n, 0x415n] }]);
    assert.equal(xc.entry, A);
    assert.equal(xc.entryAt(D), 2);
    assert.equal(xc.entryAt(D + 1n), -1);
  });

  it("classifies by pc or by the DR6 bits of its own breakpoints", () => {
    const xc = new ExceptionCapture([A, B, D], fakeDebug(), FLAGS);
    assert.equal(xc.classify(B, 0n), "other", "not armed yet");
    xc.arm();
    assert.equal(xc.classify(B, 0n), "exception-entry");
    assert.equal(xc.classify(0x1234n, 0b10n), "exception-entry", "DR6.B1");
    assert.equal(xc.classify(0x1234n, 0b100n), "exception-entry", "DR6.B2");
    assert.equal(xc.classify(0x1234n, 0b1000n), "other", "DR6.B3: not one of its three");
    assert.equal(xc.classify(0x1234n, DR6_BS), "other");
  });

  it("steps over a capture and re-arms: a step, a new hit, or a lost step", () => {
    const cpu = fakeDebug();
    const xc = new ExceptionCapture([A, B], cpu, FLAGS);
    xc.arm();
    xc.stepOver();
    assert.equal(xc.captures, 1);
    assert.equal(xc.armed, false);
    assert.deepEqual(cpu.calls.at(-1), { control: 1 | 2, regs: undefined });
    assert.equal(xc.classify(A + 3n, DR6_BS), "stepped");
    assert.equal(xc.classify(B, DR6_BS), "exception-entry", "an entry reached during the step");
    assert.equal(xc.classify(A + 3n, 0n), "step-lost");
    xc.stepped();
    assert.equal(xc.armed, true);
    assert.deepEqual(cpu.calls.at(-1), { control: 1 | 0x20000, regs: [A, B, 0n, 0n, 0n, 0n, 0n, 0x405n] });
  });

  it("retires an entry from the next arm() on, but never the last", () => {
    const cpu = fakeDebug();
    const xc = new ExceptionCapture([A, B, D], cpu, FLAGS);
    xc.arm();
    xc.retire(B);
    assert.deepEqual(xc.entries, [A, D]);
    assert.equal(cpu.calls.length, 1, "the debug registers change only at the next arm()");
    xc.retire(0x42n); // not an entry
    assert.deepEqual(xc.entries, [A, D]);
    xc.arm();
    assert.deepEqual(cpu.calls.at(-1)?.regs, [A, D, 0n, 0n, 0n, 0n, 0n, 0x405n]);
    xc.retire(A);
    xc.retire(D); // the last one stays
    assert.deepEqual(xc.entries, [D]);
    xc.arm();
    assert.deepEqual(cpu.calls.at(-1)?.regs, [D, 0n, 0n, 0n, 0n, 0n, 0n, DR7_EXEC_DR0]);
  });
});

// ---------------------------------------------------------------------------
// 4. linux-crash
// ---------------------------------------------------------------------------

type PtRegs = Record<(typeof PT_REGS_FIELDS)[number], bigint>;

/** A kernel-mode page fault's pt_regs. */
const FRAME: PtRegs = {
  ...(Object.fromEntries(PT_REGS_FIELDS.map((f, i) => [f, BigInt(0x100 + i)])) as PtRegs),
  rip: k(0x1000abc),
  cs: 0x10n,
  eflags: 0x10246n,
  rsp: STACK_VA + 0xe00n,
  ss: 0x18n,
};

function ptRegsBytes(r: PtRegs): Uint8Array {
  const b = Buffer.alloc(PT_REGS_SIZE);
  PT_REGS_FIELDS.forEach((f, i) => {
    b.writeBigUInt64LE(r[f], 8 * i);
  });
  return b;
}

describe("struct pt_regs (decodePtRegs)", () => {
  it("is 21 quadwords, decoded in the kernel's order", () => {
    assert.equal(PT_REGS_SIZE, 168);
    assert.deepEqual(decodePtRegs(ptRegsBytes(FRAME)), FRAME);
  });

  it("rejects a wrong length, a CS or SS above 16 bits, and RFLAGS without bit 1", () => {
    const bytes = ptRegsBytes(FRAME);
    assert.equal(decodePtRegs(bytes.subarray(0, PT_REGS_SIZE - 1)), undefined);
    assert.equal(decodePtRegs(Buffer.concat([bytes, Buffer.alloc(8)])), undefined);
    assert.equal(decodePtRegs(new Uint8Array(0)), undefined);
    assert.equal(decodePtRegs(ptRegsBytes({ ...FRAME, cs: 0x10000n })), undefined);
    assert.equal(decodePtRegs(ptRegsBytes({ ...FRAME, ss: 0x1_0000_0018n })), undefined);
    assert.equal(decodePtRegs(ptRegsBytes({ ...FRAME, eflags: 0x10244n })), undefined);
    assert.ok(decodePtRegs(ptRegsBytes({ ...FRAME, cs: 0xffffn })));
  });
});

describe("strings read from the guest (guestString)", () => {
  beforeEach(() => standardTables());

  it("stops at the NUL and replaces what is not printable ASCII", () => {
    writeString(DATA_VA, "Oops");
    assert.equal(guestString(mem, CR3, DATA_VA), "Oops");
    writeString(DATA_VA + 0x40n, Uint8Array.of(0x4f, 0x01, 0xff, 0x0a, 0x21, 0, 0x41));
    assert.equal(guestString(mem, CR3, DATA_VA + 0x40n), "O???!");
  });

  it("caps an unterminated string at MAX_GUEST_STRING, and stops where the mapping ends", () => {
    writeString(DATA_VA + 0x100n, Buffer.alloc(MAX_GUEST_STRING + 50, 0x41));
    assert.equal(guestString(mem, CR3, DATA_VA + 0x100n), "A".repeat(MAX_GUEST_STRING));
    // The last 4 bytes of the data page; the page after is not mapped.
    writeString(DATA_VA + 0xffcn, Buffer.from("abcd"));
    assert.equal(guestString(mem, CR3, DATA_VA + 0xffcn), "abcd");
    assert.equal(guestString(mem, CR3, DATA_VA + 0x1000n), "");
  });
});

/** The fake kernel's sealed ranges (.text at 0x1000000, .rodata at 0x1200000) and their regions. */
const ranges = kernelProtectedRanges(fakeLinuxKernel(), MEM).ranges;
const regions = makeRegions(ranges, MEM);
const decider = () => new VmmDecider(compilePolicy(DEFAULT_POLICY, regions));

describe("oops and panic capture (LinuxCrashCapture)", () => {
  const DIE = k(0x1004000);
  const PANIC = k(0x1005000);
  const SYSCALL = k(0x1006000);
  const NAME_VA = DATA_VA;
  const FRAME_VA = DATA_VA + 0x200n;
  const MSG_VA = DATA_VA + 0x400n;

  beforeEach(() => {
    standardTables();
    writeString(NAME_VA, "Oops");
    mem.write(DATA_PA + 0x200, ptRegsBytes(FRAME));
    writeString(MSG_VA, "Attempted to kill init! exitcode=0x%08x\n");
  });

  function setup(o: { arm?: () => boolean; dieAddr?: bigint } = {}) {
    const injected: number[] = [];
    const cpu = fakeDebug();
    const capture = new ExceptionCapture(
      o.dieAddr ? [DIE, PANIC, SYSCALL, o.dieAddr] : [DIE, PANIC, SYSCALL],
      cpu,
      FLAGS,
    );
    const events: CapturedEvent[] = [];
    const state = { regs: zeroRegs(), sregs: { ...sregs(0), cr2: 0x28n } };
    // The seal numbers and posts the events (as in the vCPU worker); it is never armed here.
    const seal = new LinuxSeal({
      vmId: 0,
      vcpuId: 0,
      regions,
      memory: mem,
      getRegs: () => state.regs,
      getSregs: () => state.sregs,
      reslot: () => assert.fail("the seal is not armed by a crash"),
      decider: decider(),
      event: (e) => events.push(e),
      armed: () => assert.fail("the seal is not armed by a crash"),
    });
    const crash = new LinuxCrashCapture({
      capture,
      die: DIE,
      dieAddr: o.dieAddr,
      panic: PANIC,
      armAt: o.arm ? { address: SYSCALL, arm: o.arm } : undefined,
      memory: mem,
      getRegs: () => state.regs,
      getSregs: () => state.sregs,
      decider: decider(),
      events: seal,
      injectDebug: () => {
        injected.push(1);
      },
      now: () => 0n,
    });
    crash.arm();
    return { crash, capture, cpu, events, state, injected };
  }

  it("arms one breakpoint per entry; a debug exit that is not its own is the guest's #DB, handed back", () => {
    const { crash, cpu, events, injected } = setup();
    assert.deepEqual(cpu.calls, [{ control: 1 | 0x20000, regs: [DIE, PANIC, SYSCALL, 0n, 0n, 0n, 0n, 0x415n] }]);
    assert.deepEqual(crash.onDebug(k(0x1007000), DR6_BS), { kind: "continue" });
    assert.equal(events.length, 0);
    assert.equal(injected.length, 1, "the guest gets its own #DB");
    assert.equal(cpu.calls.length, 1, "the breakpoints are left as they were");
  });

  it("a #DB of the guest's own during the step over a breakpoint: re-armed at once, counted, and the guest gets it", () => {
    const { crash, capture, cpu, injected, state } = setup();
    state.regs = { ...zeroRegs(), rip: DIE, rdi: NAME_VA, rsi: FRAME_VA, rdx: 2n, rsp: STACK_VA + 0xd00n };
    crash.onDebug(DIE, 1n);
    assert.equal(capture.armed, false, "stepping");
    assert.deepEqual(crash.onDebug(k(0x1007000), 0n), { kind: "continue" });
    assert.equal(capture.armed, true);
    assert.equal(injected.length, 1);
    assert.equal(crash.counters.stepsLost, 1);
    assert.deepEqual(cpu.calls.at(-1)?.regs, [DIE, PANIC, SYSCALL, 0n, 0n, 0n, 0n, 0x415n]);
  });

  it("records an oops at __die from its pt_regs: one cpu-exception event (log), then steps over", () => {
    const { crash, capture, cpu, events, state } = setup();
    state.regs = { ...zeroRegs(), rip: DIE, rdi: NAME_VA, rsi: FRAME_VA, rdx: 2n, rsp: STACK_VA + 0xd00n };
    assert.deepEqual(crash.onDebug(DIE, 1n), { kind: "continue" });
    assert.equal(events.length, 1);
    const e = events[0] as CapturedEvent;
    assert.deepEqual(
      { kind: e.kind, vector: e.vector, rip: e.rip, verdict: e.verdict, decidedBy: e.decidedBy, seq: e.seq },
      { kind: "cpu-exception", vector: 14, rip: FRAME.rip, verdict: "log", decidedBy: "vmm", seq: 1 },
    );
    assert.match(e.note ?? "", /^kernel oops "Oops" at 0xffffffff81000abc \(cpl 0, error 0x2, cr2 0x28\)/);
    const c = decodeContext(e.record);
    assert.equal(c.vector, 14);
    assert.equal(c.cpl, 0);
    assert.equal(c.errorCode, 2n);
    assert.equal(c.cr2, 0x28n);
    assert.equal(c.regs.rip, FRAME.rip);
    assert.equal(c.regs.rsp, FRAME.rsp);
    assert.equal(c.regs.rax, FRAME.rax);
    assert.equal(c.regs.r15, FRAME.r15);
    assert.equal(c.regs.rflags, FRAME.eflags);
    assert.equal(c.flags & CONTEXT_FLAGS.FRAME_INVALID, 0);
    assert.deepEqual(crash.counters, { oopses: 1, panics: 0, badFrames: 0, stepsLost: 0, guestDebugs: 0 });
    // Stepping over __die's first instruction, then re-armed on the step.
    assert.equal(capture.armed, false);
    assert.deepEqual(cpu.calls.at(-1), { control: 1 | 2, regs: undefined });
    assert.deepEqual(crash.onDebug(DIE + 1n, DR6_BS), { kind: "continue" });
    assert.equal(capture.armed, true);
    assert.equal(events.length, 1, "the step is not an event");
  });

  it("records a general protection fault's oops at die_addr (which prints it without __die)", () => {
    const DIE_ADDR = k(0x1008000);
    const { crash, cpu, events, state } = setup({ dieAddr: DIE_ADDR });
    assert.deepEqual(cpu.calls[0]?.regs?.slice(0, 4), [DIE, PANIC, SYSCALL, DIE_ADDR], "four breakpoints");
    writeString(NAME_VA, "general protection fault, maybe for address 0xffffc90000035000");
    state.regs = { ...zeroRegs(), rip: DIE_ADDR, rdi: NAME_VA, rsi: FRAME_VA, rdx: 0n, rcx: 0xffffc90000035000n };
    assert.deepEqual(crash.onDebug(DIE_ADDR, 1n << 3n), { kind: "continue" });
    assert.equal(events.length, 1);
    assert.equal(events[0]?.vector, 13);
    assert.equal(events[0]?.rip, FRAME.rip);
    assert.match(
      events[0]?.note ?? "",
      /^kernel oops "general protection fault, maybe for .* captured at die_addr before/,
    );
    assert.equal(crash.counters.oopses, 1);
  });

  it("takes the vector from the name __die is given (255 when unknown)", () => {
    const { crash, events, state } = setup();
    state.regs = { ...zeroRegs(), rdi: NAME_VA, rsi: FRAME_VA };
    const names: [string, number][] = [
      ["general protection fault, probably for non-canonical address", 13],
      ["invalid opcode", 6],
      ["divide error", 0],
      ["something else", 255],
    ];
    for (const [name, vector] of names) {
      writeString(NAME_VA, name);
      crash.onDebug(DIE, 1n);
      crash.onDebug(DIE + 1n, DR6_BS);
      assert.equal(events.at(-1)?.vector, vector, name);
    }
  });

  it("marks an unreadable pt_regs FRAME_INVALID and counts it", () => {
    const { crash, events, state } = setup();
    state.regs = { ...zeroRegs(), rip: DIE, rdi: NAME_VA, rsi: DATA_VA + 0x2000n, rdx: 0n };
    assert.deepEqual(crash.onDebug(DIE, 0n), { kind: "continue" }, "found by pc alone");
    const e = events[0] as CapturedEvent;
    assert.equal(e.rip, DIE, "the registers at __die, having no frame");
    assert.match(e.note ?? "", /could not be read/);
    const c = decodeContext(e.record);
    assert.ok(c.flags & CONTEXT_FLAGS.FRAME_INVALID);
    assert.equal(crash.counters.badFrames, 1);
    // A readable frame that is not one the CPU saved counts the same.
    mem.write(DATA_PA + 0x200, ptRegsBytes({ ...FRAME, eflags: 0n }));
    state.regs = { ...state.regs, rsi: FRAME_VA };
    crash.onDebug(DIE + 1n, DR6_BS);
    crash.onDebug(DIE, 1n);
    assert.ok(decodeContext(events[1]?.record ?? new Uint8Array()).flags & CONTEXT_FLAGS.FRAME_INVALID);
    assert.equal(crash.counters.badFrames, 2);
  });

  it("records a panic: a crash event whose default verdict restarts the VM", () => {
    const { crash, events, state } = setup();
    state.regs = { ...zeroRegs(), rip: PANIC, rdi: MSG_VA };
    const a = crash.onDebug(PANIC, 0b10n);
    assert.equal(a?.kind, "stop");
    assert.equal(a?.kind === "stop" && a.outcome, "restart");
    assert.equal(events.length, 1);
    const e = events[0] as CapturedEvent;
    assert.equal(e.kind, "crash");
    assert.equal(e.verdict, "restart");
    assert.equal(e.rip, PANIC);
    assert.equal(
      e.note,
      'kernel panic "Attempted to kill init! exitcode=0x%08x?", captured at panic() before the kernel printed it',
    );
    assert.equal(decodeContext(e.record).kind, "crash");
    assert.deepEqual(crash.counters, { oopses: 0, panics: 1, badFrames: 0, stepsLost: 0, guestDebugs: 0 });
  });

  it("arms the seal at the system-call breakpoint, and retires that breakpoint once it has", () => {
    const answers = [false, true];
    let calls = 0;
    const { crash, capture, cpu, events } = setup({
      arm: () => {
        calls++;
        return answers.shift() ?? assert.fail("arm() after it armed");
      },
    });
    // Not armed yet (say, .rodata still writable): the breakpoint stays.
    assert.deepEqual(crash.onDebug(SYSCALL, 0b100n), { kind: "continue" });
    crash.onDebug(SYSCALL + 1n, DR6_BS);
    assert.deepEqual(capture.entries, [DIE, PANIC, SYSCALL]);
    assert.deepEqual(cpu.calls.at(-1)?.regs, [DIE, PANIC, SYSCALL, 0n, 0n, 0n, 0n, 0x415n]);
    // Armed: stepped over once more, then re-armed without it.
    assert.deepEqual(crash.onDebug(SYSCALL, 0b100n), { kind: "continue" });
    assert.equal(capture.armed, false);
    crash.onDebug(SYSCALL + 1n, DR6_BS);
    assert.deepEqual(capture.entries, [DIE, PANIC]);
    assert.deepEqual(cpu.calls.at(-1), { control: 1 | 0x20000, regs: [DIE, PANIC, 0n, 0n, 0n, 0n, 0n, 0x405n] });
    assert.equal(calls, 2);
    assert.equal(events.length, 0);
    // No longer a breakpoint of ours: an exit there is the guest's own #DB.
    assert.deepEqual(crash.onDebug(SYSCALL, 0n), { kind: "continue" });
  });
});

// ---------------------------------------------------------------------------
// 5. LinuxSeal: pinned registers and the text_poke path
// ---------------------------------------------------------------------------

const WP = 1n << 16n;
const SHADOW_BYTES = regions.reduce((n, r) => n + r.end - r.start, 0);

function sealSetup(
  o: {
    patching?: KernelPatching;
    kernelPatching?: "sanctioned" | "immutable";
    policy?: Policy;
    firstSeq?: number;
    locate?: LinuxSealDeps["locate"];
  } = {},
) {
  const cpu = { regs: zeroRegs(), sregs: sregs(3) };
  const out = {
    events: [] as CapturedEvent[],
    setSregs: [] as Sregs[],
    setRegs: [] as Regs[],
    injected: [] as [number, number | undefined][],
    immediateExits: 0,
  };
  const shadow = new Uint8Array(SHADOW_BYTES);
  const seal = new LinuxSeal({
    vmId: 0,
    vcpuId: 0,
    regions,
    memory: mem,
    getRegs: () => ({ ...cpu.regs }),
    getSregs: () => ({ ...cpu.sregs }),
    reslot: () => {},
    decider: o.policy ? new VmmDecider(compilePolicy(o.policy, regions)) : decider(),
    event: (e) => out.events.push(e),
    armed: () => {},
    locate: o.locate ?? (() => undefined),
    setSregs: (s) => {
      out.setSregs.push({ ...s });
      cpu.sregs = { ...s };
    },
    setRegs: (r) => {
      out.setRegs.push({ ...r });
      cpu.regs = { ...r };
    },
    injectException: (v, e) => {
      out.injected.push([v, e]);
    },
    requestImmediateExit: () => {
      out.immediateExits++;
    },
    virtualOf: (gpa) => kernelVirtual(ranges, gpa),
    patching: o.patching,
    kernelPatching: o.kernelPatching,
    shadow,
    firstSeq: o.firstSeq,
    now: () => 0n,
  });
  return { seal, cpu, out, shadow };
}

/** A seal armed from ring 3 with CR0.WP set, the vCPU then back in ring 0. */
function armedSeal(o: Parameters<typeof sealSetup>[0] = {}) {
  const s = sealSetup(o);
  assert.ok((s.cpu.sregs.cr0 & WP) !== 0n);
  assert.equal(s.seal.check(1), true);
  s.cpu.sregs = sregs(0);
  return s;
}

describe("pinned registers after arming (LinuxSeal.checkPins)", () => {
  it("is idle before arming, and without setSregs", () => {
    const { seal, cpu } = sealSetup();
    cpu.sregs = { ...cpu.sregs, cr0: cpu.sregs.cr0 & ~WP };
    assert.equal(seal.checkPins({ io: false, pending: false }), undefined);
    const noSet = new LinuxSeal({
      vmId: 0,
      vcpuId: 0,
      regions,
      memory: mem,
      getRegs: () => zeroRegs(),
      getSregs: () => sregs(3),
      reslot: () => {},
      decider: decider(),
      event: () => assert.fail("no pins without setSregs"),
      armed: () => {},
    });
    noSet.check(1);
    assert.equal(noSet.checkPins({ io: false, pending: false }), undefined);
  });

  it("finds CR0.WP cleared on a pending exit: one event, restored on the immediate exit that follows", () => {
    const { seal, cpu, out } = armedSeal();
    assert.equal(seal.checkPins({ io: false, pending: false }), undefined, "nothing changed");
    cpu.sregs = { ...cpu.sregs, cr0: cpu.sregs.cr0 & ~WP };
    assert.equal(seal.checkPins({ io: false, pending: true }), undefined, "deny: the guest goes on");
    assert.equal(out.events.length, 1);
    const e = out.events[0] as CapturedEvent;
    assert.deepEqual(
      { kind: e.kind, object: e.object, verdict: e.verdict, rule: e.rule },
      { kind: "integrity", object: C.INTEGRITY_CR0, verdict: "deny", rule: "restore-pinned-cr" },
    );
    assert.match(e.note ?? "", /pinned CR0 bits cleared: 0x10000/);
    const c = decodeContext(e.record);
    assert.equal(c.object, C.INTEGRITY_CR0);
    assert.ok(c.flags & CONTEXT_FLAGS.WRITER_UNKNOWN);
    assert.equal(c.cr0 & WP, 0n, "the record holds the attack");
    assert.equal(out.setSregs.length, 0, "not while the exit's operation is pending");
    assert.equal(out.immediateExits, 1);
    assert.equal(seal.counters.pinsBroken, 1);
    // The immediate exit: WP goes back, and is not reported again.
    assert.equal(seal.checkPins({ io: false, pending: false }), undefined);
    assert.equal(out.setSregs.length, 1);
    assert.ok(((out.setSregs[0] as Sregs).cr0 & WP) !== 0n);
    assert.equal((out.setSregs[0] as Sregs).cr0, sregs(0).cr0, "only WP changed");
    assert.equal(out.events.length, 1);
    assert.equal(out.immediateExits, 1);
    assert.equal(seal.checkPins({ io: false, pending: false }), undefined);
    assert.equal(out.setSregs.length, 1, "nothing left to put back");
  });

  it("restores at once on an exit with nothing pending", () => {
    const { seal, cpu, out } = armedSeal();
    cpu.sregs = { ...cpu.sregs, cr0: cpu.sregs.cr0 & ~WP };
    assert.equal(seal.checkPins({ io: false, pending: false }), undefined);
    assert.equal(out.events.length, 1);
    assert.equal(out.setSregs.length, 1);
    assert.ok(((out.setSregs[0] as Sregs).cr0 & WP) !== 0n);
    assert.equal(out.immediateExits, 0);
  });

  it(`checks I/O exits once in ${PIN_CHECK_EVERY_IO}`, () => {
    const { seal, cpu, out } = armedSeal();
    cpu.sregs = { ...cpu.sregs, cr0: cpu.sregs.cr0 & ~WP };
    for (let i = 1; i < PIN_CHECK_EVERY_IO; i++) seal.checkPins({ io: true, pending: true });
    assert.equal(out.events.length, 0);
    seal.checkPins({ io: true, pending: true });
    assert.equal(out.events.length, 1, `the ${PIN_CHECK_EVERY_IO}th`);
    assert.equal(out.immediateExits, 1);
    // The put-back is not held back by the I/O sampling: the next exit, I/O or not, does it.
    seal.checkPins({ io: true, pending: true });
    assert.equal(out.setSregs.length, 1);
    assert.ok((cpu.sregs.cr0 & WP) !== 0n);
  });

  it("after a restart, numbering goes on from the earlier boots' last event (firstSeq)", () => {
    const { seal, cpu, out } = armedSeal({ firstSeq: 41 });
    assert.equal(seal.lastSeq, 41);
    cpu.sregs = { ...cpu.sregs, cr0: cpu.sregs.cr0 & ~WP };
    seal.checkPins({ io: false, pending: false });
    assert.deepEqual(
      out.events.map((e) => e.seq),
      [42],
    );
    assert.equal(seal.lastSeq, 42);
  });

  it("two objects changed on one exit: a stop verdict wins over a pause, whichever came first", () => {
    const policy: Policy = {
      ...DEFAULT_POLICY,
      rules: [
        { name: "pause-idtr", kinds: ["integrity"], objects: [C.INTEGRITY_IDTR], verdict: "pause", reason: "r" },
        { name: "restart-cr0", kinds: ["integrity"], objects: [C.INTEGRITY_CR0], verdict: "restart", reason: "r" },
      ],
    };
    const { seal, cpu, out } = armedSeal({ policy });
    cpu.sregs = { ...cpu.sregs, cr0: cpu.sregs.cr0 & ~WP, idt: { base: 0xffff888000200000n, limit: 0xfff } };
    const a = seal.checkPins({ io: false, pending: false });
    assert.equal(out.events.length, 2);
    assert.equal(a?.kind === "stop" && a.outcome, "restart");
  });

  it("ends the run for a changed IDTR (the default policy restarts: no rule restores it)", () => {
    const { seal, cpu, out } = armedSeal();
    cpu.sregs = { ...cpu.sregs, idt: { base: 0xffff888000200000n, limit: 0xfff } };
    const a = seal.checkPins({ io: false, pending: false });
    assert.equal(a?.kind === "stop" && a.outcome, "restart");
    assert.equal(out.events[0]?.object, C.INTEGRITY_IDTR);
    assert.equal(out.setSregs.length, 0);
  });
});

describe("the kernel's own text_poke under the seal (LinuxSeal.onWrite)", () => {
  const SITE_GPA = 0x1000100; // the jump-label site k(0x1000100)
  const NOP5 = Uint8Array.of(0x0f, 0x1f, 0x44, 0x00, 0x00);
  const JMP = Uint8Array.of(0xe9, 0x10, 0x00, 0x00, 0x00);

  beforeEach(() => {
    standardTables();
    mem.writeU64(STACK_PA + 0xf00, TEXT_POKE + 0x42n);
    mem.write(SITE_GPA, NOP5);
  });

  /** memcpy_orig from __text_poke, through a lower-half alias (the exit's registers). */
  const pokeRegs = (): Regs => ({
    ...zeroRegs(),
    rip: MEMCPY_ORIG + 0x10n,
    rdi: 0x7f0000001105n,
    rsp: STACK_VA + 0xf00n,
  });

  it("allows it by itself: written, in the shadow, an allow event by its own rule", () => {
    const { seal, cpu, out, shadow } = armedSeal({ patching: PATCHING });
    cpu.regs = pokeRegs();
    assert.deepEqual([...shadow.subarray(0x100, 0x105)], [...NOP5], "the shadow holds the sealed bytes");
    assert.deepEqual(seal.onWrite(SITE_GPA, JMP), { kind: "continue" });
    assert.deepEqual([...mem.slice(SITE_GPA, 5)], [...JMP]);
    assert.deepEqual([...shadow.subarray(0x100, 0x105)], [...JMP], ".text is the first region: offset 0x100");
    const e = out.events[0] as CapturedEvent;
    assert.deepEqual(
      { kind: e.kind, verdict: e.verdict, rule: e.rule, reason: e.reason, decidedBy: e.decidedBy, gpa: e.gpa },
      {
        kind: "protected-write",
        verdict: "allow",
        rule: SANCTIONED_RULE,
        reason: SANCTIONED_REASON,
        decidedBy: "vmm",
        gpa: SITE_GPA,
      },
    );
    assert.match(e.note ?? "", /the kernel's text_poke/);
    assert.equal(seal.counters.sanctionedWrites, 1);
    assert.equal(seal.counters.performedWrites, 1);
  });

  it("sends it to the policy when kernel patching is immutable (the default denies)", () => {
    const { seal, cpu, out, shadow } = armedSeal({ patching: PATCHING, kernelPatching: "immutable" });
    cpu.regs = pokeRegs();
    assert.deepEqual(seal.onWrite(SITE_GPA, JMP), { kind: "continue" });
    assert.deepEqual([...mem.slice(SITE_GPA, 5)], [...NOP5], "dropped");
    assert.deepEqual([...shadow.subarray(0x100, 0x105)], [...NOP5]);
    const e = out.events[0] as CapturedEvent;
    assert.equal(e.verdict, "deny");
    assert.equal(e.rule, "protect-kernel-regions");
    assert.match(e.note ?? "", /the kernel's text_poke/);
    assert.equal(seal.counters.sanctionedWrites, 1, "recognised, still counted");
    assert.equal(seal.counters.performedWrites, 0);
  });

  it("denies a write that is not text_poke's, saying why", () => {
    const { seal, cpu, out } = armedSeal({ patching: PATCHING });
    cpu.regs = { ...pokeRegs(), rdi: k(0x1000105) };
    seal.onWrite(SITE_GPA, JMP);
    assert.deepEqual([...mem.slice(SITE_GPA, 5)], [...NOP5]);
    assert.equal(out.events[0]?.verdict, "deny");
    assert.match(out.events[0]?.note ?? "", /not the kernel's text_poke: not written through a lower-half alias/);
    // Off the site (the next 5 bytes are no site).
    cpu.regs = pokeRegs();
    seal.onWrite(SITE_GPA + 5, JMP);
    assert.match(out.events[1]?.note ?? "", /not at a static key, static call or ftrace site/);
    assert.equal(seal.counters.sanctionedWrites, 0);
  });

  it("sanctions nothing without the kernel's symbols", () => {
    const { seal, cpu, out } = armedSeal();
    cpu.regs = pokeRegs();
    seal.onWrite(SITE_GPA, JMP);
    assert.equal(out.events[0]?.verdict, "deny");
    assert.match(out.events[0]?.note ?? "", /no symbols to recognise text_poke by/);
  });
});

describe("fault verdicts on a sealed write (LinuxSeal.onWrite, deny-fault and kill-task)", () => {
  const GPA = 0x1000200;
  const WRITER = k(0x1000800);
  const ORIGINAL = Uint8Array.of(0x55, 0x48, 0x89, 0xe5);
  const INT3 = Uint8Array.of(0xcc, 0xcc, 0xcc, 0xcc);
  const faulting = (verdict: "deny-fault" | "kill-task"): Policy => ({
    ...DEFAULT_POLICY,
    rules: [],
    defaults: { ...DEFAULT_POLICY.defaults, "protected-write": verdict },
  });
  /** The writer found: a 4-byte mov at WRITER that left RIP 3 bytes on (and moved nothing else). */
  const located: LinuxSealDeps["locate"] = () => ({
    site: { rip: WRITER, length: 3 },
    write: { va: k(GPA), size: 4 },
    offset: 0,
    repeating: false,
    element: 4,
    before: { rip: WRITER },
  });

  beforeEach(() => {
    standardTables();
    mem.write(GPA, ORIGINAL);
  });

  it("deny-fault: dropped, then, once the MMIO exit is complete, #GP(0) at the writer with its registers put back", () => {
    const { seal, cpu, out } = armedSeal({ policy: faulting("deny-fault"), locate: located });
    cpu.regs = { ...zeroRegs(), rip: WRITER + 3n, rax: 0xccccccccn };
    assert.deepEqual(seal.onWrite(GPA, INT3), { kind: "continue" });
    assert.deepEqual([...mem.slice(GPA, 4)], [...ORIGINAL], "the write never lands");
    const e = out.events[0] as CapturedEvent;
    assert.equal(e.verdict, "deny-fault");
    assert.match(e.note ?? "", /; #GP at the writer 0xffffffff81000800$/);
    // Nothing is set while the exit's MMIO is pending: an immediate exit is asked for.
    assert.equal(out.immediateExits, 1);
    assert.deepEqual(out.setRegs, []);
    assert.deepEqual(out.injected, []);
    // A second piece of the same instruction (a write across pages): dropped, not decided again.
    assert.deepEqual(seal.onWrite(GPA + 4, INT3), { kind: "continue" });
    assert.equal(out.events.length, 1);
    assert.equal(seal.counters.faultedPieces, 1);
    // An exit with an operation still pending changes nothing yet.
    seal.checkPins({ io: true, pending: true });
    assert.deepEqual(out.injected, []);
    // The immediate exit: the writer's registers, then #GP(0).
    seal.checkPins({ io: false, pending: false });
    const set = out.setRegs as Regs[]; // (the deepEqual above narrowed it)
    assert.equal(set.length, 1);
    assert.equal(set[0]?.rip, WRITER);
    assert.equal(set[0]?.rax, 0xccccccccn, "the other registers as the exit left them");
    assert.deepEqual(out.injected, [[13, 0]]);
    assert.equal(seal.counters.faultsRaised, 1);
    // Once: the next exit raises nothing, and the next write is decided again.
    seal.checkPins({ io: false, pending: false });
    assert.equal(out.injected.length, 1);
    seal.onWrite(GPA, INT3);
    assert.equal(out.events.length, 2);
  });

  it("kill-task: the same #GP, and the note says the kernel's #GP handling ends the task", () => {
    const { seal, cpu, out } = armedSeal({ policy: faulting("kill-task"), locate: located });
    cpu.regs = { ...zeroRegs(), rip: WRITER + 3n };
    seal.onWrite(GPA, INT3);
    assert.match(out.events[0]?.note ?? "", /#GP at the writer .*; the kernel's #GP handling ends the task unless/);
    seal.checkPins({ io: false, pending: false });
    assert.deepEqual(out.injected, [[13, 0]]);
  });

  it("a writer not found: #GP where the guest resumes, its registers untouched", () => {
    const { seal, cpu, out } = armedSeal({ policy: faulting("deny-fault") });
    cpu.regs = { ...zeroRegs(), rip: WRITER + 3n };
    seal.onWrite(GPA, INT3);
    assert.match(out.events[0]?.note ?? "", /#GP where the guest resumes, 0xffffffff81000803$/);
    seal.checkPins({ io: false, pending: false });
    assert.deepEqual(out.setRegs, []);
    assert.deepEqual(out.injected, [[13, 0]]);
  });
});

describe("policy files for a Linux guest (policies/linux-*.yaml)", () => {
  it("resolves against the kernel's sealed sections, says immutable, and compiles to a rule table over them", () => {
    const file = loadPolicyFile(join(packageRoot(), "policies", "linux-immutable.yaml"));
    const kernel = linuxPolicyKernel({ ranges: [...ranges], source: "elf", mismatches: [] }, "vmlinuz-test");
    const policy = resolvePolicy(file, kernel);
    assert.equal(policy.kernelPatching, "immutable");
    const compiled = compilePolicy(policy, regions);
    const write = compiled.rules.find((r) => compiled.names[r.index] === "protect-kernel-regions");
    assert.ok(write, "the write rule is in the table");
    for (const g of regions) assert.notEqual(write.regionMask & (1n << BigInt(g.id)), 0n, `${g.name} is covered`);
  });

  it("policies/linux-fault.yaml: text_poke still sanctioned, any other write to .text or .rodata deny-fault", () => {
    const file = loadPolicyFile(join(packageRoot(), "policies", "linux-fault.yaml"));
    const kernel = linuxPolicyKernel({ ranges: [...ranges], source: "elf", mismatches: [] }, "vmlinuz-test");
    const policy = resolvePolicy(file, kernel);
    assert.equal(policy.kernelPatching ?? "sanctioned", "sanctioned");
    const decide = new VmmDecider(compilePolicy(policy, regions));
    for (const g of regions) {
      const ctx = capturedContext("protected-write", zeroRegs(), sregs(0), { seq: 1, vmId: 0, vcpu: 0 });
      ctx.regionId = g.id;
      ctx.gpa = g.start;
      assert.equal(decide.decide(ctx).verdict, "deny-fault", g.name);
    }
  });

  it("names Linux symbols: a region by symbol (sized to the next symbol), a writer by originator, at their real addresses", () => {
    const map = systemMapOf([
      { address: k(0x1000400), type: "T", name: "text_poke_bp" },
      { address: k(0x1000480), type: "t", name: "after_text_poke_bp" },
      { address: k(0x1200040), type: "R", name: "sys_call_table" },
      { address: k(0x1200840), type: "r", name: "after_table" },
      { address: 0x1f000n, type: "A", name: "fixed_percpu_data" }, // not in the image: left out
    ]);
    const kernel = linuxPolicyKernel({ ranges: [...ranges], source: "elf", mismatches: [] }, "vmlinuz-test", map);
    assert.deepEqual(
      kernel.symbols.map((x) => [x.name, x.size]),
      [
        ["text_poke_bp", 0x80],
        ["after_text_poke_bp", 0x1ffbc0],
        ["sys_call_table", 0x800],
        ["after_table", 0],
      ],
    );
    const file = parsePolicyText(
      [
        "version: 1",
        "name: by-symbol",
        "regions:",
        "  table: { symbol: sys_call_table }",
        "rules:",
        "  - { name: poke-ok, event: protected-write, region: table, originator: text_poke_bp, action: allow }",
        "  - { name: table, event: protected-write, region: table, action: kill-task }",
        "defaults: { protected-write: deny }",
      ].join("\n"),
      "by-symbol.yaml",
    );
    const policy = resolvePolicy(file, kernel);
    assert.equal(policy.ripBase, 0xffffffff80000000n);
    const decide = new VmmDecider(compilePolicy(policy, regions));
    const write = (gpa: number, rip: bigint) => {
      const ctx = capturedContext("protected-write", { ...zeroRegs(), rip }, sregs(0), { seq: 1, vmId: 0, vcpu: 0 });
      ctx.regionId = regions.find((g) => gpa >= g.start && gpa < g.end)?.id ?? 0;
      ctx.gpa = gpa;
      ctx.data = new Uint8Array(8);
      ctx.accessLen = 8;
      return decide.decide(ctx);
    };
    // sys_call_table is .rodata+0x40..0x840 (guest-physical 0x1200040).
    assert.equal(write(0x1200040 + 0x138, k(0x1000410)).rule, "poke-ok", "its writer, by symbol: RIP k(0x1000410)");
    assert.equal(write(0x1200040 + 0x138, k(0x1000480)).verdict, "kill-task", "the next function is not text_poke_bp");
    assert.equal(write(0x1200040 + 0x7f8, k(0x1000600)).verdict, "kill-task", "the table's last entry");
    assert.equal(write(0x1200840, k(0x1000600)).verdict, "deny", "past the table: the default");
  });

  it("a Linux policy's explicit rip range is an error naming it (the kernel's addresses exceed a policy's numbers)", () => {
    const kernel = linuxPolicyKernel({ ranges: [...ranges], source: "elf", mismatches: [] }, "vmlinuz-test");
    const file = parsePolicyText(
      "version: 1\nname: r\nrules:\n  - { name: r, event: protected-write, rip: { from: 0x1000, to: 0x2000 }, action: allow }\n",
      "r.yaml",
    );
    assert.throws(
      () => resolvePolicy(file, kernel),
      /r\.yaml:.*rules\[0\]\.rip: .*name the code by symbol with originator/,
    );
  });

  it("a region naming a section the kernel does not seal is an error naming the field", () => {
    const kernel = linuxPolicyKernel({ ranges: [...ranges], source: "elf", mismatches: [] }, "vmlinuz-test");
    const file = loadPolicyFile(join(packageRoot(), "policies", "default.yaml"));
    const bad = { ...file, spec: { ...file.spec, regions: { data: { section: ".data" } } } };
    assert.throws(() => resolvePolicy(bad, kernel), /no protected section \.data in kernel vmlinuz-test/);
  });
});

describe("hang detection (LinuxHangWatch)", () => {
  const IF = 0x200n;
  function hangSetup(policy?: Policy) {
    const s = sealSetup({ policy });
    const clock = { ms: 1000, exits: 7 };
    const watch = new LinuxHangWatch({
      limitMs: 500,
      getRegs: () => ({ ...s.cpu.regs }),
      getSregs: () => ({ ...s.cpu.sregs }),
      progress: () => clock.exits,
      decider: policy ? new VmmDecider(compilePolicy(policy, regions)) : decider(),
      events: s.seal,
      nowMs: () => clock.ms,
      now: () => 0n,
    });
    // Ring 0, interrupts off, spinning in the kernel's text.
    s.cpu.sregs = sregs(0);
    s.cpu.regs = { ...zeroRegs(), rip: k(0x1000100), rflags: 0x2n };
    return { ...s, clock, watch };
  }

  it("ring 0 with interrupts off and no exit for the limit: one hang event, restarted by the default policy", () => {
    const { watch, clock, out } = hangSetup();
    assert.deepEqual(watch.sample(), { kind: "continue" }, "the first sample only starts the clock");
    clock.ms += 499;
    assert.deepEqual(watch.sample(), { kind: "continue" });
    clock.ms += 1;
    const a = watch.sample();
    assert.equal(a.kind, "stop");
    assert.equal(a.kind === "stop" && a.outcome, "restart");
    assert.equal(out.events.length, 1);
    const e = out.events[0]!;
    assert.equal(e.kind, "hang");
    assert.equal(e.verdict, "restart");
    assert.equal(e.rip, k(0x1000100));
    assert.match(
      e.note ?? "",
      /^kernel hung: ring 0 with interrupts disabled and no exit for 500 ms, at RIP 0xffffffff81000100$/,
    );
    assert.equal(decodeContext(e.record).kind, "hang");
    assert.deepEqual(watch.counters, { hangSamples: 3, hangs: 1 });
  });

  it("interrupts on, ring 3, or an exit between samples is not a hang: each starts over", () => {
    const { watch, clock, cpu, out } = hangSetup();
    const spin = (ms: number) => {
      clock.ms += ms;
      return watch.sample().kind;
    };
    assert.equal(spin(0), "continue");
    cpu.regs = { ...cpu.regs, rflags: 0x2n | IF }; // idle: sti; hlt
    assert.equal(spin(400), "continue");
    cpu.regs = { ...cpu.regs, rflags: 0x2n };
    assert.equal(spin(400), "continue", "the clock starts again here");
    clock.exits++; // an exit between two samples: progress
    assert.equal(spin(400), "continue");
    assert.equal(spin(400), "continue", "400 ms stuck since the exit");
    cpu.sregs = sregs(3);
    assert.equal(spin(400), "continue", "ring 3 is user space, not a kernel hang");
    cpu.sregs = sregs(0);
    assert.equal(spin(1), "continue");
    assert.equal(out.events.length, 0);
    assert.equal(spin(500), "stop");
  });

  it("the policy decides: a hang with `log` stops the VM (a hung vCPU cannot go on by itself)", () => {
    const { watch, clock, out } = hangSetup({
      ...DEFAULT_POLICY,
      defaults: { ...DEFAULT_POLICY.defaults, hang: "log" },
    });
    watch.sample();
    clock.ms += 600;
    const a = watch.sample();
    assert.equal(a.kind === "stop" && a.outcome, "halt");
    assert.equal(out.events[0]?.verdict, "log");
  });
});
