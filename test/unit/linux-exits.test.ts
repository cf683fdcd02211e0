/** What a Linux guest's exits mean, driven with fake exits. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { IoBus } from "../../src/devices/bus.js";
import { DebugExit } from "../../src/devices/debug-exit.js";
import { I8042 } from "../../src/devices/pc-platform.js";
import { GuardvisorError } from "../../src/errors.js";
import { zeroRegs } from "../../src/kvm/structs.js";
import { emulationFailureBytes, LinuxExitHandler } from "../../src/linux/linux-exits.js";
import { parseSystemMap } from "../../src/linux/system-map.js";

function handler() {
  let reset = false;
  const bus = new IoBus();
  bus.register(new DebugExit());
  bus.register(
    new I8042(() => {
      reset = true;
      return { kind: "exit", code: 0 };
    }),
  );
  const regs = { ...zeroRegs(), rip: 0xffffffff81000000n };
  const log: string[] = [];
  const h = new LinuxExitHandler({
    bus,
    getRegs: () => ({ ...regs }),
    setRegs: (r) => {
      regs.rip = r.rip;
      regs.rflags = r.rflags;
      log.push(`rip=${r.rip.toString(16)}`);
    },
    setMsrResult: (e) => log.push(`msr=${e}`),
    injectException: (v) => log.push(`inject=${v}`),
    cancelException: (v) => log.push(`cancel=${v}`),
    resetRequested: () => reset,
  });
  return { h, log, regs };
}

/** The kvm_run data of an emulation failure: flags, then size and bytes packed little-endian. */
function emulationData(bytes: number[]): bigint[] {
  const raw = new Uint8Array(16);
  raw[0] = bytes.length;
  raw.set(bytes, 1);
  const v = new DataView(raw.buffer);
  return [1n, v.getBigUint64(0, true), v.getBigUint64(8, true)];
}

describe("Linux exits", () => {
  it("an i8042 reset ends the run as a reset; the debug-exit port as an exit with its code", () => {
    const { h } = handler();
    assert.deepEqual(h.dispatch({ kind: "io-out", port: 0x80, size: 1, count: 1, data: Uint8Array.of(0) }), {
      kind: "continue",
    });
    const r = h.dispatch({ kind: "io-out", port: 0x64, size: 1, count: 1, data: Uint8Array.of(0xfe) });
    assert.equal(r.kind === "stop" && r.outcome, "restart");
    const e = handler().h.dispatch({ kind: "io-out", port: 0xf4, size: 4, count: 1, data: Uint8Array.of(7, 0, 0, 0) });
    assert.equal(e.kind === "stop" && e.outcome, "exit");
    assert.equal(e.kind === "stop" && e.code, 7);
  });

  it("unbacked MMIO reads float high; unknown ports read all-ones and are counted", () => {
    const { h } = handler();
    const data = new Uint8Array(4);
    h.dispatch({ kind: "mmio-read", gpa: 0xfed00000, len: 4, data });
    assert.deepEqual([...data], [0xff, 0xff, 0xff, 0xff]);
    const port = new Uint8Array(1);
    h.dispatch({ kind: "io-in", port: 0x2f8, size: 1, count: 1, data: port });
    assert.equal(port[0], 0xff);
    assert.equal(h.counters.unhandledIn, 1);
    assert.equal(h.counters.exits, 2);
  });

  it("a triple fault and an emulation failure are crashes naming the RIP", () => {
    const r = handler().h.dispatch({ kind: "shutdown" });
    assert.equal(r.kind === "stop" && r.outcome, "crash");
    assert.match(r.kind === "stop" ? r.detail : "", /triple fault .* at RIP 0xffffffff81000000/);
    const u = handler().h.dispatch({
      kind: "internal-error",
      suberror: 1,
      data: emulationData([0x48, 0x0f, 0xae, 0x2f]),
    });
    assert.equal(u.kind === "stop" && u.outcome, "crash");
    assert.match(u.kind === "stop" ? u.detail : "", /suberror 1/);
  });

  it("an INT3 the emulator failed on becomes #BP after the instruction, with KVM's #UD withdrawn", () => {
    const { h, log } = handler();
    const r = h.dispatch({ kind: "internal-error", suberror: 1, data: emulationData([0xcc, 0x90, 0x90]) });
    assert.deepEqual(r, { kind: "continue" });
    assert.deepEqual(log, ["cancel=6", "rip=ffffffff81000001", "inject=3"]);
    assert.equal(h.counters.int3, 1);
  });

  it("a CLAC or STAC the emulator failed on clears or sets RFLAGS.AC and steps over it", () => {
    const { h, log, regs } = handler();
    const AC = 1n << 18n;
    regs.rflags = 0x2n | AC;
    assert.deepEqual(h.dispatch({ kind: "internal-error", suberror: 1, data: emulationData([0x0f, 0x01, 0xca]) }), {
      kind: "continue",
    });
    assert.deepEqual(log, ["cancel=6", "rip=ffffffff81000003"]);
    assert.equal(regs.rflags, 0x2n);
    h.dispatch({ kind: "internal-error", suberror: 1, data: emulationData([0x0f, 0x01, 0xcb]) });
    assert.equal(regs.rflags, 0x2n | AC);
    assert.equal(regs.rip, 0xffffffff81000006n);
    assert.equal(h.counters.clacStac, 2);
  });

  it("reads the instruction bytes of an emulation failure only when KVM flags them", () => {
    assert.deepEqual([...emulationFailureBytes(emulationData([0xf0, 0x48, 0x0f, 0xc7]))], [0xf0, 0x48, 0x0f, 0xc7]);
    assert.deepEqual([...emulationFailureBytes([0n, 0xffffn])], []);
    assert.deepEqual([...emulationFailureBytes([1n, 0xffn])], [0, 0, 0, 0, 0, 0, 0]); // size capped to the data
  });

  it("an MSR exit is answered with #GP", () => {
    const { h, log } = handler();
    h.dispatch({ kind: "msr-read", index: 0x1234 });
    assert.deepEqual(log, ["msr=1"]);
  });
});

describe("System.map", () => {
  it("reads address, type and name lines, sorted by address", () => {
    const m = parseSystemMap(
      "ffffffff81000100 T start_kernel\nffffffff81000000 T _text\r\n\nffffffff82000000 D init_task\n",
    );
    assert.deepEqual(
      m.symbols.map((s) => s.name),
      ["_text", "start_kernel", "init_task"],
    );
    assert.equal(m.byName.get("start_kernel")?.address, 0xffffffff81000100n);
    assert.equal(m.byName.get("init_task")?.type, "D");
    // /proc/kallsyms lines carry a module.
    assert.equal(parseSystemMap("ffffffffc0000000 t foo\t[bar]\n").symbols[0]?.name, "foo");
  });

  it("rejects bad lines with their line number, and Debian's placeholder by name", () => {
    const bad = (text: string, p: RegExp) =>
      assert.throws(
        () => parseSystemMap(text, "map"),
        (e: unknown) => e instanceof GuardvisorError && e.code === "LINUX_SYSTEM_MAP_INVALID" && p.test(e.message),
      );
    bad("ffffffff81000000 T _text\nnot a line\n", /map:2: expected "ADDRESS TYPE NAME"/);
    bad("1ffffffff81000000 T too_long_address\n", /map:1:/);
    bad("ffffffff81000000 TT x\n", /map:1:/);
    bad("", /no symbols/);
    bad(`ffffffff81000000 T ${"a".repeat(600)}\n`, /longer than 512/);
    bad("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n", /placeholder/);
  });
});
