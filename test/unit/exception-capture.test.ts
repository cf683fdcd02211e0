/**
 * First-time exception capture: the exception frame codec (with and without a
 * CPU error code, hostile frames) and the breakpoint → capture → single-step →
 * re-arm cycle, MSR writes before and after sealing, and the guest's own
 * exception reports — all through the exit dispatcher with fake exits.
 */
import assert from "node:assert/strict";
import { after, beforeEach, describe, it } from "node:test";
import { ABI_CONSTANTS as C, CONTEXT_FLAGS } from "../../src/abi/guest-abi.js";
import { DEFAULT_POLICY, FAILSAFE_DEFAULTS } from "../../src/decide/policy.js";
import { decodeContext } from "../../src/model/context.js";
import { writePageTables } from "../../src/vmm/boot.js";
import { DR7_EXEC_DR0, ExceptionCapture } from "../../src/vmm/exception-capture.js";
import { decodeExceptionFrame, FRAME_BYTES } from "../../src/vmm/frame.js";
import { dispatchFixture, FakeCpu, MEM } from "../support/dispatch.js";

const { mem, setup } = dispatchFixture();
after(() => mem.release());

const CR3 = BigInt(C.BOOT_PML4);
const ENTRY = 0x101040n;
const FLAGS = { enable: 1, singlestep: 2, useHwBp: 0x20000 };
const STACK = 0x300000n;

function writeFrame(at: bigint, q: bigint[]): void {
  q.forEach((v, i) => {
    mem.writeU64(Number(at) + 8 * i, v);
  });
}

/** vector, error code, rip, cs, rflags, rsp, ss */
const userPf = [14n, 6n, 0x200123n, 0x23n, 0x202n, 0x7ff000n, 0x1bn];

beforeEach(() => {
  mem.fill(0, MEM, 0);
  writePageTables(mem, MEM);
});

