/**
 * The exit dispatcher: one function from a decoded VM exit to what the vCPU
 * loop does next. Everything it touches (vCPU state, memory, devices, the
 * decider, the event sink) is injected, so unit tests drive it with fake exits.
 *
 * This is the first place an event is seen: the context is captured here,
 * before the guest runs another instruction.
 */
import { ABI_CONSTANTS, CONTEXT_FLAGS, type EventKind, type Verdict } from "../abi/guest-abi.js";
import type { Decider, DecisionResult } from "../decide/decider.js";
import type { IoBus } from "../devices/bus.js";
import type { VcpuExit } from "../kvm/exits.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import { cplOf, type Regs, type Sregs } from "../kvm/structs.js";
import { type ContextRecord, capturedContext, encodeContext } from "../model/context.js";
import type { ProtectedRegion } from "../model/regions.js";
import { type Effect, effectOf, type VmFate } from "./act.js";
import type { ExceptionCapture } from "./exception-capture.js";
import { decodeExceptionFrame } from "./frame.js";
import { pageParts, readVirtual, translate } from "./paging.js";
import type { VirtualRange } from "./paging-seal.js";
import type { ProtectionMap } from "./protection.js";
import { SealState } from "./seal-state.js";
import { StorePieces } from "./store-pieces.js";
import { type LocatedStore, locateStore, preloadWriteLocator, storesAt } from "./write-site.js";

