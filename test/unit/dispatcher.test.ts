import assert from "node:assert/strict";
import { after, beforeEach, describe, it } from "node:test";
import { ABI_CONSTANTS } from "../../src/abi/guest-abi.js";
import { FAILSAFE_DEFAULTS } from "../../src/decide/policy.js";
import { decodeContext } from "../../src/model/context.js";
import { dispatchFixture, MEM } from "../support/dispatch.js";

const { mem, setup } = dispatchFixture();
after(() => mem.release());

const bytes = (...b: number[]) => Uint8Array.from(b);

describe("exit dispatcher", () => {
  beforeEach(() => {
    mem.fill(0, MEM, 0);
    mem.write(0x100000, bytes(0x31, 0xc0, 0xc3)); // xor eax,eax; ret
  });

  it("denies a write to protected code: nothing lands, one event with full context", () => {
    const { d, cpu, events } = setup();
    cpu.regs.rip = 0x100400n;
    mem.write(0x100400, bytes(0x48, 0x89, 0x07)); // the "faulting" instruction
    const action = d.dispatch({ kind: "mmio-write", gpa: 0x100000, len: 6, data: bytes(0xb8, 1, 0, 0, 0, 0xc3) });
    assert.deepEqual(action, { kind: "continue" });
    assert.deepEqual([...mem.slice(0x100000, 3)], [0x31, 0xc0, 0xc3]);
    assert.equal(events.length, 1);
    const e = events[0]!;
    assert.equal(e.kind, "protected-write");
    assert.equal(e.verdict, "deny");
    assert.equal(e.decidedBy, "vmm");
    assert.equal(e.rule, "protect-kernel-regions");
    assert.equal(e.seq, 1);
    assert.equal(e.vmId, 7);
    assert.equal(e.latencyUs, 2.5);
    const c = decodeContext(e.record);
    assert.equal(c.regionId, 1);
    assert.equal(c.gpa, 0x100000);
    assert.deepEqual([...c.data], [0xb8, 1, 0, 0, 0, 0xc3]);
    assert.equal(c.regs.rip, 0x100400n);
    assert.equal(c.cr3, 0x1000n);
    // Identity-mapped by the boot tables? Not in this bare memory: instruction bytes need page tables.
    assert.equal(c.insn.length, 0);
  });

  it("numbers events per VM", () => {
    const { d, events } = setup();
    for (let i = 0; i < 3; i++) d.dispatch({ kind: "mmio-write", gpa: 0x100000 + i, len: 1, data: bytes(0xcc) });
    assert.deepEqual(
      events.map((e) => e.seq),
      [1, 2, 3],
    );
  });

  it("performs the write when the verdict is allow or log", () => {
    for (const verdict of ["allow", "log"] as const) {
      mem.write(0x100000, bytes(0x31, 0xc0, 0xc3));
      const { d } = setup({
        name: "p",
        defaults: FAILSAFE_DEFAULTS,
        rules: [{ name: "all", verdict, reason: "test" }],
      });
      d.dispatch({ kind: "mmio-write", gpa: 0x100001, len: 1, data: bytes(0x90) });
      assert.deepEqual([...mem.slice(0x100000, 3)], [0x31, 0x90, 0xc3], verdict);
    }
  });

  it("injects #GP for deny-fault", () => {
    const { d, cpu } = setup({
      name: "p",
      defaults: FAILSAFE_DEFAULTS,
      rules: [{ name: "f", verdict: "deny-fault", reason: "t" }],
    });
    d.dispatch({ kind: "mmio-write", gpa: 0x100000, len: 1, data: bytes(0) });
    assert.deepEqual(cpu.injected, [[13, 0]]);
  });

  it("stops the VM for halt and restart verdicts, and parks it for pause, the write dropped", () => {
    for (const [verdict, outcome] of [
      ["halt", "halt"],
      ["restart", "restart"],
    ] as const) {
      const { d } = setup({ name: "p", defaults: FAILSAFE_DEFAULTS, rules: [{ name: "x", verdict, reason: "t" }] });
      const a = d.dispatch({ kind: "mmio-write", gpa: 0x100000, len: 1, data: bytes(0) });
      assert.equal(a.kind, "stop");
      assert.equal(a.kind === "stop" && a.outcome, outcome);
    }
    const { d } = setup({
      name: "p",
      defaults: FAILSAFE_DEFAULTS,
      rules: [{ name: "x", verdict: "pause", reason: "t" }],
    });
    const before = mem.slice(0x100000, 1)[0];
    const a = d.dispatch({ kind: "mmio-write", gpa: 0x100000, len: 1, data: bytes(0x5a) });
    assert.equal(a.kind, "pause");
    assert.equal(mem.slice(0x100000, 1)[0], before, "the write is dropped");
  });

  it("performs writes to unprotected bytes of a read-only page, without an event", () => {
    const { d, events } = setup();
    d.dispatch({ kind: "mmio-write", gpa: 0x100900, len: 4, data: bytes(1, 2, 3, 4) });
    assert.deepEqual([...mem.slice(0x100900, 4)], [1, 2, 3, 4]);
    assert.equal(events.length, 0);
    assert.equal(d.stats.sharedPageWrites, 1);
  });

  it("ignores writes outside RAM and reads them as all-ones", () => {
    const { d, events } = setup();
    assert.deepEqual(d.dispatch({ kind: "mmio-write", gpa: MEM + 64, len: 8, data: new Uint8Array(8) }), {
      kind: "continue",
    });
    const data = new Uint8Array(4);
    d.dispatch({ kind: "mmio-read", gpa: 0xfee00000, len: 4, data });
    assert.deepEqual([...data], [0xff, 0xff, 0xff, 0xff]);
    assert.equal(events.length, 0);
    assert.equal(d.stats.unbackedWrites, 1);
    assert.equal(d.stats.unbackedReads, 1);
  });

  it("routes serial output, string I/O included, and the debug-exit port", () => {
    const { d, lines } = setup();
    d.dispatch({ kind: "io-out", port: 0x3f8, size: 1, count: 6, data: Buffer.from("hello\n") });
    d.dispatch({ kind: "io-out", port: 0x3f8, size: 1, count: 1, data: bytes(0x41) });
    d.dispatch({ kind: "io-out", port: 0x3f8, size: 1, count: 1, data: bytes(0x0a) });
    assert.deepEqual(lines, ["hello", "A"]);
    const lsr = new Uint8Array(1);
    d.dispatch({ kind: "io-in", port: 0x3fd, size: 1, count: 1, data: lsr });
    assert.equal(lsr[0]! & 0x20, 0x20);
    const a = d.dispatch({
      kind: "io-out",
      port: ABI_CONSTANTS.PORT_DEBUG_EXIT,
      size: 4,
      count: 1,
      data: bytes(0x2a, 1, 0, 0),
    });
    assert.deepEqual(a, { kind: "stop", outcome: "exit", code: 0x12a, detail: "guest exited with code 298" });
  });

  it("answers hypercalls in RAX and rejects unknown numbers", () => {
    const { d, cpu } = setup();
    cpu.regs.rax = BigInt(ABI_CONSTANTS.HC_NOP);
    d.dispatch({ kind: "io-out", port: ABI_CONSTANTS.PORT_HYPERCALL, size: 4, count: 1, data: bytes(0, 0, 0, 0) });
    assert.equal(cpu.regs.rax, 0n);
    cpu.regs.rax = 0x7777n;
    d.dispatch({ kind: "io-out", port: ABI_CONSTANTS.PORT_HYPERCALL, size: 4, count: 1, data: bytes(0, 0, 0, 0) });
    assert.equal(cpu.regs.rax, BigInt(ABI_CONSTANTS.HC_EINVAL));
  });

  it("reads unknown ports as all-ones", () => {
    const { d } = setup();
    const data = new Uint8Array(2);
    d.dispatch({ kind: "io-in", port: 0x60, size: 2, count: 1, data });
    assert.deepEqual([...data], [0xff, 0xff]);
  });

  it("turns crashes into crash events: the default policy restarts, a halt policy crashes", () => {
    const { d, events } = setup();
    assert.deepEqual(d.dispatch({ kind: "shutdown" }), {
      kind: "stop",
      outcome: "restart",
      detail: "triple fault (KVM_EXIT_SHUTDOWN): restart by verdict",
    });
    assert.equal(events.length, 1);
    assert.deepEqual(
      { kind: events[0]?.kind, verdict: events[0]?.verdict, note: events[0]?.note },
      { kind: "crash", verdict: "restart", note: "triple fault (KVM_EXIT_SHUTDOWN)" },
    );
    const halting = setup({ name: "h", rules: [], defaults: { ...FAILSAFE_DEFAULTS, crash: "halt" } }).d;
    const ie = halting.dispatch({ kind: "internal-error", suberror: 1, data: [] });
    assert.equal(ie.kind === "stop" && ie.outcome, "crash");
    assert.equal(d.dispatch({ kind: "hlt" }).kind, "stop");
    assert.equal(d.dispatch({ kind: "unknown", reason: 99 }).kind, "stop");
    assert.deepEqual(d.dispatch({ kind: "interrupted" }), { kind: "continue" });
  });

  it("refuses unexpected MSR accesses with #GP", () => {
    const { d, cpu } = setup();
    d.dispatch({ kind: "msr-write", index: 0xc0000082, value: 0n });
    assert.equal(cpu.msrResult, 1);
  });
});
