import assert from "node:assert/strict";
import { after, beforeEach, describe, it } from "node:test";
import { type Regs, zeroRegs } from "../../src/kvm/structs.js";
import { decodeContext } from "../../src/model/context.js";
import { writePageTables } from "../../src/vmm/boot.js";
import { locateStore, locateWrite, usePlainCandidates } from "../../src/vmm/write-site.js";
import { dispatchFixture, MEM, sregs } from "../support/dispatch.js";

const { mem, setup } = dispatchFixture();
after(() => mem.release());

const TARGET = 0x100000; // protected .text in the fixture
const CODE = 0x100400;
const RAX = 0x1122334455667788n;
const le = (v: bigint, n: number) => Uint8Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
const rel32 = (from: number, to: number) => [...le(BigInt.asUintN(32, BigInt(to - from)), 4)];

// text-patch's three writes, back to back, all to TARGET:
//   mov byte ptr [TARGET],0xb8         (8 bytes)
//   mov qword ptr [rip+d],rax          (7 bytes)
//   mov dword ptr [rip+d],0x9090c301   (10 bytes, writes TARGET+4)
const W1 = [0xc6, 0x04, 0x25, ...le(BigInt(TARGET), 4), 0xb8];
const W2 = [0x48, 0x89, 0x05, ...rel32(CODE + 8 + 7, TARGET)];
const W3 = [0xc7, 0x05, ...rel32(CODE + 15 + 10, TARGET + 4), 0x01, 0xc3, 0x90, 0x90];
const CODE_BYTES = Uint8Array.from([...W1, ...W2, ...W3, 0xc3]);

function exitAt(rip: number, gpa: number, data: Uint8Array, over: Partial<Regs> = {}) {
  return { regs: { ...zeroRegs(), rax: RAX, ...over, rip: BigInt(rip) }, sregs: sregs(0), gpa, data };
}

