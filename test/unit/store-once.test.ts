/**
 * One verdict per store instruction: KVM hands a store over in pieces (8-byte
 * pieces, one per page, one exit per element of a REP string store); the
 * first is decided, the rest take its verdict with no new event. A fault is
 * precise (RIP and the registers the store moved put back). A store KVM
 * cannot emulate (an internal error at RIP) is decided from its decoded
 * instruction instead of crashing the guest.
 */
import assert from "node:assert/strict";
import { after, beforeEach, describe, it } from "node:test";
import { DEFAULT_POLICY, type Policy } from "../../src/decide/policy.js";
import { type Regs, zeroRegs } from "../../src/kvm/structs.js";
import { decodeContext } from "../../src/model/context.js";
import { writePageTables } from "../../src/vmm/boot.js";
import { dispatchFixture, FakeCpu, MEM } from "../support/dispatch.js";

const { mem, regions, setup } = dispatchFixture();
after(() => mem.release());

const TEXT = 0x100000; // protected .text [0x100000, 0x100800) in the fixture
const CODE = 0x101400; // the writing instruction (unprotected RAM)
const DF = 1n << 10n;
const RF = 1n << 16n;
const UD = 6;
const GP = 13;

const faultPolicy: Policy = {
  ...DEFAULT_POLICY,
  rules: [{ name: "fault-writes", kinds: ["protected-write"], verdict: "deny-fault", reason: "fault" }],
};
const allowPolicy: Policy = {
  ...DEFAULT_POLICY,
  rules: [{ name: "allow-writes", kinds: ["protected-write"], verdict: "allow", reason: "allowed" }],
};

function at(rip: number, over: Partial<Regs> = {}): FakeCpu {
  const cpu = new FakeCpu();
  cpu.regs = { ...zeroRegs(), rflags: 2n, ...over, rip: BigInt(rip) };
  return cpu;
}
const piece = (gpa: number, bytes: number[]) => ({
  kind: "mmio-write" as const,
  gpa,
  len: bytes.length,
  data: Uint8Array.from(bytes),
});
const eight = (b: number) => Array.from({ length: 8 }, () => b);

