import assert from "node:assert/strict";
import { after, beforeEach, describe, it } from "node:test";
import { type Regs, zeroRegs } from "../../src/kvm/structs.js";
import { writePageTables } from "../../src/vmm/boot.js";
import { locateWrite } from "../../src/vmm/write-site.js";
import { dispatchFixture, MEM, sregs } from "../support/dispatch.js";

// String stores and stack writes: by the time KVM exits, RDI / RSP have moved.
const { mem } = dispatchFixture();
after(() => mem.release());

const TARGET = 0x100000; // protected .text in the fixture
const CODE = 0x101400; // the writing instruction, preceded by zeros
const FUNC = 0x101800; // a call target
const SRC = 0x102000; // a movs source
const RAX = 0x1122334455667788n;
const DF = 1n << 10n;
const le = (v: bigint, n: number) => Uint8Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
const rel32 = (from: number, to: number) => [...le(BigInt.asUintN(32, BigInt(to - from)), 4)];

function exitAt(rip: number, gpa: number, data: Uint8Array, over: Partial<Regs> = {}) {
  return { regs: { ...zeroRegs(), rax: RAX, rflags: 2n, ...over, rip: BigInt(rip) }, sregs: sregs(0), gpa, data };
}
const site = (rip: number, length: number) => ({ rip: BigInt(rip), length });

const STOS = [
  { name: "stosb", bytes: [0xaa], size: 1 },
  { name: "stosw", bytes: [0x66, 0xab], size: 2 },
  { name: "stosd", bytes: [0xab], size: 4 },
  { name: "stosq", bytes: [0x48, 0xab], size: 8 },
];
const MOVS = [
  { name: "movsb", bytes: [0xa4], size: 1 },
  { name: "movsw", bytes: [0x66, 0xa5], size: 2 },
  { name: "movsd", bytes: [0xa5], size: 4 },
  { name: "movsq", bytes: [0x48, 0xa5], size: 8 },
];
const SOURCE = Uint8Array.of(0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04);