describe("locating the instruction behind a protected write", () => {
  beforeEach(() => {
    mem.fill(0, MEM, 0);
    writePageTables(mem, MEM);
    mem.write(CODE, CODE_BYTES);
  });

  it("finds each of three writes to one place from the RIP after it (KVM exits after the write retires)", () => {
    assert.deepEqual(locateWrite(mem, exitAt(CODE + 8, TARGET, Uint8Array.of(0xb8))), { rip: BigInt(CODE), length: 8 });
    assert.deepEqual(locateWrite(mem, exitAt(CODE + 15, TARGET, le(RAX, 8))), { rip: BigInt(CODE + 8), length: 7 });
    assert.deepEqual(locateWrite(mem, exitAt(CODE + 25, TARGET + 4, Uint8Array.of(1, 0xc3, 0x90, 0x90))), {
      rip: BigInt(CODE + 15),
      length: 10,
    });
  });

  it("tells the writes apart by the value written, not only by the address", () => {
    // The 8-byte write's exit, but with the 1-byte value: the mov-byte before it does not explain 8 bytes,
    // and the mov-rax's source is not 0xb8: nothing explains it.
    assert.equal(locateWrite(mem, exitAt(CODE + 15, TARGET, le(0xb8n, 8))), undefined);
    assert.equal(locateWrite(mem, exitAt(CODE + 8, TARGET, Uint8Array.of(0xb9))), undefined);
  });

  it("the same site with other code before RIP is decoded anew (the lengths kept per site follow the code bytes)", () => {
    // Twice at the same RIP (the second from what was learnt of its code), then the code is replaced.
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(locateWrite(mem, exitAt(CODE + 15, TARGET, le(RAX, 8))), { rip: BigInt(CODE + 8), length: 7 });
    }
    // 8 bytes before CODE + 15 now: mov qword [TARGET], rax with a SIB absolute address (48 89 04 25 disp32).
    mem.write(CODE + 7, Uint8Array.of(0x48, 0x89, 0x04, 0x25, ...le(BigInt(TARGET), 4)));
    assert.deepEqual(locateWrite(mem, exitAt(CODE + 15, TARGET, le(RAX, 8))), { rip: BigInt(CODE + 7), length: 8 });
  });

  it("falls back to RIP itself, for a host that exits before the write retires", () => {
    assert.deepEqual(locateWrite(mem, exitAt(CODE, TARGET, Uint8Array.of(0xb8))), { rip: BigInt(CODE), length: 8 });
  });

  it("computes register-based addresses, read-modify-write included", () => {
    mem.write(0x100600, Uint8Array.of(0x48, 0x89, 0x17, 0x48, 0x83, 0x0f, 0x01, 0xc3)); // mov [rdi],rdx; or qword [rdi],1
    const regs = { rdi: BigInt(TARGET + 0x10), rdx: 0xcafen };
    assert.deepEqual(locateWrite(mem, exitAt(0x100603, TARGET + 0x10, le(0xcafen, 8), regs)), {
      rip: 0x100600n,
      length: 3,
    });
    assert.deepEqual(locateWrite(mem, exitAt(0x100607, TARGET + 0x10, le(0xcafen | 1n, 8), regs)), {
      rip: 0x100603n,
      length: 4,
    });
    // The same bytes with RDI elsewhere: the address does not cover the write.
    assert.equal(
      locateWrite(mem, exitAt(0x100603, TARGET + 0x10, le(0xcafen, 8), { ...regs, rdi: 0x200000n })),
      undefined,
    );
  });

  it("reports the whole instruction, not a shorter tail of it that also decodes as a matching store", () => {
    const at = TARGET + 0x20;
    const regs = { rax: BigInt(at), rbx: 0x18893344n, r8: BigInt(at) };
    const data = le(0x18893344n, 4);
    // Each ends in 89 18 (mov [rax],ebx), which on its own explains the write too.
    const longer = [
      { name: "mov fs:[rax],ebx (FS base 0)", bytes: [0x64, 0x89, 0x18] },
      { name: "mov ds:[rax],ebx (redundant prefix)", bytes: [0x3e, 0x89, 0x18] },
      { name: "mov [r8],ebx (REX.B, R8 = RAX)", bytes: [0x41, 0x89, 0x18] },
      { name: "mov dword [rax],0x18893344 (immediate ends in 89 18)", bytes: [0xc7, 0x00, 0x44, 0x33, 0x89, 0x18] },
    ];
    for (const { name, bytes } of longer) {
      mem.write(0x100700 - bytes.length, Uint8Array.from(bytes));
      assert.deepEqual(
        locateWrite(mem, exitAt(0x100700, at, data, regs)),
        { rip: BigInt(0x100700 - bytes.length), length: bytes.length },
        name,
      );
    }
  });

  it("prefers the candidate that writes exactly the exit's size over a longer one that writes more", () => {
    mem.write(0x100700, Uint8Array.of(0x48, 0x89, 0x18)); // mov [rax],rbx; its tail: mov [rax],ebx
    const at = TARGET + 0x20;
    const regs = { rax: BigInt(at), rbx: 0x0102030418893344n };
    assert.deepEqual(locateWrite(mem, exitAt(0x100703, at, le(regs.rbx, 4), regs)), { rip: 0x100701n, length: 2 });
    assert.deepEqual(locateWrite(mem, exitAt(0x100703, at, le(regs.rbx, 8), regs)), { rip: 0x100700n, length: 3 });
  });

  it("survives hostile places: RIP at page 0, unmapped, non-canonical, at the end of RAM", () => {
    for (const rip of [0, 3, 0x7fff_ffff_f000, MEM - 1, MEM + 0x1000]) {
      assert.equal(locateWrite(mem, exitAt(rip, TARGET, Uint8Array.of(0xb8))), undefined, `rip ${rip}`);
    }
    const exit = exitAt(0, TARGET, Uint8Array.of(0xb8));
    exit.regs.rip = 0xffff_8000_0000_0000n;
    assert.equal(locateWrite(mem, exit), undefined);
  });

  it("the dispatcher records the writing instruction, or says it could not find it", () => {
    const { d, cpu, events } = setup();
    cpu.regs = { ...zeroRegs(), rax: RAX, rip: BigInt(CODE + 15) };
    d.dispatch({ kind: "mmio-write", gpa: TARGET, len: 8, data: le(RAX, 8) });
    cpu.regs = { ...zeroRegs(), rip: BigInt(CODE + 15) };
    d.dispatch({ kind: "mmio-write", gpa: TARGET, len: 8, data: le(RAX, 8) }); // RAX no longer holds the value
    const [found, lost] = events.map((e) => ({ e, c: decodeContext(e.record) }));
    assert.equal(found?.c.regs.rip, BigInt(CODE + 8));
    assert.deepEqual([...(found?.c.insn.subarray(0, 7) ?? [])], W2);
    assert.equal(found?.e.note, undefined);
    assert.equal(lost?.c.regs.rip, BigInt(CODE + 15));
    assert.match(lost?.e.note ?? "", /writing instruction was not found/);
  });
});