describe("exception frame", () => {
  it("decodes a frame with a CPU error code (#PF from ring 3)", () => {
    writeFrame(STACK, userPf);
    const r = decodeExceptionFrame(mem, CR3, STACK);
    assert.ok(r.ok);
    assert.deepEqual(r.frame, {
      vector: 14,
      errorCode: 6n,
      rip: 0x200123n,
      cs: 0x23,
      rflags: 0x202n,
      rsp: 0x7ff000n,
      ss: 0x1b,
      cpl: 3,
    });
  });

  it("decodes a frame without one (#DE from ring 0: the stub pushed 0)", () => {
    writeFrame(STACK, [0n, 0n, 0x100200n, 0x08n, 0x2n, 0x2fff00n, 0x10n]);
    const r = decodeExceptionFrame(mem, CR3, STACK);
    assert.ok(r.ok);
    assert.equal(r.frame.vector, 0);
    assert.equal(r.frame.errorCode, 0n);
    assert.equal(r.frame.cpl, 0);
  });

  const hostile: [string, bigint, bigint[] | undefined, RegExp][] = [
    ["RSP outside RAM", 0x10000000n, undefined, /not readable \(0 of 56/],
    ["a frame crossing the end of RAM", BigInt(MEM - 24), undefined, /not readable \(24 of 56/],
    ["RSP in the unmapped page 0", 0x10n, undefined, /not readable/],
    ["a non-canonical RSP", 0x0000_8000_0000_0000n, undefined, /not canonical/],
    ["a misaligned RSP", STACK + 4n, undefined, /not 8-byte aligned/],
    ["a non-canonical RIP", STACK, [13n, 0n, 0x1234_5678_9abc_def0n, 0x08n, 2n, 0n, 0n], /RIP .* not canonical/],
    [
      "an error code where the CPU pushes none",
      STACK,
      [6n, 0xdeadn, 0x100000n, 0x08n, 2n, 0n, 0n],
      /has no error code/,
    ],
    ["a vector above 255", STACK, [0x1_0000n, 0n, 0x100000n, 0x08n, 2n, 0n, 0n], /out of range/],
  ];
  for (const [what, rsp, frame, why] of hostile) {
    it(`rejects ${what}`, () => {
      if (frame) writeFrame(rsp, frame);
      else if (rsp < BigInt(MEM)) mem.fill(Number(rsp), Math.min(FRAME_BYTES, MEM - Number(rsp)), 0);
      const r = decodeExceptionFrame(mem, CR3, rsp);
      assert.equal(r.ok, false);
      if (!r.ok) assert.match(r.why, why);
    });
  }
});

function withCapture(policy = DEFAULT_POLICY) {
  const cpu = new FakeCpu();
  const xc = new ExceptionCapture(ENTRY, cpu, FLAGS);
  const t = setup(policy, { exceptions: xc, protectedMsrs: new Set([0xc0000082, 0x176]) }, cpu);
  xc.arm();
  return { ...t, xc };
}

describe("exception capture through the dispatcher", () => {
  it("arms an execute breakpoint on the entry", () => {
    const { cpu } = withCapture();
    assert.deepEqual(cpu.debug, [{ control: 1 | 0x20000, regs: [ENTRY, 0n, 0n, 0n, 0n, 0n, 0n, DR7_EXEC_DR0] }]);
  });

  it("captures at the entry before the handler runs, steps over, re-arms", () => {
    const { d, cpu, events, xc } = withCapture();
    writeFrame(STACK, userPf);
    mem.write(0x200123, Uint8Array.from([0x89, 0x02])); // mov [rdx],eax
    cpu.regs = { ...cpu.regs, rsp: STACK, rip: ENTRY, rdx: 0x100000n };
    cpu.cr2 = 0x100000n;
    assert.deepEqual(d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 }), {
      kind: "continue",
    });
    assert.equal(events.length, 1);
    const e = events[0];
    assert.ok(e);
    assert.deepEqual(
      { kind: e.kind, vector: e.vector, verdict: e.verdict, decidedBy: e.decidedBy, rip: e.rip },
      { kind: "cpu-exception", vector: 14, verdict: "log", decidedBy: "vmm", rip: 0x200123n },
    );
    const c = decodeContext(e.record);
    assert.equal(c.cpl, 3, "the CPL the exception came from, not the handler's");
    assert.equal(c.errorCode, 6n);
    assert.equal(c.cr2, 0x100000n);
    assert.equal(c.regs.rsp, 0x7ff000n);
    assert.equal(c.regs.rdx, 0x100000n);
    assert.deepEqual([...c.insn.subarray(0, 2)], [0x89, 0x02]);
    assert.ok(c.flags & CONTEXT_FLAGS.INSN_VALID);
    // Disabled and single-stepping, then re-armed on the step's debug exit.
    assert.equal(cpu.debug.at(-1)?.control, 1 | 2);
    assert.equal(xc.armed, false);
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY + 1n, dr6: 0x4000n, dr7: 0n });
    assert.equal(cpu.debug.at(-1)?.control, 1 | 0x20000);
    assert.equal(xc.armed, true);
    assert.equal(events.length, 1, "the step is not an event");
    // A debug exit elsewhere (the guest's own debugging) is not ours: the guest gets its #DB.
    d.dispatch({ kind: "debug", exception: 1, pc: 0x100000n, dr6: 0x4000n, dr7: 0n });
    assert.equal(events.length, 1);
    assert.deepEqual(cpu.injected.at(-1), [1, undefined]);
    assert.equal(xc.armed, true);
  });

  it("takes DR6.B0 as our breakpoint even when the reported pc differs", () => {
    const { d, cpu, events, xc } = withCapture();
    writeFrame(STACK, userPf);
    cpu.regs = { ...cpu.regs, rsp: STACK };
    d.dispatch({ kind: "debug", exception: 1, pc: 0n, dr6: 1n, dr7: DR7_EXEC_DR0 });
    assert.equal(events.length, 1);
    assert.equal(xc.armed, false);
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY + 1n, dr6: 0xffff4ff0n, dr7: 0n });
    assert.equal(xc.armed, true);
    assert.equal(cpu.injected.length, 0);
  });

  it("while stepping, takes only a DR6.BS exit as the step: anything else re-arms at once and is counted", () => {
    const { d, cpu, events, xc } = withCapture();
    writeFrame(STACK, userPf);
    cpu.regs = { ...cpu.regs, rsp: STACK };
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 });
    assert.equal(xc.armed, false);
    d.dispatch({ kind: "debug", exception: 1, pc: 0x123456n, dr6: 0n, dr7: 0n });
    assert.equal(xc.armed, true, "re-armed: the next exception is captured");
    assert.deepEqual(cpu.injected.at(-1), [1, undefined], "the #DB was the guest's");
    assert.equal(d.stats.captureStepsLost, 1);
    assert.equal(events.length, 1);
  });

  it("while stepping, an exit at the entry is a new exception: captured, not taken for the step", () => {
    const { d, cpu, events, xc } = withCapture();
    writeFrame(STACK, userPf);
    cpu.regs = { ...cpu.regs, rsp: STACK };
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 });
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 0x4000n, dr7: 0n });
    assert.equal(events.length, 2);
    assert.equal(xc.armed, false, "stepping over the entry again");
    assert.equal(cpu.injected.length, 0);
  });

  it("ends the VM at the entry when the policy says restart (no step over)", () => {
    const { d, cpu, events } = withCapture({
      name: "p",
      defaults: FAILSAFE_DEFAULTS,
      rules: [
        { name: "kernel-pf", kinds: ["cpu-exception"], vectors: [14], cpl: [0], verdict: "restart", reason: "r" },
      ],
    });
    writeFrame(STACK, [14n, 2n, 0x100010n, 0x08n, 2n, 0x2ff000n, 0x10n]);
    cpu.regs = { ...cpu.regs, rsp: STACK };
    const a = d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 });
    assert.equal(a.kind === "stop" && a.outcome, "restart");
    assert.equal(events[0]?.rule, "kernel-pf");
    assert.equal(cpu.debug.length, 1, "still armed");
  });

  it("records a hostile frame as an exception on vector 255 with a note", () => {
    const { d, cpu, events } = withCapture();
    cpu.regs = { ...cpu.regs, rsp: BigInt(MEM - 8) };
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 });
    assert.equal(events[0]?.vector, 255);
    assert.match(events[0]?.note ?? "", /exception frame rejected: .*not readable/);
    assert.ok(decodeContext(events[0]?.record ?? new Uint8Array()).flags & CONTEXT_FLAGS.FRAME_INVALID);
  });

  it("matches the guest's report of an exception to the capture, and flags a report with none", () => {
    const { d, cpu, events, reports } = withCapture();
    writeFrame(STACK, userPf);
    cpu.regs = { ...cpu.regs, rsp: STACK };
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 });
    d.onGuestReport(14, 0x200123n, "task-killed");
    d.onGuestReport(14, 0x200123n, "task-killed"); // a second report of the same exception: no capture left
    d.onGuestReport(0, 0x200000n, "task-killed"); // an exception the VMM never saw
    assert.deepEqual(reports, [
      { seq: events[0]?.seq, vector: 14, rip: 0x200123n, action: "task-killed" },
      { seq: undefined, vector: 14, rip: 0x200123n, action: "task-killed" },
      { seq: undefined, vector: 0, rip: 0x200000n, action: "task-killed" },
    ]);
  });
});

