/**
 * The exit dispatcher: one function from a decoded VM exit to what the vCPU
 * loop does next. Everything it touches (vCPU state, memory, devices, the
 * decider, the event sink) is injected, so unit tests drive it with fake exits.
 *
 * This is the first place an event is seen: the context is captured here,
 * before the guest runs another instruction.
 */
import { CONTEXT_FLAGS, type EventKind, type Verdict } from "../abi/guest-abi.js";
import type { Decider, DecisionResult } from "../decide/decider.js";
import type { IoBus } from "../devices/bus.js";
import type { VcpuExit } from "../kvm/exits.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import { cplOf, type Regs, type Sregs } from "../kvm/structs.js";
import { type ContextRecord, emptyContext, encodeContext } from "./context.js";
import { readVirtual } from "./paging.js";
import type { ProtectionMap } from "./protection.js";

/** The vCPU as the dispatcher sees it. */
export interface CpuAccess {
  getRegs(): Regs;
  setRegs(r: Regs): void;
  getSregs(): Sregs;
  injectException(vector: number, errorCode?: number): void;
  setMsrResult(error: 0 | 1): void;
}

/** One event, as the vCPU thread reports it to the VM's owner. */
export interface CapturedEvent {
  seq: number;
  kind: EventKind;
  vmId: number;
  vcpu: number;
  regionId: number;
  gpa: number;
  rip: bigint;
  verdict: Verdict;
  decidedBy: DecisionResult["decidedBy"];
  rule: string;
  reason: string;
  latencyUs: number;
  /** Host wall-clock time of capture, ms since the epoch. */
  timeMs: number;
  /** The encoded context record (CONTEXT_RECORD layout). */
  record: Uint8Array;
}

export interface EventSink {
  event(e: CapturedEvent): void;
}

export type StopOutcome = "exit" | "crash" | "halt" | "restart";

export type ExitAction = { kind: "continue" } | { kind: "stop"; outcome: StopOutcome; code?: number; detail: string };

const CONTINUE: ExitAction = { kind: "continue" };

export interface DispatcherDeps {
  vmId: number;
  vcpuId: number;
  cpu: CpuAccess;
  memory: GuestMemory;
  protection: ProtectionMap;
  bus: IoBus;
  decider: Decider;
  sink: EventSink;
  /** Monotonic clock in nanoseconds. */
  now?: () => bigint;
}

export interface DispatchStats {
  exits: number;
  io: number;
  mmio: number;
  sharedPageWrites: number;
  unbackedWrites: number;
  unbackedReads: number;
  events: number;
}

export const GP_VECTOR = 13;

export class ExitDispatcher {
  readonly stats: DispatchStats = {
    exits: 0,
    io: 0,
    mmio: 0,
    sharedPageWrites: 0,
    unbackedWrites: 0,
    unbackedReads: 0,
    events: 0,
  };
  private seq = 0;
  private readonly now: () => bigint;

  constructor(private readonly d: DispatcherDeps) {
    this.now = d.now ?? process.hrtime.bigint;
  }

  /** The next event sequence number (per VM, from 1). */
  get lastSeq(): number {
    return this.seq;
  }

  dispatch(exit: VcpuExit): ExitAction {
    const t0 = this.now();
    this.stats.exits++;
    switch (exit.kind) {
      case "io-out": {
        this.stats.io++;
        const a = this.d.bus.out(exit.port, exit.size, exit.count, exit.data);
        return a.kind === "exit"
          ? { kind: "stop", outcome: "exit", code: a.code, detail: `guest exited with code ${a.code}` }
          : CONTINUE;
      }
      case "io-in":
        this.stats.io++;
        this.d.bus.in(exit.port, exit.size, exit.count, exit.data);
        return CONTINUE;
      case "mmio-write":
        this.stats.mmio++;
        return this.onWrite(exit.gpa, exit.data, t0);
      case "mmio-read":
        this.stats.mmio++;
        if (this.d.memory.contains(exit.gpa, exit.len)) exit.data.set(this.d.memory.slice(exit.gpa, exit.len));
        else {
          this.stats.unbackedReads++;
          exit.data.fill(0xff);
        }
        return CONTINUE;
      case "hlt":
        return { kind: "stop", outcome: "halt", detail: "the guest halted the CPU" };
      case "shutdown":
        return { kind: "stop", outcome: "crash", detail: "triple fault (KVM_EXIT_SHUTDOWN)" };
      case "internal-error":
        return { kind: "stop", outcome: "crash", detail: `KVM internal error, suberror ${exit.suberror}` };
      case "fail-entry":
        return { kind: "stop", outcome: "crash", detail: `VM entry failed, reason 0x${exit.reason.toString(16)}` };
      case "system-event":
        return { kind: "stop", outcome: "crash", detail: `system event ${exit.type}` };
      case "msr-write":
      case "msr-read":
        // No MSR filter is installed, so these are unexpected: refuse with #GP.
        this.d.cpu.setMsrResult(1);
        return CONTINUE;
      case "debug":
      case "interrupted":
        return CONTINUE;
      case "unknown":
        return { kind: "stop", outcome: "crash", detail: `unhandled exit reason ${exit.reason}` };
    }
  }

