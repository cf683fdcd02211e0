import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { VmmDecider } from "../../src/decide/decider.js";
import { compilePolicy, DEFAULT_POLICY, FAILSAFE_DEFAULTS, type Policy } from "../../src/decide/policy.js";
import { GuestMemory } from "../../src/kvm/guest-memory.js";
import { type Regs, zeroRegs } from "../../src/kvm/structs.js";
import {
  kernelProtectedRanges,
  kernelVirtual,
  rangeOffset,
  readKernelElf,
  symbolize,
} from "../../src/linux/kernel-ranges.js";
import { LinuxSeal, MAX_POSTED_EVENTS } from "../../src/linux/linux-seal.js";
import { parseSystemMap } from "../../src/linux/system-map.js";
import { decodeContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";
import type { CapturedEvent } from "../../src/vmm/dispatcher.js";
import { ProtectionMap, type SlotPlan } from "../../src/vmm/protection.js";
import type { ProtectionArmed } from "../../src/vmm/vcpu-protocol.js";
import { sregs } from "../support/dispatch.js";
import { code, fakeKernelElf, fakeLinuxKernel, k } from "./linux-fixtures.js";

const MIB = 1024 * 1024;
const MEM = 32 * MIB;

const MAP = [
  "ffffffff81000000 T _text",
  "ffffffff81000000 T startup_64",
  "ffffffff81050000 T text_poke",
  "ffffffff81101d32 T _etext",
  "ffffffff81200000 R __start_rodata",
  "ffffffff81200100 R sys_call_table",
  "ffffffff81235000 R __end_rodata",
].join("\n");

describe("the kernel ranges to seal", () => {
  it("come from the section headers: [_text, _etext) and [__start_rodata, __end_rodata) at physical addresses", () => {
    const r = kernelProtectedRanges(fakeLinuxKernel(), MEM);
    assert.equal(r.source, "elf");
    assert.deepEqual(
      r.ranges.map((x) => [x.name, x.start, x.end, x.vstart]),
      [
        // .text exactly: its last page is shared with the padding after _etext.
        [".text", 0x1000000, 0x1101d32, k(0x1000000)],
        // .rodata through .BTF (the last section of the segment), rounded up to the page as __end_rodata is.
        [".rodata", 0x1200000, 0x1235000, k(0x1200000)],
      ],
    );
    assert.deepEqual(r.mismatches, []);
  });

  it("leave the text/rodata gap and .data writable; the read-only slots round the ranges out to pages", () => {
    const r = kernelProtectedRanges(fakeLinuxKernel(), MEM);
    const map = new ProtectionMap(makeRegions(r.ranges, MEM), MEM);
    assert.equal(map.classifyWrite(0x1101d30, 2).kind, "protected");
    assert.equal(map.classifyWrite(0x1101d32, 2).kind, "shared-page");
    assert.equal(map.classifyWrite(0x1102000, 8).kind, "writable"); // the gap Linux frees
    assert.equal(map.classifyWrite(0x1234ff8, 8).kind, "protected");
    assert.equal(map.classifyWrite(0x1235000, 8).kind, "writable");
    assert.equal(map.classifyWrite(0x1400000, 8).kind, "writable"); // .data
  });

  it("come from a System.map when given, with what differs from the section headers", () => {
    const same = kernelProtectedRanges(fakeLinuxKernel(), MEM, parseSystemMap(MAP));
    assert.equal(same.source, "system-map");
    assert.deepEqual(same.mismatches, []);
    const other = MAP.replace("ffffffff81101d32 T _etext", "ffffffff81101000 T _etext");
    const r = kernelProtectedRanges(fakeLinuxKernel(), MEM, parseSystemMap(other));
    assert.equal(r.ranges[0]?.end, 0x1101000);
    assert.deepEqual(r.mismatches, ["_etext: System.map 0xffffffff81101000, section headers 0xffffffff81101d32"]);
    assert.throws(
      () => kernelProtectedRanges(fakeLinuxKernel(), MEM, parseSystemMap("ffffffff81000000 T _text")),
      code("LINUX_SYSTEM_MAP_INVALID"),
    );
  });

  it("name offsets and symbols", () => {
    const r = kernelProtectedRanges(fakeLinuxKernel(), MEM).ranges;
    assert.equal(rangeOffset(r, 0x1000010), ".text+0x10");
    assert.equal(rangeOffset(r, 0x1200108), ".rodata+0x108");
    assert.equal(rangeOffset(r, 0x1300000), undefined);
    assert.equal(kernelVirtual(r, 0x1200108), k(0x1200108));
    const map = parseSystemMap(MAP);
    assert.equal(symbolize(map, k(0x1200108)), "sys_call_table+0x8");
    assert.equal(symbolize(map, k(0x1050003)), "text_poke+0x3");
    assert.equal(symbolize(map, 0x1000n), undefined);
  });

  it("reject what does not fit guest RAM, a segment or a page, and broken headers", () => {
    assert.throws(() => kernelProtectedRanges(fakeLinuxKernel(), 0x1100000), code("LINUX_IMAGE_INVALID"));
    const text = { name: ".text", addr: k(0x1000000), size: 0x1000, flags: 0x6 };
    const seg = { vaddr: k(0x1000000), paddr: 0x1000000, memsz: 0x3000 };
    const rodata = { name: ".rodata", addr: k(0x1002000), size: 0x100 };
    assert.ok(kernelProtectedRanges(fakeKernelElf([seg], [text, rodata]), MEM));
    // .rodata past every segment
    assert.throws(
      () => kernelProtectedRanges(fakeKernelElf([seg], [text, { ...rodata, addr: k(0x1100000) }]), MEM),
      /is in no loadable segment/,
    );
    // not page-aligned
    assert.throws(
      () => kernelProtectedRanges(fakeKernelElf([seg], [text, { ...rodata, addr: k(0x1002010) }]), MEM),
      /not on a page boundary/,
    );
    // no .text, two .rodata
    assert.throws(() => kernelProtectedRanges(fakeKernelElf([seg], [rodata]), MEM), /0 \.text sections/);
    assert.throws(() => kernelProtectedRanges(fakeKernelElf([seg], [text, rodata, rodata]), MEM), /2 \.rodata/);
    // header fields past the file
    const bytes = fakeKernelElf([seg], [text, rodata]);
    const cut = bytes.slice(0, bytes.length - 10);
    assert.throws(() => readKernelElf(cut), /section headers .* do not fit/);
    const bad = bytes.slice();
    new DataView(bad.buffer).setUint16(60, 0, true);
    assert.throws(() => readKernelElf(bad), /no section headers/);
    assert.throws(() => readKernelElf(new Uint8Array(10)), code("LINUX_IMAGE_INVALID"));
  });
});

describe("the seal of a Linux guest", () => {
  const mem = GuestMemory.allocate(MEM);
  after(() => mem.release());
  const regions = makeRegions(kernelProtectedRanges(fakeLinuxKernel(), MEM).ranges, MEM);

  function setup(policy: Policy = DEFAULT_POLICY) {
    const cpu = { cpl: 0, regs: { ...zeroRegs(), rip: k(0x1050010) } as Regs };
    const out = { slots: [] as SlotPlan[][], events: [] as CapturedEvent[], armed: [] as ProtectionArmed[] };
    let t = 0n;
    const seal = new LinuxSeal({
      vmId: 0,
      vcpuId: 0,
      regions,
      memory: mem,
      getRegs: () => cpu.regs,
      getSregs: () => sregs(cpu.cpl),
      reslot: (plan) => out.slots.push([...plan]),
      decider: new VmmDecider(compilePolicy(policy, regions)),
      event: (e) => out.events.push(e),
      armed: (a) => out.armed.push(a),
      locate: () => undefined,
      now: () => {
        t += 1000n;
        return t;
      },
    });
    return { seal, cpu, out };
  }

  it("is armed at the first check in ring 3, once, and splits RAM into read-only slots over the ranges", () => {
    mem.write(0x1000000, Uint8Array.of(0x48, 0x8d, 0x25));
    const { seal, cpu, out } = setup();
    assert.equal(seal.check(10), false);
    assert.equal(seal.check(11), false);
    assert.equal(out.slots.length, 0);
    cpu.cpl = 3;
    assert.equal(seal.check(12), true);
    assert.equal(seal.check(13), false);
    assert.equal(seal.armed, true);
    assert.deepEqual(out.slots, [
      [
        { gpa: 0, size: 0x1000000, readonly: false },
        { gpa: 0x1000000, size: 0x102000, readonly: true },
        { gpa: 0x1102000, size: 0xfe000, readonly: false },
        { gpa: 0x1200000, size: 0x35000, readonly: true },
        { gpa: 0x1235000, size: MEM - 0x1235000, readonly: false },
      ],
    ]);
    const a = out.armed[0];
    assert.ok(a);
    assert.equal(out.armed.length, 1);
    assert.equal(a.exits, 12);
    assert.equal(a.cpl, 3);
    assert.equal(a.protectedBytes, 0x101d32 + 0x35000);
    assert.equal(a.readOnlyBytes, 0x102000 + 0x35000);
    assert.deepEqual(a.hashes, new ProtectionMap(regions, MEM).hash(mem));
    assert.equal(seal.counters.armChecks, 3);
  });

  it("leaves writes alone before it is armed", () => {
    const { seal } = setup();
    assert.equal(seal.onWrite(0x1000000, Uint8Array.of(0xcc)), undefined);
  });

  it("denies a write to sealed text: dropped, the guest goes on, one event naming the section and offset", () => {
    mem.write(0x1000010, Uint8Array.of(1, 2, 3, 4));
    const { seal, cpu, out } = setup();
    cpu.cpl = 3;
    seal.check(1);
    cpu.cpl = 0;
    const action = seal.onWrite(0x1000010, Uint8Array.of(0xe9, 0, 0, 0));
    assert.deepEqual(action, { kind: "continue" });
    assert.deepEqual([...mem.slice(0x1000010, 4)], [1, 2, 3, 4]);
    assert.equal(out.events.length, 1);
    const e = out.events[0] as CapturedEvent;
    assert.equal(e.kind, "protected-write");
    assert.equal(e.verdict, "deny");
    assert.equal(e.rule, "protect-kernel-regions");
    assert.equal(e.regionId, 1);
    assert.equal(e.gpa, 0x1000010);
    assert.equal(e.rip, k(0x1050010));
    assert.match(e.note ?? "", /^\.text\+0x10; cpl 0; cr3 0x1000; 4 bytes e9000000; writer not found/);
    const c = decodeContext(e.record);
    assert.equal(c.regionOffset, 0x10);
    assert.equal(c.cpl, 0);
    assert.deepEqual([...c.data], [0xe9, 0, 0, 0]);
    assert.equal(seal.counters.protectedWrites, 1);
  });

  it("performs writes to unprotected bytes of a read-only page, and ignores writable memory", () => {
    const { seal, cpu, out } = setup();
    cpu.cpl = 3;
    seal.check(1);
    assert.deepEqual(seal.onWrite(0x1101d40, Uint8Array.of(7, 7)), { kind: "continue" });
    assert.deepEqual([...mem.slice(0x1101d40, 2)], [7, 7]);
    assert.equal(seal.onWrite(0x1300000, Uint8Array.of(1)), undefined);
    assert.equal(seal.onWrite(MEM + 0x1000, Uint8Array.of(1)), undefined);
    assert.equal(out.events.length, 0);
    assert.equal(seal.counters.sharedPageWrites, 1);
  });

  it("follows the policy: allow performs the write, restart ends the run, and the writer is named when found", () => {
    const allow: Policy = {
      name: "a",
      defaults: FAILSAFE_DEFAULTS,
      rules: [{ name: "ok", verdict: "allow", reason: "r" }],
    };
    const a = setup(allow);
    a.cpu.cpl = 3;
    a.seal.check(1);
    assert.deepEqual(a.seal.onWrite(0x1200100, Uint8Array.of(9)), { kind: "continue" });
    assert.equal(mem.slice(0x1200100, 1)[0], 9);
    assert.equal(a.out.events[0]?.verdict, "allow");
    assert.equal(a.seal.counters.performedWrites, 1);

    const restart: Policy = { ...allow, rules: [{ name: "rs", verdict: "restart", reason: "r" }] };
    const r = setup(restart);
    r.cpu.cpl = 3;
    r.seal.check(1);
    assert.equal(r.seal.onWrite(0x1200100, Uint8Array.of(1))?.kind, "stop");

    const located = new LinuxSeal({
      vmId: 0,
      vcpuId: 0,
      regions,
      memory: mem,
      getRegs: () => ({ ...zeroRegs(), rip: k(0x1050013) }),
      getSregs: () => sregs(3),
      reslot: () => {},
      decider: new VmmDecider(compilePolicy(DEFAULT_POLICY, regions)),
      event: (e) => {
        assert.equal(e.rip, k(0x1050010));
        assert.match(e.note ?? "", /writer 0xffffffff81050010/);
      },
      armed: () => {},
      locate: () => ({
        site: { rip: k(0x1050010), length: 3 },
        write: { va: k(0x1000000), size: 1 },
        offset: 0,
        repeating: false,
        element: 1,
        before: {},
      }),
    });
    located.check(0);
    located.onWrite(0x1000000, Uint8Array.of(1));
  });

  it("keeps memory bounded: past MAX_POSTED_EVENTS events are counted, not posted", () => {
    const { seal, cpu, out } = setup();
    cpu.cpl = 3;
    seal.check(1);
    for (let i = 0; i < MAX_POSTED_EVENTS + 5; i++) seal.onWrite(0x1000000 + i, Uint8Array.of(0));
    assert.equal(out.events.length, MAX_POSTED_EVENTS);
    assert.equal(seal.counters.protectedWrites, MAX_POSTED_EVENTS + 5);
    assert.equal(seal.counters.eventsNotPosted, 5);
  });
});