/** The vCPU as the dispatcher sees it. */
export interface CpuAccess {
  getRegs(): Regs;
  setRegs(r: Regs): void;
  getSregs(): Sregs;
  setSregs(s: Sregs): void;
  injectException(vector: number, errorCode?: number): void;
  /** Withdraw an exception KVM queued for the guest, when it is `vector`. */
  cancelException(vector: number): void;
  setMsrResult(error: 0 | 1): void;
  /** KVM_SET_MSRS for one MSR (an allowed write to a filtered MSR). */
  /** Write an MSR; false when KVM refuses the value (a non-canonical address, reserved bits). */
  setMsr(index: number, value: bigint): boolean;
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
  /** CPU exception vector (cpu-exception), else 0. */
  vector: number;
  /** The sealed object that changed (integrity: INTEGRITY_*), else 0. */
  object: number;
  /** The MSR written (msr-write), else 0. */
  msrIndex: number;
  /** What else the VMM noticed (e.g. a hostile exception frame). */
  note?: string;
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

/** What the guest's own exception module says it did with an exception (HC_REPORT_EXCEPTION). */
export type GuestAction = "task-killed" | "panic" | "handled" | "unknown";

export interface GuestReport {
  /** The captured event it matches; undefined when the VMM captured no such exception. */
  seq: number | undefined;
  vector: number;
  rip: bigint;
  action: GuestAction;
}

export interface EventSink {
  event(e: CapturedEvent): void;
  guestReport?(r: GuestReport): void;
}

export type StopOutcome = "exit" | "crash" | "halt" | "restart";

export type ExitAction =
  | { kind: "continue" }
  /** Park the vCPU until the VM's owner resumes it (the `pause` verdict). */
  | { kind: "pause"; detail: string }
  | { kind: "stop"; outcome: StopOutcome; code?: number; detail: string };

const CONTINUE: ExitAction = { kind: "continue" };

/** How a stop says a verdict asked for a restart (not the guest resetting itself). */
export const RESTART_BY_VERDICT = "restart by verdict";

/** What the vCPU does next, from a verdict's fate for the VM (`what` names the event in the detail). */
export function fateAction(fate: VmFate, what: string, crashDetail = what): ExitAction {
  switch (fate) {
    case "runs":
      return CONTINUE;
    case "paused":
      return { kind: "pause", detail: `${what}: paused by verdict` };
    case "halted":
      return { kind: "stop", outcome: "halt", detail: `${what}: halted by verdict` };
    case "restarted":
      return { kind: "stop", outcome: "restart", detail: `${what}: ${RESTART_BY_VERDICT}` };
    case "crashed":
      return { kind: "stop", outcome: "crash", detail: crashDetail };
  }
}

/**
 * Several sealed objects found changed on one exit: the first object's ending
 * decides, and a pause yields to a stop. `end` so far, `action` the next one's.
 */
export function strongerEnding(end: ExitAction | undefined, action: ExitAction): ExitAction | undefined {
  if (action.kind === "continue") return end;
  return end === undefined || (end.kind === "pause" && action.kind === "stop") ? action : end;
}

export interface DispatcherDeps {
  vmId: number;
  vcpuId: number;
  cpu: CpuAccess;
  memory: GuestMemory;
  protection: ProtectionMap;
  bus: IoBus;
  decider: Decider;
  sink: EventSink;
  /** Hardware-breakpoint capture on the guest's exception entry, when the entry is known. */
  exceptions?: ExceptionCapture;
  /** MSRs whose writes the MSR filter sends here. */
  protectedMsrs?: ReadonlySet<number>;
  /** The protected regions' virtual addresses (kernel mapping): their translation is pinned by HC_SEAL paging. */
  protectedVirtual?: readonly VirtualRange[];
  /** Monotonic clock in nanoseconds. */
  now?: () => bigint;
  /** Events the guest had before this VM (earlier incarnations): numbering goes on from there. */
  firstSeq?: number;
}

export interface DispatchStats {
  exits: number;
  io: number;
  mmio: number;
  sharedPageWrites: number;
  unbackedWrites: number;
  unbackedReads: number;
  events: number;
  exceptions: number;
  guestReports: number;
  msrWritesBeforeSeal: number;
  /** Debug exits while stepping over the entry that were not the step: the breakpoint was re-armed early. */
  captureStepsLost: number;
  /** Page-table entries the paging seal pins (checked on exits). */
  pinnedEntries: number;
}

export const GP_VECTOR = 13;
export const DB_VECTOR = 1;
/** KVM_INTERNAL_ERROR_EMULATION: KVM could not emulate the instruction at RIP. */
const KVM_INTERNAL_ERROR_EMULATION = 1;
/** #UD: what KVM queues for the guest on an emulation failure. */
const UD_VECTOR = 6;
/** The longest store whose physical extent a context records (longer: the piece, unbounded). */
const MAX_EXTENT = 64 * 1024;
const CR4_PGE = 1n << 7n;

export class ExitDispatcher {
  readonly stats: DispatchStats = {
    exits: 0,
    io: 0,
    mmio: 0,
    sharedPageWrites: 0,
    unbackedWrites: 0,
    unbackedReads: 0,
    events: 0,
    exceptions: 0,
    guestReports: 0,
    msrWritesBeforeSeal: 0,
    captureStepsLost: 0,
    pinnedEntries: 0,
  };
  private seq = 0;
  /** What the guest sealed (HC_SEAL), and the check for what changed since. */
  private readonly sealState: SealState;
  /** The guest's exception module reported a panic (its next debug exit is a crash). */
  private panicked: { vector: number; rip: bigint } | undefined;
  /** Recent captured exceptions not yet reported by the guest: matched by vector and RIP. */
  private readonly unreported: { seq: number; vector: number; rip: bigint; endTask: boolean }[] = [];
  /** Faults Guardvisor raised for a kill-task verdict, not yet asked about by the guest (HC_EXCEPTION_VERDICT). */
  private readonly endTaskFaults: { vector: number; rip: bigint }[] = [];
  private readonly now: () => bigint;
  private readonly pieces: StorePieces;

  constructor(private readonly d: DispatcherDeps) {
    preloadWriteLocator();
    this.now = d.now ?? process.hrtime.bigint;
    this.sealState = new SealState(d.memory, d.protectedVirtual);
    this.seq = d.firstSeq ?? 0;
    this.pieces = new StorePieces(d.memory);
  }

  /** The last event sequence number (per guest, from 1, across its restarts). */
  get lastSeq(): number {
    return this.seq;
  }

  /**
   * This exit found the sealed translation changed (and maybe put it back):
   * the guest ran through remapped pages, so no writer on it is trusted.
   */
  private remapSeen = false;

  /** The special registers, read at most once per exit (the sealed-state check and a capture share them). */
  private cachedSregs: Sregs | undefined;
  private sregs(): Sregs {
    this.cachedSregs ??= this.d.cpu.getSregs();
    return this.cachedSregs;
  }

  /** The guest's privilege level at the current exit. */
  currentCpl(): number {
    return cplOf(this.sregs());
  }