describe("a store decided once per instruction", () => {
  beforeEach(() => {
    mem.fill(0, MEM, 0);
    writePageTables(mem, MEM);
  });

  it("a 16-byte vector store: two 8-byte pieces, one event covering all 16 bytes", () => {
    mem.write(CODE, Uint8Array.of(0xf3, 0x0f, 0x7f, 0x07)); // movdqu [rdi], xmm0
    const { d, events } = setup(DEFAULT_POLICY, {}, at(CODE + 4, { rdi: BigInt(TEXT + 0x40) }));
    d.dispatch(piece(TEXT + 0x40, eight(0xaa)));
    d.dispatch(piece(TEXT + 0x48, eight(0xbb)));
    assert.equal(events.length, 1);
    const ctx = decodeContext(events[0]!.record);
    assert.equal(ctx.regs.rip, BigInt(CODE), "the writer is the whole movdqu, not its tail");
    assert.equal(ctx.gpa, TEXT + 0x40);
    assert.equal(ctx.accessLen, 16);
    assert.deepEqual([...mem.slice(TEXT + 0x40, 16)], new Array(16).fill(0), "nothing landed");
  });

  it("allowed, every piece lands; the same instruction run again is decided again", () => {
    mem.write(CODE, Uint8Array.of(0xf3, 0x0f, 0x7f, 0x07));
    const { d, events, cpu } = setup(allowPolicy, {}, at(CODE + 4, { rdi: BigInt(TEXT + 0x40) }));
    d.dispatch(piece(TEXT + 0x40, eight(0xaa)));
    d.dispatch(piece(TEXT + 0x48, eight(0xbb)));
    assert.deepEqual([...mem.slice(TEXT + 0x40, 16)], [...eight(0xaa), ...eight(0xbb)]);
    // A loop runs it again: the first piece again is a new execution.
    cpu.regs = { ...cpu.regs };
    d.dispatch(piece(TEXT + 0x40, eight(0xcc)));
    assert.equal(events.length, 2);
  });

  it("a store across two protected pages: the piece on each page, one event, the writer is the 8-byte mov", () => {
    const fx = dispatchFixture([{ name: ".text", start: 0x100000, end: 0x102000 }]);
    try {
      fx.mem.fill(0, MEM, 0);
      writePageTables(fx.mem, MEM);
      fx.mem.write(0x103400, Uint8Array.of(0x48, 0x89, 0x07)); // mov [rdi], rax
      const cpu = at(0x103403, { rdi: 0x100ffcn, rax: 0x1122334455667788n });
      const { d, events } = fx.setup(DEFAULT_POLICY, {}, cpu);
      d.dispatch(piece(0x100ffc, [0x88, 0x77, 0x66, 0x55]));
      d.dispatch(piece(0x101000, [0x44, 0x33, 0x22, 0x11]));
      assert.equal(events.length, 1);
      const ctx = decodeContext(events[0]!.record);
      assert.equal(ctx.regs.rip, 0x103400n, "mov rax, not the 2-byte mov eax inside it");
      assert.equal(ctx.accessLen ?? ctx.data.length, 8);
      assert.deepEqual([...fx.mem.slice(0x100ffc, 8)], new Array(8).fill(0));
    } finally {
      fx.mem.release();
    }
  });

  it("a store that starts in unprotected bytes of a read-only page and goes on into protected ones is denied whole", () => {
    // .text ends at 0x100800: its page's tail [0x100800, 0x101000) is unprotected but read-only.
    mem.write(CODE, Uint8Array.of(0xf3, 0x0f, 0x7f, 0x07)); // movdqu [rdi], xmm0 at 0x1007f8
    const { d, events } = setup(DEFAULT_POLICY, {}, at(CODE + 4, { rdi: 0x1007f8n }));
    d.dispatch(piece(0x1007f8, eight(0xaa))); // protected
    d.dispatch(piece(0x100800, eight(0xbb))); // unprotected, same store
    assert.equal(events.length, 1);
    assert.deepEqual([...mem.slice(0x100800, 8)], new Array(8).fill(0), "the unprotected half of a denied store");
  });

  it("a REP string store: one event for all its elements, with RF set while KVM restarts it", () => {
    mem.write(CODE, Uint8Array.of(0xf3, 0xa4)); // rep movsb
    mem.write(0x102000, Uint8Array.of(1, 2, 3, 4));
    const cpu = at(CODE, { rdi: BigInt(TEXT + 1), rsi: 0x102001n, rcx: 3n });
    const { d, events } = setup(DEFAULT_POLICY, {}, cpu);
    d.dispatch(piece(TEXT, [1]));
    const ctx = decodeContext(events[0]!.record);
    assert.equal(ctx.accessLen ?? ctx.data.length, 4, "this element and the 3 to come");
    for (let i = 1; i < 4; i++) {
      cpu.regs = {
        ...cpu.regs,
        rdi: BigInt(TEXT + i + 1),
        rsi: BigInt(0x102001 + i),
        rcx: BigInt(3 - i),
        rflags: 2n | RF,
      };
      if (i === 3) cpu.regs.rip = BigInt(CODE + 2);
      d.dispatch(piece(TEXT + i, [i + 1]));
    }
    assert.equal(events.length, 1);
    // Another exit in between ends the run: the next element is decided anew.
    d.dispatch({ kind: "hlt" });
  });

  it("a REP store with DF set: its extent runs downwards, and its elements follow", () => {
    mem.write(CODE, Uint8Array.of(0xf3, 0x48, 0xab)); // rep stosq
    const cpu = at(CODE, { rdi: BigInt(TEXT + 0x100 - 8), rcx: 2n, rflags: 2n | DF, rax: 0x4141414141414141n });
    const { d, events } = setup(DEFAULT_POLICY, {}, cpu);
    d.dispatch(piece(TEXT + 0x100, eight(0x41)));
    const ctx = decodeContext(events[0]!.record);
    assert.equal(ctx.gpa, TEXT + 0x100 - 16, "the lowest byte of the three elements");
    assert.equal(ctx.accessLen, 24);
    cpu.regs = { ...cpu.regs, rdi: BigInt(TEXT + 0x100 - 16), rcx: 1n };
    d.dispatch(piece(TEXT + 0x100 - 8, eight(0x41)));
    cpu.regs = { ...cpu.regs, rdi: BigInt(TEXT + 0x100 - 24), rcx: 0n };
    d.dispatch(piece(TEXT + 0x100 - 16, eight(0x41)));
    assert.equal(events.length, 1);
  });

  it("deny-fault is a precise #GP: RIP back on the store, RSP back before a push, and the pieces after it dropped", () => {
    mem.write(CODE, Uint8Array.of(0x50)); // push rax
    const cpu = at(CODE + 1, { rsp: BigInt(TEXT + 0x80), rax: 0x0102030405060708n });
    const { d, events } = setup(faultPolicy, {}, cpu);
    d.dispatch(piece(TEXT + 0x80, [8, 7, 6, 5, 4, 3, 2, 1]));
    assert.equal(events.length, 1);
    assert.equal(cpu.regs.rip, BigInt(CODE));
    assert.equal(cpu.regs.rsp, BigInt(TEXT + 0x88));
    assert.deepEqual(cpu.injected, [[GP, 0]]);

    mem.write(CODE, Uint8Array.of(0xf3, 0x0f, 0x7f, 0x07)); // movdqu: two pieces
    const cpu2 = at(CODE + 4, { rdi: BigInt(TEXT + 0x40) });
    const s2 = setup(faultPolicy, {}, cpu2);
    s2.d.dispatch(piece(TEXT + 0x40, eight(0xaa)));
    assert.equal(cpu2.regs.rip, BigInt(CODE));
    s2.d.dispatch(piece(TEXT + 0x48, eight(0xbb))); // KVM still hands over the second piece
    assert.equal(s2.events.length, 1);
    assert.deepEqual(cpu2.injected, [[GP, 0]], "one fault");
  });
});