describe("plain candidates: a known window checked from plain values gives what iced gives", () => {
  beforeEach(() => {
    mem.fill(0, MEM, 0);
    writePageTables(mem, MEM);
  });
  after(() => usePlainCandidates(true));

  // Stores (and what decodes as stores in their tails), each ending at its own RIP.
  const STORES: (number[] | ((end: number) => number[]))[] = [
    [0x48, 0x89, 0x18], // mov [rax],rbx (tail: mov [rax],ebx)
    [0x88, 0x38], // mov [rax],bh
    [0x66, 0x89, 0x18], // mov [rax],bx
    [0x48, 0x89, 0x44, 0x98, 0x08], // mov [rax+rbx*4+8],rax
    [0x67, 0x89, 0x18], // mov [eax],ebx (32-bit address)
    [0x64, 0x48, 0x89, 0x18], // mov fs:[rax],rbx
    [0x65, 0xc7, 0x00, 0x44, 0x33, 0x89, 0x18], // mov dword gs:[rax],0x18893344
    [0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], // mov qword [rax],-1
    [0x48, 0x01, 0x18], // add [rax],rbx (any value)
    [0x48, 0x83, 0x08, 0x01], // or qword [rax],1
    [0x0f, 0x11, 0x00], // movups [rax],xmm0 (16 bytes, a register we do not hold)
    [0x48, 0x87, 0x18], // xchg [rax],rbx
    [0xc6, 0x04, 0x25, ...le(BigInt(TARGET + 0x10), 4), 0xb8], // mov byte [abs],0xb8
    (end) => [0x48, 0x89, 0x05, ...rel32(end, TARGET + 0x10)], // mov [rip+d],rax: RIP-relative, at TARGET+0x10
    (end) => [0x66, 0xc7, 0x05, ...rel32(end, TARGET + 0x11), 0x44, 0x33], // mov word [rip+d],0x3344
    [0x67, 0x48, 0x89, 0x05, 0x00, 0x01, 0x00, 0x00], // mov [eip+0x100],rax (EIP-relative: iced alone)
    [0x50], // push rax (not plain)
    [0xaa], // stosb (not plain)
  ];

  it("the same answer for 20,000 exits at 18 sites, with and without plain values", () => {
    const ends: number[] = [];
    STORES.forEach((store, i) => {
      const end = CODE + 0x20 * (i + 1);
      const bytes = typeof store === "function" ? store(end) : store;
      // A few bytes of other code before each, so that windows differ.
      mem.write(end - bytes.length - 3, Uint8Array.of(0x90, 0x48, 0x90 + i, ...bytes));
      ends.push(end);
    });
    let seed = 0x9e3779b9;
    const rnd = (n: number) => {
      seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
      return seed % n;
    };
    const pick = <T>(xs: readonly T[]): T => xs[rnd(xs.length)] as T;
    const values = [0x0102030405060708n, 0x18893344n, 0xffffffffffffffffn, 0xb8n, 0n, BigInt(TARGET + 0x10)];
    let located = 0;
    for (let i = 0; i < 20_000; i++) {
      const rip = pick(ends);
      const rax = pick([BigInt(TARGET + 0x10), BigInt(TARGET + 0x10 - 8), 0x200000n, BigInt(TARGET), 0x1_0010_0010n]);
      const rbx = pick(values);
      const len = pick([1, 2, 4, 8]);
      const gpa = TARGET + pick([0, 0x10, 0x11, 0x18, 0x20]);
      const data =
        rnd(2) === 0 ? le(pick([rbx, rax, 0x18893344n, 0xb8n]), len) : Uint8Array.from({ length: len }, () => rnd(256));
      const x = exitAt(rip, gpa, data, { rax, rbx, rdi: BigInt(gpa + len) });
      x.sregs.fs.base = pick([0n, 0x10n]);
      x.sregs.gs.base = pick([0n, 0x10n]);
      usePlainCandidates(false);
      const viaIced = locateStore(mem, x);
      usePlainCandidates(true);
      const viaPlain = locateStore(mem, x);
      assert.deepEqual(
        viaPlain,
        viaIced,
        `exit ${i}: rip 0x${rip.toString(16)} ${JSON.stringify({ rax: `${rax}`, rbx: `${rbx}`, gpa, data: [...data] })}`,
      );
      if (viaIced) located++;
    }
    assert.ok(located > 1000, `only ${located} exits were explained: the test would prove little`);
  });
});