describe("kill-task reaching the guest (HC_EXCEPTION_VERDICT)", () => {
  const END = C.EXC_END_TASK;
  const OWN = C.EXC_OWN_RULE;
  const killKernelFaults = {
    name: "p",
    defaults: FAILSAFE_DEFAULTS,
    rules: [
      { name: "kernel", kinds: ["cpu-exception" as const], cpl: [0], verdict: "kill-task" as const, reason: "k" },
    ],
  };

  it("answers end-task for an exception whose verdict is kill-task, own-rule for others", () => {
    const { d, cpu } = withCapture(killKernelFaults);
    writeFrame(STACK, [14n, 2n, 0x100010n, 0x08n, 2n, 0x2ff000n, 0x10n]); // ring 0 #PF
    cpu.regs = { ...cpu.regs, rsp: STACK };
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 });
    assert.equal(d.exceptionVerdict(14, 0x100010n), END);
    assert.equal(d.exceptionVerdict(14, 0x100011n), OWN, "another RIP: no such capture");
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY + 1n, dr6: 0x4000n, dr7: 0n }); // the step
    writeFrame(STACK, userPf); // ring 3: the policy's default (log)
    d.dispatch({ kind: "debug", exception: 1, pc: ENTRY, dr6: 1n, dr7: DR7_EXEC_DR0 });
    assert.equal(d.exceptionVerdict(14, 0x200123n), OWN);
  });

  it("answers end-task for the #GP it raised at a write whose verdict is kill-task, once", () => {
    const { d, cpu } = setup({
      name: "p",
      defaults: FAILSAFE_DEFAULTS,
      rules: [{ name: "w", kinds: ["protected-write"], verdict: "kill-task", reason: "k" }],
    });
    cpu.regs = { ...cpu.regs, rip: 0x100040n };
    d.dispatch({ kind: "mmio-write", gpa: 0x100000, len: 1, data: Uint8Array.of(0xcc) });
    assert.deepEqual(cpu.injected.at(-1), [13, 0]);
    const rip = cpu.regs.rip; // where the fault was raised: the writer (or the resume point when not located)
    assert.equal(d.exceptionVerdict(13, rip), END);
    assert.equal(d.exceptionVerdict(13, rip), OWN, "taken once");
  });
});