  dispatch(exit: VcpuExit): ExitAction {
    const t0 = this.now();
    this.stats.exits++;
    this.cachedSregs = undefined;
    this.remapSeen = false;
    const console = (exit.kind === "io-out" || exit.kind === "io-in") && exit.port >= 0x3f8 && exit.port <= 0x3ff;
    // A dead vCPU (triple fault, failed entry) is a crash, whatever its registers say now.
    const dead =
      exit.kind === "shutdown" ||
      exit.kind === "internal-error" ||
      exit.kind === "fail-entry" ||
      exit.kind === "system-event";
    // Only a write (or a kick, which runs no guest code) can carry on a store's pieces.
    if (exit.kind !== "mmio-write" && exit.kind !== "interrupted") this.pieces.clear();
    if (!dead && (!console || (this.stats.exits & 63) === 0)) {
      const broken = this.checkSealed(t0);
      if (broken) return broken;
    }
    return this.handle(exit, t0);
  }

  private handle(exit: VcpuExit, t0: bigint): ExitAction {
    switch (exit.kind) {
      case "io-out": {
        this.stats.io++;
        const a = this.d.bus.out(exit.port, exit.size, exit.count, exit.data);
        if (a.kind !== "exit") return CONTINUE;
        const p = this.panicked;
        if (p && a.code === 0x80 + p.vector) {
          // The guest's exception module gave up: a crash, decided by policy.
          return this.onCrash(
            `kernel panic on vector ${p.vector} at 0x${p.rip.toString(16)} (exit code 0x${a.code.toString(16)})`,
            t0,
          );
        }
        return { kind: "stop", outcome: "exit", code: a.code, detail: `guest exited with code ${a.code}` };
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
        return this.onCrash("triple fault (KVM_EXIT_SHUTDOWN)", t0);
      case "internal-error":
        if (exit.suberror === KVM_INTERNAL_ERROR_EMULATION) {
          const store = this.onUnemulatedStore(t0);
          if (store) return store;
        }
        return this.onCrash(`KVM internal error, suberror ${exit.suberror}`, t0);
      case "fail-entry":
        return { kind: "stop", outcome: "crash", detail: `VM entry failed, reason 0x${exit.reason.toString(16)}` };
      case "system-event":
        return { kind: "stop", outcome: "crash", detail: `system event ${exit.type}` };
      case "msr-write":
        if (this.d.protectedMsrs?.has(exit.index)) return this.onMsrWrite(exit.index, exit.value, t0);
        this.d.cpu.setMsrResult(1); // not ours to filter: refuse
        return CONTINUE;
      case "msr-read":
        // The filter only covers writes, so reads are unexpected: refuse with #GP.
        this.d.cpu.setMsrResult(1);
        return CONTINUE;
      case "debug":
        return this.onDebug(exit.pc, exit.dr6, t0);
      case "interrupted":
        return CONTINUE;
      case "unknown":
        return { kind: "stop", outcome: "crash", detail: `unhandled exit reason ${exit.reason}` };
    }
  }

  /** A write that hit a read-only page (or no RAM at all). */
  private onWrite(gpa: number, data: Uint8Array, t0: bigint): ExitAction {
    const target = this.d.protection.classifyWrite(gpa, data.length);
    if (target.kind === "unbacked") {
      this.pieces.clear();
      this.stats.unbackedWrites++;
      return CONTINUE;
    }
    const regs = this.d.cpu.getRegs();
    // A later piece of a store already decided: its verdict, no new event.
    const follows = this.pieces.follow(regs, gpa, data.length);
    if (follows !== undefined) {
      if (follows) this.d.memory.write(gpa, data);
      return CONTINUE;
    }
    const sregs = this.sregs();
    if (target.kind !== "protected") {
      // Unprotected bytes on a read-only page: performed for the guest, unless
      // the same store goes on into protected bytes (a piece of 8 bytes, or
      // one ending at a page end, may have more after it).
      const more = data.length === 8 || (gpa + data.length) % 0x1000 === 0;
      const store = more ? locateStore(this.d.memory, { regs, sregs, gpa, data }) : undefined;
      const ahead = store && !store.repeating ? this.protectedAhead(store.write, store.offset, sregs.cr3) : undefined;
      if (!store || !ahead) {
        this.stats.sharedPageWrites++;
        this.d.memory.write(gpa, data);
        return CONTINUE;
      }
      return this.decideStore(gpa, data, regs, sregs, store, ahead, t0);
    }
    // The exit comes after the write retired: record the instruction that made it.
    const store = locateStore(this.d.memory, { regs, sregs, gpa, data });
    return this.decideStore(gpa, data, regs, sregs, store, target, t0);
  }

  /** The first protected bytes a write of [va, va + size) reaches from `offset` on, if any. */
  private protectedAhead(
    write: { va: bigint; size: number },
    offset: number,
    cr3: bigint,
  ): { region: ProtectedRegion; offset: number } | undefined {
    for (const p of pageParts(this.d.memory, cr3, write.va + BigInt(offset), write.size - offset)) {
      const t = p.pa === undefined ? undefined : this.d.protection.classifyWrite(p.pa, p.len);
      if (t?.kind === "protected") return t;
    }
    return undefined;
  }

  /**
   * Decide a store once: this piece and the pieces of the same instruction
   * still to come take the verdict (StorePieces). `store` undefined: the
   * writing instruction was not found.
   */
  private decideStore(
    gpa: number,
    data: Uint8Array,
    regs: Regs,
    sregs: Sregs,
    store: LocatedStore | undefined,
    target: { region: ProtectedRegion; offset: number },
    t0: bigint,
  ): ExitAction {
    const ctx = this.capture("protected-write", store ? { ...regs, rip: store.site.rip } : regs, sregs);
    const notes: string[] = [];
    if (!store) {
      ctx.flags |= CONTEXT_FLAGS.WRITER_UNKNOWN;
      notes.push("the writing instruction was not found: rip is where the guest resumes");
    } else this.judgeWriter(ctx, store.site.rip, sregs.cr3, notes);
    ctx.regionId = target.region.id;
    ctx.regionOffset = target.offset;
    ctx.data = data.slice(0, 8);
    ctx.gpa = gpa;
    if (store) this.setExtent(ctx, store.write, store.offset, sregs.cr3);
    if ((ctx.accessLen ?? ctx.data.length) > ctx.data.length) ctx.flags |= CONTEXT_FLAGS.DATA_PARTIAL;
    const decision = this.d.decider.decide(ctx);
    const effect = effectOf("protected-write", decision.verdict);
    let resume = regs;
    if (effect.fault) {
      // A fault at the writing instruction, as the CPU's own would leave it.
      if (store) {
        resume = { ...regs, ...store.before };
        this.d.cpu.setRegs(resume);
      }
      this.raiseFault(effect, resume.rip);
      if (store?.repeating) store = undefined; // no more elements: the guest takes the fault
    } else if (effect.perform) this.d.memory.write(gpa, data);
    if (store) {
      const va = store.write.va + BigInt(store.offset);
      this.pieces.start(store, va, data.length, resume, sregs.cr3, effect.perform);
    } else this.pieces.clear();
    this.report(ctx, decision, t0, notes.length ? notes.join("; ") : undefined);
    return fateAction(effect.vm, `protected write at 0x${gpa.toString(16)}`);
  }

  /** #GP at `rip` for a deny-fault or kill-task verdict; kill-task also tells the guest to end the task. */
  private raiseFault(effect: Effect, rip: bigint): void {
    this.d.cpu.injectException(GP_VECTOR, 0);
    if (effect.endTask) this.expectEndTask(GP_VECTOR, rip);
  }

  private expectEndTask(vector: number, rip: bigint): void {
    this.endTaskFaults.push({ vector, rip });
    if (this.endTaskFaults.length > 16) this.endTaskFaults.shift();
  }

  /** The VM's fate as what the vCPU loop does next. */
  /**
   * The whole write in the context: from its first byte (gpa) for as many
   * bytes as the instruction writes, when that is physically contiguous;
   * otherwise the exit's piece with a length no bounded rule can hold.
   */
  private setExtent(ctx: ContextRecord, write: { va: bigint; size: number }, offset: number, cr3: bigint): void {
    const { va, size } = write;
    if (size <= ctx.data.length && offset === 0) return;
    const start = translate(this.d.memory, cr3, va);
    let contiguous = start !== undefined && size <= MAX_EXTENT;
    if (contiguous) {
      for (const p of pageParts(this.d.memory, cr3, va, size)) contiguous &&= p.pa === (start as number) + p.at;
    }
    if (contiguous && start !== undefined) {
      ctx.gpa = start;
      ctx.accessLen = size;
    } else ctx.accessLen = 0xffffffff;
  }

  /**
   * KVM could not emulate the instruction at RIP (FXSAVE, XSAVE, AVX stores
   * to read-only memory): the guest has not run it. When it would write a
   * protected byte it is a protected write, decided here: on deny it is
   * skipped (RIP past it, nothing written: the guest sees it as done with no
   * effect), on deny-fault it faults with #GP at RIP. Allowed, it cannot be
   * carried out (KVM cannot emulate it): it is skipped too, and the event says
   * so. Undefined when it writes no protected byte: a crash, as before.
   */
  private onUnemulatedStore(t0: bigint): ExitAction | undefined {
    const regs = this.d.cpu.getRegs();
    const sregs = this.sregs();
    const insn = storesAt(this.d.memory, regs, sregs);
    if (!insn) return undefined;
    for (const w of insn.writes) {
      const hit = this.protectedAhead(w, 0, sregs.cr3);
      if (!hit) continue;
      // KVM queued #UD for the guest with the exit: Guardvisor decides instead.
      this.d.cpu.cancelException(UD_VECTOR);
      const ctx = this.capture("protected-write", regs, sregs);
      const notes = ["KVM cannot emulate this store: decided from the instruction at RIP before it ran"];
      this.judgeWriter(ctx, regs.rip, sregs.cr3, notes);
      ctx.regionId = hit.region.id;
      ctx.regionOffset = hit.offset;
      ctx.gpa = translate(this.d.memory, sregs.cr3, w.va) ?? 0;
      this.setExtent(ctx, w, 0, sregs.cr3);
      ctx.flags |= CONTEXT_FLAGS.DATA_PARTIAL; // nothing of what it would write is known
      const decision = this.d.decider.decide(ctx);
      const effect = effectOf("protected-write", decision.verdict);
      if (effect.fault) this.raiseFault(effect, regs.rip);
      else {
        // Skipped, whatever else the verdict says: it cannot be run.
        if (effect.perform) notes.push("not carried out: KVM cannot emulate it; skipped");
        this.d.cpu.setRegs({ ...regs, rip: regs.rip + BigInt(insn.site.length) });
      }
      this.report(ctx, decision, t0, notes.join("; "));
      return fateAction(effect.vm, `unemulated store at 0x${regs.rip.toString(16)}`);
    }
    return undefined;
  }

  /** A writer that is not sealed kernel code at its own address (or ran after a remap) is untrusted. */
  private judgeWriter(ctx: ContextRecord, rip: bigint, cr3: bigint, notes: string[]): void {
    if (!this.remapSeen && this.sealedCodeAt(rip, cr3)) return;
    ctx.flags |= CONTEXT_FLAGS.WRITER_UNTRUSTED;
    notes.push("the writing instruction is not sealed kernel code at its own address: no writer rule applies");
  }

  /**
   * Is the code at virtual `rip` the kernel's sealed code, where the kernel's
   * own mapping puts it? Not when `rip` lies outside every protected range, or
   * when the page tables map it to another physical page (code mapped over a
   * sanctioned routine's address). Without the kernel's ranges, nothing can be told: yes.
   */
  private sealedCodeAt(rip: bigint, cr3: bigint): boolean {
    const ranges = this.d.protectedVirtual;
    if (!ranges) return true;
    const r = ranges.find((v) => v.gpa !== undefined && rip >= v.start && rip < v.end);
    if (!r || r.gpa === undefined) return false;
    const pa = translate(this.d.memory, cr3, rip);
    return pa !== undefined && BigInt(pa) === BigInt(r.gpa) + (rip - r.start);
  }

  /** A debug exit: the exception-entry breakpoint, the step over it, or not ours. */
  private onDebug(pc: bigint, dr6: bigint, t0: bigint): ExitAction {
    const xc = this.d.exceptions;
    if (!xc) return CONTINUE;
    switch (xc.classify(pc, dr6)) {
      case "stepped":
        xc.stepped();
        return CONTINUE;
      case "step-lost":
        // Not our step (no DR6.BS): re-arm now, so no exception passes uncaptured, and give the guest its #DB.
        this.stats.captureStepsLost++;
        xc.stepped();
        this.d.cpu.injectException(DB_VECTOR);
        return CONTINUE;
      case "other":
        // The guest's own #DB (a task's TF, int1, its debug registers): it is the guest's to handle.
        this.d.cpu.injectException(DB_VECTOR);
        return CONTINUE;
      case "exception-entry": {
        const action = this.onException(t0);
        if (action.kind !== "stop") xc.stepOver(); // a pause steps over it when resumed
        return action;
      }
    }
  }

  /**
   * The guest is entering its exception handler: capture the exception from
   * the frame before the handler runs. Verdicts that end the VM end it here;
   * every other verdict lets the guest's own exception module handle it.
   */
  private onException(t0: bigint): ExitAction {
    this.stats.exceptions++;
    const regs = this.d.cpu.getRegs();
    const sregs = this.sregs();
    const ctx = this.capture("cpu-exception", regs, sregs);
    const f = decodeExceptionFrame(this.d.memory, sregs.cr3, regs.rsp);
    let note: string | undefined;
    if (f.ok) {
      const fr = f.frame;
      ctx.vector = fr.vector;
      ctx.errorCode = fr.errorCode;
      ctx.cpl = fr.cpl;
      ctx.regs = { ...regs, rip: fr.rip, rsp: fr.rsp, rflags: fr.rflags };
      this.setInsn(ctx, sregs, fr.rip);
    } else {
      // Hostile or broken: record what we saw at the entry, decide on vector 255.
      ctx.vector = 255;
      ctx.flags |= CONTEXT_FLAGS.FRAME_INVALID;
      note = `exception frame rejected: ${f.why}`;
    }
    const decision = this.d.decider.decide(ctx);
    const effect = effectOf("cpu-exception", decision.verdict);
    if (f.ok) {
      this.unreported.push({ seq: ctx.seq, vector: f.frame.vector, rip: f.frame.rip, endTask: effect.endTask });
      if (this.unreported.length > 16) this.unreported.shift();
    }
    this.report(ctx, decision, t0, note);
    return fateAction(effect.vm, `exception ${ctx.vector} at 0x${ctx.regs.rip.toString(16)}`);
  }

  /**
   * HC_EXCEPTION_VERDICT: the guest's exception module asks, before it acts,
   * whether the VMM's verdict on this exception is to end the faulting task:
   * a kill-task verdict on the exception itself, or the #GP Guardvisor raised
   * for a kill-task verdict on a write. Otherwise it follows its own rule.
   */
  exceptionVerdict(vector: number, rip: bigint): number {
    const C = ABI_CONSTANTS;
    const i = this.endTaskFaults.findIndex((u) => u.vector === vector && u.rip === rip);
    if (i >= 0) {
      this.endTaskFaults.splice(i, 1);
      return C.EXC_END_TASK;
    }
    const u = this.unreported.find((x) => x.vector === vector && x.rip === rip);
    return u?.endTask ? C.EXC_END_TASK : C.EXC_OWN_RULE;
  }

  /** HC_REPORT_EXCEPTION: the guest's exception module says what it did. */
  onGuestReport(vector: number, rip: bigint, action: GuestAction): void {
    this.stats.guestReports++;
    if (action === "panic") this.panicked = { vector, rip };
    const i = this.unreported.findIndex((u) => u.vector === vector && u.rip === rip);
    const match = i >= 0 ? this.unreported.splice(i, 1)[0] : undefined;
    this.d.sink.guestReport?.({ seq: match?.seq, vector, rip, action });
  }

  /** HC_SEAL: protect more from now on (bits only ever get set). Returns the sealed set. */
  seal(what: number): number {
    const sealed = this.sealState.seal(what, () => this.d.cpu.getSregs());
    this.stats.pinnedEntries = this.sealState.pinnedEntries;
    return sealed;
  }

  /**
   * Sealed state still as sealed? The IDTR and pinned CR bits live in the
   * vCPU, not in memory, so they are checked on exits: on every exit that is
   * not console output, and on every 64th that is. A change is an integrity
   * event; "deny" puts the sealed value back, "restart"/"halt" end the VM.
   */
  private checkSealed(t0: bigint): ExitAction | undefined {
    if (!this.sealState.checked) return undefined;
    const s = this.sregs();
    const broken = this.sealState.broken(s);
    if (broken.length === 0) return undefined;
    const C = ABI_CONSTANTS;
    this.remapSeen = broken.some((b) => b.object === C.INTEGRITY_PAGING || b.object === C.INTEGRITY_CR3);

    let end: ExitAction | undefined;
    const regs = this.d.cpu.getRegs();
    // The cache keeps the registers as the exit found them: a capture on this exit records the attack.
    const fixed = { ...s };
    let restored = false;
    let flush = false;
    for (const b of broken) {
      const ctx = this.capture("integrity", regs, s);
      ctx.object = b.object;
      if (b.inMemory) ctx.flags |= CONTEXT_FLAGS.WRITER_UNKNOWN; // found after the fact: no writer to name
      const decision = this.d.decider.decide(ctx);
      this.report(ctx, decision, t0, b.what);
      const effect = effectOf("integrity", decision.verdict);
      if (effect.restore) {
        b.restore(fixed);
        if (b.inMemory) flush = true;
        else restored = true;
      }
      end = strongerEnding(end, fateAction(effect.vm, b.what));
    }
    // One write for every object set back, so no restore undoes another.
    if (flush) {
      // Drop the guest's cached translations of the entries put back: KVM resets the
      // vCPU's MMU context (and flushes its TLB) when CR4 changes through KVM_SET_SREGS.
      this.d.cpu.setSregs({ ...fixed, cr4: fixed.cr4 ^ CR4_PGE });
      restored = true;
    }
    if (restored) this.d.cpu.setSregs(fixed);
    return end;
  }

  /** A write to a filtered MSR (LSTAR, SYSENTER_EIP, …). */
  private onMsrWrite(index: number, value: bigint, t0: bigint): ExitAction {
    if (!this.sealState.has(ABI_CONSTANTS.SEAL_MSRS)) {
      // Before the guest seals its MSRs, it is still setting itself up: perform the write.
      this.stats.msrWritesBeforeSeal++;
      this.performMsrWrite(index, value);
      return CONTINUE;
    }
    const ctx = this.capture("msr-write");
    ctx.msrIndex = index;
    ctx.msrValue = value;
    const decision = this.d.decider.decide(ctx);
    const effect = effectOf("msr-write", decision.verdict);
    let note: string | undefined;
    if (effect.perform) {
      if (!this.performMsrWrite(index, value)) note = "KVM refused the value: #GP in the guest";
    } else if (effect.fault) {
      this.d.cpu.setMsrResult(1); // #GP in the guest, at the WRMSR
      if (effect.endTask) this.expectEndTask(GP_VECTOR, this.d.cpu.getRegs().rip);
    } else this.d.cpu.setMsrResult(0); // dropped: the guest believes it wrote
    this.report(ctx, decision, t0, note);
    return fateAction(effect.vm, `write of MSR 0x${index.toString(16)}`);
  }

  /** Perform a guest's MSR write; a value KVM refuses becomes the #GP the CPU would raise. */
  private performMsrWrite(index: number, value: bigint): boolean {
    const ok = this.d.cpu.setMsr(index, value);
    this.d.cpu.setMsrResult(ok ? 0 : 1);
    return ok;
  }

  /** The watchdog saw no progress: the vCPU was kicked out of a hang. */
  onHang(detail: string): ExitAction {
    const t0 = this.now();
    this.cachedSregs = undefined; // not inside an exit: read them now
    const ctx = this.capture("hang");
    const decision = this.d.decider.decide(ctx);
    this.report(ctx, decision, t0, detail);
    return fateAction(effectOf("hang", decision.verdict).vm, detail);
  }

  /** A crash (triple fault, internal error): an event, then the verdict's way out. */
  private onCrash(detail: string, t0: bigint): ExitAction {
    const ctx = this.capture("crash");
    const decision = this.d.decider.decide(ctx);
    this.report(ctx, decision, t0, detail);
    return fateAction(effectOf("crash", decision.verdict).vm, detail);
  }

  /** First-time capture: registers, control registers and instruction bytes. */
  capture(kind: EventKind, regs: Regs = this.d.cpu.getRegs(), sregs: Sregs = this.sregs()): ContextRecord {
    const ctx = capturedContext(kind, regs, sregs, { seq: ++this.seq, vmId: this.d.vmId, vcpu: this.d.vcpuId });
    this.setInsn(ctx, sregs, regs.rip);
    return ctx;
  }

  /** The instruction bytes at `rip` (through the guest's page tables), flagged valid when any could be read. */
  private setInsn(ctx: ContextRecord, sregs: Sregs, rip: bigint): void {
    ctx.insn = readVirtual(this.d.memory, sregs.cr3, rip, 16);
    ctx.flags = ctx.insn.length > 0 ? ctx.flags | CONTEXT_FLAGS.INSN_VALID : ctx.flags & ~CONTEXT_FLAGS.INSN_VALID;
  }

  private report(ctx: ContextRecord, decision: DecisionResult, t0: bigint, note?: string): void {
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
      vector: ctx.kind === "cpu-exception" ? ctx.vector : 0,
      object: ctx.kind === "integrity" ? ctx.object : 0,
      msrIndex: ctx.msrIndex,
      note,
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
