/**
 * Sealed state checked on exits (IDTR, pinned CR bits), a kernel panic turned
 * into a crash event, and the watchdog's hang event — through the dispatcher
 * with fake exits.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { ABI_CONSTANTS as C } from "../../src/abi/guest-abi.js";
import { FAILSAFE_DEFAULTS } from "../../src/decide/policy.js";
import { decodeContext } from "../../src/model/context.js";
import { dispatchFixture, FakeCpu, sregs } from "../support/dispatch.js";

const { mem, setup } = dispatchFixture();
after(() => mem.release());

const hypercallExit = () => ({
  kind: "io-out" as const,
  port: C.PORT_HYPERCALL,
  size: 4,
  count: 1,
  data: new Uint8Array(4),
});
const debugExit = (code: number) => {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, code, true);
  return { kind: "io-out" as const, port: C.PORT_DEBUG_EXIT, size: 4, count: 1, data };
};

function sealed() {
  const cpu = new FakeCpu();
  cpu.sregsOverride = { ...sregs(0), idt: { base: 0x102000n, limit: 0xfff } };
  const t = setup(undefined, {}, cpu);
  t.d.seal(C.SEAL_IDT | C.SEAL_CR | C.SEAL_MSRS | C.SEAL_GDT);
  return t;
}

describe("sealed state", () => {
  it("leaves an unchanged vCPU alone", () => {
    const { d, events } = sealed();
    assert.deepEqual(d.dispatch(hypercallExit()), { kind: "continue" });
    assert.equal(events.length, 0);
  });

  it("records an IDTR swap as an integrity event and restarts (the default)", () => {
    const { d, cpu, events } = sealed();
    cpu.sregsOverride = { ...(cpu.sregsOverride ?? sregs(0)), idt: { base: 0x180000n, limit: 0xfff } };
    const a = d.dispatch(hypercallExit());
    assert.equal(a.kind === "stop" && a.outcome, "restart");
    assert.deepEqual(
      { kind: events[0]?.kind, object: events[0]?.object, verdict: events[0]?.verdict },
      { kind: "integrity", object: C.INTEGRITY_IDTR, verdict: "restart" },
    );
    assert.match(events[0]?.note ?? "", /IDTR changed from 0x102000\/4095 to 0x180000\/4095/);
  });

  it("records a GDTR swap on object 17", () => {
    const { d, cpu, events } = sealed();
    cpu.sregsOverride = { ...(cpu.sregsOverride ?? sregs(0)), gdt: { base: 0x77000n, limit: 0x37 } };
    assert.equal(d.dispatch(hypercallExit()).kind, "stop");
    assert.equal(events[0]?.object, C.INTEGRITY_GDTR);
    assert.match(events[0]?.note ?? "", /GDTR changed from 0x0\/0 to 0x77000\/55/);
  });

  it("sets a cleared CR0.WP back (deny) and lets the guest go on", () => {
    const { d, cpu, events } = sealed();
    const s = cpu.getSregs();
    cpu.sregsOverride = { ...s, cr0: s.cr0 & ~(1n << 16n) };
    assert.deepEqual(d.dispatch(hypercallExit()), { kind: "continue" });
    assert.equal(events[0]?.kind, "integrity");
    assert.equal(events[0]?.object, C.INTEGRITY_CR0);
    assert.equal(events[0]?.verdict, "deny");
    assert.equal(events[0]?.rule, "restore-pinned-cr");
    assert.equal(cpu.getSregs().cr0 & (1n << 16n), 1n << 16n, "WP is set again");
    d.dispatch(hypercallExit());
    assert.equal(events.length, 1, "nothing more to report once restored");
  });

  it("sets several broken objects back in one go (no restore undoes another)", () => {
    const cpu = new FakeCpu();
    cpu.sregsOverride = { ...sregs(0), idt: { base: 0x102000n, limit: 0xfff } };
    const { d, events } = setup(
      {
        name: "p",
        defaults: FAILSAFE_DEFAULTS,
        rules: [{ name: "fix", kinds: ["integrity"], verdict: "deny", reason: "r" }],
      },
      {},
      cpu,
    );
    d.seal(C.SEAL_IDT | C.SEAL_CR);
    const s = cpu.getSregs();
    cpu.sregsOverride = { ...s, cr0: s.cr0 & ~(1n << 16n), idt: { base: 0x180000n, limit: 0xfff } };
    assert.deepEqual(d.dispatch(hypercallExit()), { kind: "continue" });
    assert.deepEqual(
      events.map((e) => [e.object, e.verdict]),
      [
        [C.INTEGRITY_IDTR, "deny"],
        [C.INTEGRITY_CR0, "deny"],
      ],
    );
    const now = cpu.getSregs();
    assert.deepEqual(now.idt, { base: 0x102000n, limit: 0xfff });
    assert.equal(now.cr0 & (1n << 16n), 1n << 16n);
  });

  it("records the attack's CR0 (WP clear) in a write captured on the exit that restored it", () => {
    const { d, cpu, events } = sealed();
    const s = cpu.getSregs();
    cpu.sregsOverride = { ...s, cr0: s.cr0 & ~(1n << 16n) };
    d.dispatch({ kind: "mmio-write", gpa: 0x100000, len: 1, data: Uint8Array.of(0xcc) });
    assert.deepEqual(
      events.map((e) => [e.kind, e.verdict]),
      [
        ["integrity", "deny"],
        ["protected-write", "deny"],
      ],
    );
    assert.equal(decodeContext(events[1]?.record ?? new Uint8Array()).cr0 & (1n << 16n), 0n);
    assert.equal(cpu.getSregs().cr0 & (1n << 16n), 1n << 16n, "and WP is set again");
  });

  it("checks console output only now and then (every 64th exit)", () => {
    const { d, cpu, events } = sealed();
    cpu.sregsOverride = { ...(cpu.sregsOverride ?? sregs(0)), idt: { base: 0n, limit: 0 } };
    const com1 = { kind: "io-out" as const, port: C.PORT_COM1, size: 1, count: 1, data: Uint8Array.of(0x41) };
    let stops = 0;
    for (let i = 0; i < 63; i++) if (d.dispatch(com1).kind === "stop") stops++;
    assert.equal(events.length, 0);
    if (d.dispatch(com1).kind === "stop") stops++;
    assert.equal(stops, 1);
    assert.equal(events.length, 1);
  });

  it("reports a triple fault as a crash even though the IDTR changed first (the empty IDT caused it)", () => {
    const { d, cpu, events } = sealed();
    cpu.sregsOverride = { ...(cpu.sregsOverride ?? sregs(0)), idt: { base: 0n, limit: 0 } };
    const a = d.dispatch({ kind: "shutdown" });
    assert.equal(a.kind === "stop" && a.outcome, "restart");
    assert.deepEqual(
      events.map((e) => e.kind),
      ["crash"],
    );
  });

  it("does nothing before the guest seals", () => {
    const cpu = new FakeCpu();
    const { d, events } = setup(undefined, {}, cpu);
    cpu.sregsOverride = { ...sregs(0), idt: { base: 0x999000n, limit: 1 } };
    d.dispatch(hypercallExit());
    assert.equal(events.length, 0);
  });
});

describe("crashes and hangs", () => {
  it("turns a reported kernel panic's exit into a crash event (restart by default)", () => {
    const { d, events } = setup();
    d.onGuestReport(14, 0x100123n, "panic");
    const a = d.dispatch(debugExit(0x80 + 14));
    assert.equal(a.kind === "stop" && a.outcome, "restart");
    assert.equal(events[0]?.kind, "crash");
    assert.match(events[0]?.note ?? "", /kernel panic on vector 14 at 0x100123 \(exit code 0x8e\)/);
  });

  it("treats the same exit code without a panic report as a plain exit", () => {
    const { d, events } = setup();
    const a = d.dispatch(debugExit(0x8e));
    assert.deepEqual(a, { kind: "stop", outcome: "exit", code: 0x8e, detail: "guest exited with code 142" });
    assert.equal(events.length, 0);
  });

  it("records a hang and ends the VM per policy", () => {
    const { d, events } = setup();
    const a = d.onHang("no progress");
    assert.equal(a.kind === "stop" && a.outcome, "restart");
    assert.equal(events[0]?.kind, "hang");
    const halting = setup({ name: "h", rules: [], defaults: { ...FAILSAFE_DEFAULTS, hang: "log" } }).d;
    const b = halting.onHang("no progress");
    assert.equal(b.kind === "stop" && b.outcome, "halt", "a hung vCPU cannot just go on");
  });
});