describe("protected MSRs", () => {
  it("performs writes before the guest seals, then refuses them with #GP and records them", () => {
    const { d, cpu, events } = withCapture();
    d.dispatch({ kind: "msr-write", index: 0xc0000082, value: 0x100100n });
    assert.equal(cpu.msrs.get(0xc0000082), 0x100100n);
    assert.equal(cpu.msrResult, 0);
    assert.equal(events.length, 0);
    assert.equal(d.seal(C.SEAL_MSRS), C.SEAL_MSRS);
    assert.equal(d.seal(0), C.SEAL_MSRS, "sealing is one-way");
    d.dispatch({ kind: "msr-write", index: 0xc0000082, value: 0xdeadbeefn });
    assert.equal(cpu.msrs.get(0xc0000082), 0x100100n, "the hook never lands");
    assert.equal(cpu.msrResult, 1, "#GP in the guest");
    assert.deepEqual(
      { kind: events[0]?.kind, verdict: events[0]?.verdict, msr: events[0]?.msrIndex, rule: events[0]?.rule },
      { kind: "msr-write", verdict: "deny-fault", msr: 0xc0000082, rule: "protect-syscall-msrs" },
    );
    assert.equal(decodeContext(events[0]?.record ?? new Uint8Array()).msrValue, 0xdeadbeefn);
  });

  it("a value KVM refuses (non-canonical LSTAR) is a #GP in the guest, before the seal and when allowed after it", () => {
    const allowAll = {
      ...DEFAULT_POLICY,
      rules: [],
      defaults: { ...DEFAULT_POLICY.defaults, "msr-write": "allow" as const },
    };
    const { d, cpu, events } = withCapture(allowAll);
    d.dispatch({ kind: "msr-write", index: 0xc0000082, value: 0x8000_0000_0000n });
    assert.equal(cpu.msrResult, 1, "before the seal: #GP, as the CPU would raise");
    assert.equal(cpu.msrs.has(0xc0000082), false);
    d.seal(C.SEAL_MSRS);
    d.dispatch({ kind: "msr-write", index: 0xc0000082, value: 0x1234_0000_0000_0000n });
    assert.equal(cpu.msrResult, 1, "allowed, refused by KVM: #GP, and the vCPU thread goes on");
    assert.equal(events[0]?.verdict, "allow");
    assert.match(events[0]?.note ?? "", /KVM refused the value: #GP/);
    d.dispatch({ kind: "msr-write", index: 0xc0000082, value: 0x100200n });
    assert.equal(cpu.msrResult, 0);
    assert.equal(cpu.msrs.get(0xc0000082), 0x100200n);
  });

  it("refuses writes to MSRs outside the protected set without an event", () => {
    const { d, cpu, events } = withCapture();
    d.seal(C.SEAL_MSRS);
    d.dispatch({ kind: "msr-write", index: 0x10, value: 1n });
    assert.equal(cpu.msrResult, 1);
    assert.equal(events.length, 0);
  });
});