  /** A write that hit a read-only page (or no RAM at all). */
  private onWrite(gpa: number, data: Uint8Array, t0: bigint): ExitAction {
    const target = this.d.protection.classifyWrite(gpa, data.length);
    switch (target.kind) {
      case "shared-page":
      case "writable":
        // Unprotected bytes on a read-only page: perform the write for the guest.
        this.stats.sharedPageWrites++;
        this.d.memory.write(gpa, data);
        return CONTINUE;
      case "unbacked":
        this.stats.unbackedWrites++;
        return CONTINUE;
      case "protected": {
        const ctx = this.capture("protected-write");
        ctx.gpa = gpa;
        ctx.regionId = target.region.id;
        ctx.regionOffset = target.offset;
        ctx.data = data.slice(0, 8);
        const decision = this.d.decider.decide(ctx);
        const action = this.apply(decision.verdict, () => this.d.memory.write(gpa, data));
        this.report(ctx, decision, t0);
        return action;
      }
    }
  }

  /** First-time capture: registers, control registers and instruction bytes. */
  capture(kind: EventKind): ContextRecord {
    const regs = this.d.cpu.getRegs();
    const sregs = this.d.cpu.getSregs();
    const ctx = emptyContext(kind);
    ctx.seq = ++this.seq;
    ctx.vmId = this.d.vmId;
    ctx.vcpu = this.d.vcpuId;
    ctx.regs = regs;
    ctx.cpl = cplOf(sregs);
    ctx.cr0 = sregs.cr0;
    ctx.cr2 = sregs.cr2;
    ctx.cr3 = sregs.cr3;
    ctx.cr4 = sregs.cr4;
    ctx.efer = sregs.efer;
    ctx.insn = readVirtual(this.d.memory, sregs.cr3, regs.rip, 16);
    if (ctx.insn.length > 0) ctx.flags |= CONTEXT_FLAGS.INSN_VALID;
    return ctx;
  }

  /** Carry out a verdict. `perform` does what the guest attempted. */
  private apply(verdict: Verdict, perform: () => void): ExitAction {
    switch (verdict) {
      case "allow":
      case "log":
        perform();
        return CONTINUE;
      case "deny":
        return CONTINUE;
      case "deny-fault":
      case "kill-task":
        this.d.cpu.injectException(GP_VECTOR, 0);
        return CONTINUE;
      case "pause":
      case "halt":
        return { kind: "stop", outcome: "halt", detail: `halted by verdict ${verdict}` };
      case "restart":
        return { kind: "stop", outcome: "restart", detail: "restart by verdict" };
    }
  }

  private report(ctx: ContextRecord, decision: DecisionResult, t0: bigint): void {
    this.stats.events++;
    const latencyUs = Number(this.now() - t0) / 1000;
    this.d.sink.event({
      seq: ctx.seq,
      kind: ctx.kind,
      vmId: ctx.vmId,
      vcpu: ctx.vcpu,
      regionId: ctx.regionId,
      gpa: ctx.gpa,
      rip: ctx.regs.rip,
      verdict: decision.verdict,
      decidedBy: decision.decidedBy,
      rule: decision.rule,
      reason: decision.reason,
      latencyUs,
      timeMs: Date.now(),
      record: encodeContext(ctx),
    });
  }
}
