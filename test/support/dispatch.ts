/**
 * Test support: an exit dispatcher wired to a fake vCPU, real guest memory,
 * the real port devices and the in-VMM decider, so tests drive it with fake
 * exits and look at what it did.
 */
import { VmmDecider } from "../../src/decide/decider.js";
import { compilePolicy, DEFAULT_POLICY, type Policy } from "../../src/decide/policy.js";
import { IoBus } from "../../src/devices/bus.js";
import { DebugExit } from "../../src/devices/debug-exit.js";
import { Hypercalls } from "../../src/devices/hypercall.js";
import { Serial } from "../../src/devices/serial.js";
import { GuestMemory } from "../../src/kvm/guest-memory.js";
import { type Regs, type Sregs, zeroRegs } from "../../src/kvm/structs.js";
import { makeRegions } from "../../src/model/regions.js";
import {
  type CapturedEvent,
  type CpuAccess,
  type DispatcherDeps,
  ExitDispatcher,
  type GuestReport,
} from "../../src/vmm/dispatcher.js";
import { ProtectionMap } from "../../src/vmm/protection.js";

export function sregs(cpl: number): Sregs {
  const seg = {
    base: 0n,
    limit: 0,
    selector: 0,
    type: 0,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 0,
  };
  return {
    cs: { ...seg, selector: cpl === 3 ? 0x23 : 0x08 },
    ds: seg,
    es: seg,
    fs: seg,
    gs: seg,
    ss: seg,
    tr: seg,
    ldt: seg,
    gdt: { base: 0n, limit: 0 },
    idt: { base: 0n, limit: 0 },
    cr0: 0x80050033n,
    cr2: 0n,
    cr3: 0x1000n,
    cr4: 0x620n,
    cr8: 0n,
    efer: 0xd01n,
    apicBase: 0n,
  };
}

export class FakeCpu implements CpuAccess {
  regs: Regs = zeroRegs();
  cpl = 0;
  cr2 = 0n;
  injected: Array<[number, number | undefined]> = [];
  msrResult: number | undefined;
  msrs = new Map<number, bigint>();
  debug: Array<{ control: number; regs: readonly bigint[] }> = [];
  getRegs = () => ({ ...this.regs });
  setRegs = (r: Regs) => {
    this.regs = { ...r };
  };
  sregsOverride: Sregs | undefined;
  getSregs = () => this.sregsOverride ?? { ...sregs(this.cpl), cr2: this.cr2 };
  setSregs = (s: Sregs) => {
    this.sregsOverride = { ...s };
  };
  injectException = (v: number, e?: number) => {
    this.injected.push([v, e]);
  };
  /** An exception KVM queued with the exit (tests set it), and what the VMM withdrew. */
  queued: number | undefined;
  cancelException = (v: number) => {
    if (this.queued === v) this.queued = undefined;
  };
  setMsrResult = (e: 0 | 1) => {
    this.msrResult = e;
  };
  /** As KVM does, refuses a non-canonical address for the MSRs that hold one. */
  setMsr = (i: number, v: bigint) => {
    const canonical = v < 1n << 47n || v >= 0xffff_8000_0000_0000n;
    if ([0xc0000082, 0xc0000083, 0x175, 0x176].includes(i) && !canonical) return false;
    this.msrs.set(i, v);
    return true;
  };
  setGuestDebug = (control: number, regs: readonly bigint[] = []) => {
    this.debug.push({ control, regs });
  };
}

export const MEM = 4 << 20;

/** Guest memory with protected regions (by default .text [0x100000, 0x100800)) and a dispatcher factory. */
export function dispatchFixture(protectedRanges = [{ name: ".text", start: 0x100000, end: 0x100800 }]) {
  const mem = GuestMemory.allocate(MEM);
  const regions = makeRegions(protectedRanges, MEM);
  function setup(policy: Policy = DEFAULT_POLICY, extra: Partial<DispatcherDeps> = {}, cpu = new FakeCpu()) {
    const events: CapturedEvent[] = [];
    const reports: GuestReport[] = [];
    const lines: string[] = [];
    const bus = new IoBus();
    bus.register(new Serial((l) => lines.push(l)));
    bus.register(new DebugExit());
    bus.register(new Hypercalls({ ...cpu, cpl: () => cpu.cpl }));
    let clock = 1000n;
    const d = new ExitDispatcher({
      vmId: 7,
      vcpuId: 0,
      cpu,
      memory: mem,
      protection: new ProtectionMap(regions, MEM),
      bus,
      decider: new VmmDecider(compilePolicy(policy, regions)),
      sink: { event: (e) => events.push(e), guestReport: (r) => reports.push(r) },
      now: () => (clock += 2500n),
      ...extra,
    });
    return { d, cpu, events, reports, lines };
  }
  return { mem, regions, setup };
}