describe("locating string stores and stack writes", () => {
  beforeEach(() => {
    mem.fill(0, MEM, 0);
    writePageTables(mem, MEM);
    mem.write(SRC, SOURCE);
  });

  it("finds stos of every size from RDI after it advanced, forwards (DF clear) and backwards (DF set)", () => {
    for (const { name, bytes, size } of STOS) {
      mem.fill(CODE - 16, 32, 0);
      mem.write(CODE, Uint8Array.from(bytes));
      const end = CODE + bytes.length;
      const at = TARGET + 0x40;
      assert.deepEqual(
        locateWrite(mem, exitAt(end, at, le(RAX, size), { rdi: BigInt(at + size) })),
        site(CODE, bytes.length),
        `${name} forwards`,
      );
      assert.deepEqual(
        locateWrite(mem, exitAt(end, at, le(RAX, size), { rdi: BigInt(at - size), rflags: 2n | DF })),
        site(CODE, bytes.length),
        `${name} backwards`,
      );
      // RDI not advanced (or advanced the other way), or a value that is not AL/AX/EAX/RAX: not this stos.
      assert.equal(locateWrite(mem, exitAt(end, at, le(RAX, size), { rdi: BigInt(at) })), undefined, name);
      assert.equal(
        locateWrite(mem, exitAt(end, at, le(RAX, size), { rdi: BigInt(at + size), rflags: 2n | DF })),
        undefined,
        `${name} DF`,
      );
      assert.equal(
        locateWrite(mem, exitAt(end, at, le(~RAX, size), { rdi: BigInt(at + size) })),
        undefined,
        `${name} value`,
      );
    }
  });

  it("finds movs of every size, checking the value against the source it copied", () => {
    for (const { name, bytes, size } of MOVS) {
      mem.fill(CODE - 16, 32, 0);
      mem.write(CODE, Uint8Array.from(bytes));
      const end = CODE + bytes.length;
      const at = TARGET + 0x80;
      const copied = SOURCE.subarray(0, size);
      const regs = { rdi: BigInt(at + size), rsi: BigInt(SRC + size) };
      assert.deepEqual(locateWrite(mem, exitAt(end, at, copied, regs)), site(CODE, bytes.length), name);
      const back = { rdi: BigInt(at - size), rsi: BigInt(SRC - size), rflags: 2n | DF };
      assert.deepEqual(locateWrite(mem, exitAt(end, at, copied, back)), site(CODE, bytes.length), `${name} DF`);
      const wrong = Uint8Array.from(copied, (b) => b ^ 0xff);
      assert.equal(locateWrite(mem, exitAt(end, at, wrong, regs)), undefined, `${name} value`);
    }
  });

  it("finds rep stos/movs mid-run at RIP itself (RCX left), and past it on the last iteration (RCX 0)", () => {
    const cases = [
      { name: "rep stosb", bytes: [0xf3, 0xaa], size: 1 },
      { name: "rep stosq", bytes: [0xf3, 0x48, 0xab], size: 8 },
      { name: "repne stosd", bytes: [0xf2, 0xab], size: 4 },
      { name: "rep movsw", bytes: [0x66, 0xf3, 0xa5], size: 2 },
      { name: "rep movsq", bytes: [0xf3, 0x48, 0xa5], size: 8 },
    ];
    for (const { name, bytes, size } of cases) {
      mem.fill(CODE - 16, 32, 0);
      mem.write(CODE, Uint8Array.from(bytes));
      const end = CODE + bytes.length;
      const at = TARGET + 0x100;
      const movs = bytes.includes(0xa5);
      const data = movs ? SOURCE.subarray(0, size) : le(RAX, size);
      const regs = { rdi: BigInt(at + size), rsi: BigInt(SRC + size) };
      assert.deepEqual(
        locateWrite(mem, exitAt(CODE, at, data, { ...regs, rcx: 7n })),
        site(CODE, bytes.length),
        `${name} mid-run`,
      );
      assert.deepEqual(
        locateWrite(mem, exitAt(end, at, data, { ...regs, rcx: 0n })),
        site(CODE, bytes.length),
        `${name} last`,
      );
      // A rep instruction retires only when RCX reaches 0, and never stays at RIP with RCX 0. (Past it with
      // RCX left, its tail without the prefix can still be the writer: a jump into the prefix runs a plain one.)
      const past = locateWrite(mem, exitAt(end, at, data, { ...regs, rcx: 7n }));
      assert.notDeepEqual(past, site(CODE, bytes.length), `${name} past, rcx 7`);
      if (past) assert.ok(past.rip > BigInt(CODE) && past.rip + BigInt(past.length) === BigInt(end), name);
      assert.equal(locateWrite(mem, exitAt(CODE, at, data, { ...regs, rcx: 0n })), undefined, `${name} at, rcx 0`);
    }
  });

  it("finds rep movsb copying backwards (DF set), as memmove does for an overlapping copy", () => {
    mem.write(CODE, Uint8Array.of(0xf3, 0xa4));
    const regs = { rdi: BigInt(TARGET + 0x1ff), rsi: BigInt(SRC + 2), rcx: 3n, rflags: 2n | DF };
    assert.deepEqual(locateWrite(mem, exitAt(CODE, TARGET + 0x200, SOURCE.subarray(3, 4), regs)), site(CODE, 2));
  });

  it("truncates RDI and RCX to 32 bits under an address-size prefix", () => {
    mem.write(CODE, Uint8Array.of(0x67, 0xf3, 0xaa)); // rep stosb [edi]
    const high = 0xffff_ffff_0000_0000n;
    const at = TARGET + 0x180;
    const regs = { rdi: high | BigInt(at + 1) };
    assert.deepEqual(locateWrite(mem, exitAt(CODE, at, le(RAX, 1), { ...regs, rcx: high | 2n })), site(CODE, 3));
    assert.deepEqual(locateWrite(mem, exitAt(CODE + 3, at, le(RAX, 1), { ...regs, rcx: high })), site(CODE, 3));
    // ECX is 0 whatever RCX's high half holds: the instruction has finished, RIP cannot still be on it.
    assert.equal(locateWrite(mem, exitAt(CODE, at, le(RAX, 1), { ...regs, rcx: high })), undefined);
  });

  it("finds push from RSP after it was decremented: the element written is at RSP", () => {
    const at = TARGET + 0x300;
    const cases = [
      { name: "push rax", bytes: [0x50], data: le(RAX, 8) },
      { name: "push r15", bytes: [0x41, 0x57], data: le(0xf15n, 8), regs: { r15: 0xf15n } },
      { name: "push imm8", bytes: [0x6a, 0xfe], data: le(0xffff_ffff_ffff_fffen, 8) },
      { name: "push imm32", bytes: [0x68, 0x78, 0x56, 0x34, 0x12], data: le(0x12345678n, 8) },
      { name: "push ax", bytes: [0x66, 0x50], data: le(RAX, 2) },
      { name: "push rsp", bytes: [0x54], data: le(BigInt(at + 8), 8) },
      { name: "pushfq", bytes: [0x9c], data: le(0x246n, 8) },
    ];
    for (const { name, bytes, data, regs } of cases) {
      mem.fill(CODE - 16, 32, 0);
      mem.write(CODE, Uint8Array.from(bytes));
      const end = CODE + bytes.length;
      assert.deepEqual(
        locateWrite(mem, exitAt(end, at, data, { ...regs, rsp: BigInt(at) })),
        site(CODE, bytes.length),
        name,
      );
      // RSP still where it was before the push: the push wrote below it, not here.
      assert.equal(locateWrite(mem, exitAt(end, at, data, { ...regs, rsp: BigInt(at + 8) })), undefined, name);
    }
    mem.write(CODE, Uint8Array.of(0x50));
    assert.equal(locateWrite(mem, exitAt(CODE + 1, at, le(~RAX, 8), { rsp: BigInt(at) })), undefined, "value");
  });

  it("finds pop to memory addressed by RSP, whose address uses RSP after the pop", () => {
    mem.write(CODE, Uint8Array.of(0x8f, 0x44, 0x24, 0x08)); // pop qword [rsp+8]
    const at = TARGET + 0x340;
    assert.deepEqual(locateWrite(mem, exitAt(CODE + 4, at, le(5n, 8), { rsp: BigInt(at - 8) })), site(CODE, 4));
  });

  it("finds call from the return address it pushed: RIP is already the call's target", () => {
    const at = TARGET + 0x3f8;
    const direct = [0xe8, ...rel32(CODE + 5, FUNC)];
    mem.write(CODE, Uint8Array.from(direct));
    const ret = le(BigInt(CODE + 5), 8);
    assert.deepEqual(locateWrite(mem, exitAt(FUNC, at, ret, { rsp: BigInt(at) })), site(CODE, 5));
    // The call's target is not where the guest resumes, or RSP is elsewhere: not this call.
    assert.equal(locateWrite(mem, exitAt(FUNC + 1, at, ret, { rsp: BigInt(at) })), undefined);
    assert.equal(locateWrite(mem, exitAt(FUNC, at, ret, { rsp: BigInt(at + 8) })), undefined);

    // Indirect calls take their target from registers or memory the guest controls: never named as writers.
    mem.write(CODE, Uint8Array.of(0xff, 0xd0)); // call rax
    const ret2 = le(BigInt(CODE + 2), 8);
    assert.equal(locateWrite(mem, exitAt(FUNC, at, ret2, { rsp: BigInt(at), rax: BigInt(FUNC) })), undefined);

    mem.write(CODE, Uint8Array.of(0xff, 0x13)); // call [rbx]
    mem.write(SRC + 0x100, le(BigInt(FUNC), 8));
    const regs = { rsp: BigInt(at), rbx: BigInt(SRC + 0x100) };
    assert.equal(locateWrite(mem, exitAt(FUNC, at, ret2, regs)), undefined);

    mem.write(CODE, Uint8Array.of(0xe8, 0, 0, 0, 0)); // call +0: RIP is both the target and the return address
    assert.deepEqual(
      locateWrite(mem, exitAt(CODE + 5, at, le(BigInt(CODE + 5), 8), { rsp: BigInt(at) })),
      site(CODE, 5),
    );
  });

  it("survives hostile string and stack state: wrapping RDI/RSP, unmapped sources, RIP at the end of RAM", () => {
    mem.write(CODE, Uint8Array.of(0xf3, 0x48, 0xa5, 0x50));
    const wild = [0n, 8n, 0xffff_ffff_ffff_fff8n, 0x7fff_ffff_fffcn, BigInt(MEM), BigInt(MEM - 4)];
    for (const v of wild) {
      for (const rip of [CODE, CODE + 3, CODE + 4, MEM - 1]) {
        const regs = { rdi: v, rsi: v, rsp: v, rcx: v, rflags: v };
        for (const data of [le(v, 8), le(RAX, 8), Uint8Array.of(1)]) {
          locateWrite(mem, exitAt(rip, TARGET, data, regs));
          const ret = locateWrite(mem, exitAt(rip, Number(v % BigInt(MEM)), data, regs));
          if (ret) assert.ok(ret.length >= 1 && ret.length <= 15);
        }
      }
    }
    // movs from an unmapped source: the value cannot be checked, the address still says it.
    mem.write(CODE, Uint8Array.of(0xa4));
    const regs = { rdi: BigInt(TARGET + 1), rsi: 0x7fff_0000_0001n };
    assert.deepEqual(locateWrite(mem, exitAt(CODE + 1, TARGET, Uint8Array.of(9), regs)), site(CODE, 1));
  });
});