describe("a store KVM cannot emulate", () => {
  beforeEach(() => {
    mem.fill(0, MEM, 0);
    writePageTables(mem, MEM);
  });
  const fxsave = Uint8Array.of(0x0f, 0xae, 0x07); // fxsave [rdi]
  const internal = { kind: "internal-error" as const, suberror: 1, data: [] };

  it("is a protected write, decided before it ran: denied, it is skipped and KVM's #UD withdrawn", () => {
    mem.write(CODE, fxsave);
    const cpu = at(CODE, { rdi: BigInt(TEXT + 0x200) });
    cpu.queued = UD;
    const { d, events } = setup(DEFAULT_POLICY, {}, cpu);
    assert.deepEqual(d.dispatch(internal), { kind: "continue" });
    assert.equal(events.length, 1);
    assert.equal(events[0]!.kind, "protected-write");
    assert.equal(events[0]!.verdict, "deny");
    assert.match(events[0]!.note ?? "", /cannot emulate/);
    const ctx = decodeContext(events[0]!.record);
    assert.equal(ctx.regs.rip, BigInt(CODE));
    assert.equal(ctx.gpa, TEXT + 0x200);
    assert.equal(ctx.accessLen, 512);
    assert.equal(cpu.regs.rip, BigInt(CODE + 3), "skipped");
    assert.equal(cpu.queued, undefined, "KVM's #UD withdrawn");
    assert.deepEqual(cpu.injected, []);
  });

  it("deny-fault: #GP at the instruction; allow: cannot be carried out, skipped and said so", () => {
    mem.write(CODE, fxsave);
    const cpu = at(CODE, { rdi: BigInt(TEXT + 0x200) });
    const f = setup(faultPolicy, {}, cpu);
    f.d.dispatch(internal);
    assert.equal(cpu.regs.rip, BigInt(CODE));
    assert.deepEqual(cpu.injected, [[GP, 0]]);

    const cpu2 = at(CODE, { rdi: BigInt(TEXT + 0x200) });
    const a = setup(allowPolicy, {}, cpu2);
    a.d.dispatch(internal);
    assert.equal(a.events[0]!.verdict, "allow");
    assert.match(a.events[0]!.note ?? "", /not carried out/);
    assert.equal(cpu2.regs.rip, BigInt(CODE + 3));
  });

  it("a 32-byte AVX store and XSAVE are decided on every byte they would write", () => {
    for (const [name, code, len] of [
      ["vmovdqu [rdi], ymm0", [0xc5, 0xfe, 0x7f, 0x07], 32],
      ["xsave [rdi]", [0x0f, 0xae, 0x27], 4096], // its size depends on XCR0: counted at its largest
    ] as const) {
      mem.write(CODE, Uint8Array.from(code));
      const cpu = at(CODE, { rdi: BigInt(TEXT + 0x40) });
      const { d, events } = setup(DEFAULT_POLICY, {}, cpu);
      d.dispatch(internal);
      assert.equal(events[0]?.kind, "protected-write", name);
      const ctx = decodeContext(events[0]!.record);
      assert.equal(ctx.accessLen, len, name);
      assert.equal(cpu.regs.rip, BigInt(CODE + code.length), `${name} skipped`);
    }
  });

  it("that touches no protected byte (or is no store) stays a crash", () => {
    mem.write(CODE, fxsave);
    const { d, events } = setup(DEFAULT_POLICY, {}, at(CODE, { rdi: 0x200000n }));
    const a = d.dispatch(internal);
    assert.equal(a.kind, "stop");
    assert.equal(events[0]!.kind, "crash");
    mem.write(CODE, Uint8Array.of(0x0f, 0x0b)); // ud2
    const s2 = setup(DEFAULT_POLICY, {}, at(CODE));
    assert.equal(s2.d.dispatch(internal).kind, "stop");
    assert.equal(s2.events[0]!.kind, "crash");
  });

  it("that starts in unprotected RAM and runs into .text: the event names the region", () => {
    mem.write(CODE, fxsave);
    const { d, events } = setup(DEFAULT_POLICY, {}, at(CODE, { rdi: 0xfff00n }));
    d.dispatch(internal);
    assert.equal(events[0]!.kind, "protected-write");
    assert.equal(events[0]!.regionId, regions[0]!.id);
    assert.equal(decodeContext(events[0]!.record).gpa, 0xfff00, "the write's first byte");
  });
});
