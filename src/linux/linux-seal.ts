/**
 * Sealing a stock Linux guest's code and read-only data, from the VMM, with
 * no guest patch (docs/linux-guests.md, "Sealing").
 *
 * Linux patches its own text while it boots (alternatives, jump labels,
 * ftrace init) and makes its read-only data read-only in mark_rodata_ro(),
 * just before it runs /init. So the seal is armed at user space's first
 * system call, once .rodata is read-only in the kernel's page tables (a
 * breakpoint on the system-call entry, linux-crash.ts), or, for a kernel
 * without symbols, at the first exit (or kick) that finds the vCPU in ring 3:
 * init's self-patching is over. It also pins CR0.WP, CR4.SMEP/SMAP and the
 * IDTR and installs the MSR filter over the syscall MSRs. Arming replaces the RAM slot by slots that back the protected
 * pages read-only (KVM_MEM_READONLY), while the vCPU is out of KVM_RUN.
 *
 * From then on a guest write to a protected page exits as an MMIO write.
 * Bytes outside the protected ranges that share such a page are written for
 * the guest; a write to protected bytes is a `protected-write` event, decided
 * by the policy (default: deny, the write is dropped and the guest goes on).
 * Reads never exit. Dependencies are injected: tested without KVM.
 */
import { ABI_CONSTANTS, CONTEXT_FLAGS, type EventKind } from "../abi/guest-abi.js";
import type { Decider, DecisionResult } from "../decide/decider.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import { cplOf, type Regs, type Sregs } from "../kvm/structs.js";
import { type ContextRecord, capturedContext, encodeContext } from "../model/context.js";
import type { ProtectedRegion } from "../model/regions.js";
import { effectOf } from "../vmm/act.js";
import { type CapturedEvent, type ExitAction, fateAction, GP_VECTOR, strongerEnding } from "../vmm/dispatcher.js";
import { mappedWritable, readVirtual } from "../vmm/paging.js";
import { ProtectionMap, planMemorySlots, type SlotPlan } from "../vmm/protection.js";
import { type BrokenSeal, SealState } from "../vmm/seal-state.js";
import type { ProtectionArmed } from "../vmm/vcpu-protocol.js";
import { locateStore } from "../vmm/write-site.js";
import { type KernelPatching, notSanctioned } from "./kernel-patching.js";

/** Events posted to the owner at most (the rest are only counted). */
export const MAX_POSTED_EVENTS = 256;

export interface LinuxSealDeps {
  vmId: number;
  vcpuId: number;
  /** The protected ranges, numbered (their ids are the policy's region ids). */
  regions: readonly ProtectedRegion[];
  memory: GuestMemory;
  getRegs(): Regs;
  getSregs(): Sregs;
  /** Replace guest RAM's memory slots by these (the vCPU is not running). */
  reslot(plan: readonly SlotPlan[]): void;
  decider: Decider;
  event(e: CapturedEvent): void;
  armed(a: ProtectionArmed): void;
  /** Find the writing instruction (the exit comes after it retired); default: the x86 decoder. */
  locate?: typeof locateStore;
  /** Monotonic clock in nanoseconds. */
  now?: () => bigint;
  /**
   * The last event number of this guest's earlier boots (after a restart):
   * numbering goes on from there, so the health VM's channel never sees a
   * number twice for one guest.
   */
  firstSeq?: number;
  /** The kernel virtual address of a protected guest-physical address (for the patch-site check). */
  virtualOf?: (gpa: number) => bigint | undefined;
  /** How to recognise the kernel's own text_poke (absent: no write is sanctioned). */
  patching?: KernelPatching;
  /** "immutable": even the kernel's sanctioned patching is decided like any other write. */
  kernelPatching?: "sanctioned" | "immutable";
  /** From arming on, writes to the syscall MSRs exit to the VMM (the MSR filter); absent: MSRs unprotected. */
  protectMsrs?: () => void;
  /** Perform an MSR write the verdict lets through; false when KVM refuses the value. */
  setMsr?: (index: number, value: bigint) => boolean;
  /** Answer the MSR exit: 1 raises #GP at the WRMSR. */
  setMsrResult?: (error: 0 | 1) => void;
  setSregs?: (s: Sregs) => void;
  /** Set the general registers (a fault verdict rewinds to the writing instruction). */
  setRegs?: (r: Regs) => void;
  /** Raise an exception in the guest (a fault verdict's #GP at the writer). */
  injectException?: (vector: number, errorCode?: number) => void;
  /**
   * Make the next KVM_RUN return at once, after it completed the exit's
   * pending operation (kvm_run.immediate_exit): registers may be set only then.
   */
  requestImmediateExit?: () => void;
  /** A kernel virtual address in .rodata: arming at a system call waits until it is mapped read-only. */
  readOnlyProbe?: bigint;
  /**
   * What the sealed ranges must hold (the regions' bytes one after another):
   * filled when the seal is armed, and every write a verdict performs goes
   * into it too. The owner compares it with guest memory at the end.
   */
  shadow?: Uint8Array;
}

/** The rule name and reason of a write recognised as the kernel's own text_poke. */
export const SANCTIONED_RULE = "linux-text-poke";
export const SANCTIONED_REASON =
  "the kernel's text_poke at a static key, static call or ftrace site (kernel-patching: sanctioned)";

/** Console output exits are many: pinned registers are checked on one in this many (every other exit: always). */
export const PIN_CHECK_EVERY_IO = 64;

export interface LinuxSealCounters {
  /** Exits (and kicks) on which the CPL was looked at before arming. */
  armChecks: number;
  /** Writes to protected bytes (each one an event). */
  protectedWrites: number;
  /** Writes to unprotected bytes of a read-only page, performed for the guest. */
  sharedPageWrites: number;
  /** Protected writes whose verdict performed them. */
  performedWrites: number;
  /** Events counted but not posted (past MAX_POSTED_EVENTS). */
  eventsNotPosted: number;
  /** Protected writes recognised as the kernel's sanctioned text_poke (allowed unless immutable). */
  sanctionedWrites: number;
  /** Writes to the protected MSRs after arming (each one an event). */
  msrWrites: number;
  /** Pinned CR bits or the IDTR found changed (each one an event). */
  pinsBroken: number;
  /** Protected writes whose verdict raised #GP at the writer (deny-fault, kill-task). */
  faultsRaised: number;
  /** Further pieces of a write that a fault verdict stopped (dropped, not decided again). */
  faultedPieces: number;
}

const hex = (n: bigint | number) => `0x${n.toString(16)}`;

export class LinuxSeal {
  readonly counters: LinuxSealCounters = {
    armChecks: 0,
    protectedWrites: 0,
    sharedPageWrites: 0,
    performedWrites: 0,
    eventsNotPosted: 0,
    sanctionedWrites: 0,
    msrWrites: 0,
    pinsBroken: 0,
    faultsRaised: 0,
    faultedPieces: 0,
  };
  private readonly map: ProtectionMap;
  private isArmed = false;
  private seq = 0;
  private readonly now: () => bigint;
  /** CR0.WP, CR4.SMEP/SMAP and the IDTR as the kernel had them when the seal was armed. */
  private readonly pins: SealState;
  private ioExits = 0;
  /** Sealed values to put back once the pending operation of the exit that found them is complete. */
  private deferred: BrokenSeal["restore"][] = [];
  /**
   * A fault verdict's #GP, raised once the write's MMIO exit is complete:
   * with the registers as before the writing instruction (undefined: the
   * writer was not found, the fault comes where the guest resumes).
   */
  private faultPending: { regs?: Regs } | undefined;

  constructor(private readonly d: LinuxSealDeps) {
    this.seq = d.firstSeq ?? 0;
    this.map = new ProtectionMap(d.regions, d.memory.size);
    this.now = d.now ?? process.hrtime.bigint;
    this.pins = new SealState(d.memory, undefined);
  }

  get armed(): boolean {
    return this.isArmed;
  }

  /** The last event number given (firstSeq when none yet). */
  get lastSeq(): number {
    return this.seq;
  }

  /**
   * Arm the seal if the kernel has finished initialising. `trigger`:
   * "ring3", an exit (or kick) that finds the vCPU in ring 3; "syscall", the
   * breakpoint on the system-call entry: user space made its first system
   * call, and the kernel's read-only data is read-only in its page tables
   * (mark_rodata_ro() ran: init's self-patching is over). `exits` is the
   * exit count so far (for the record). True when it armed now.
   */
  check(exits: number, trigger: "ring3" | "syscall" = "ring3"): boolean {
    if (this.isArmed) return false;
    this.counters.armChecks++;
    const sregs = this.d.getSregs();
    if (trigger === "ring3" && cplOf(sregs) !== 3) return false;
    if (trigger === "syscall") {
      const probe = this.d.readOnlyProbe;
      // The kernel's own tables: without PCID bits and PTI's user-half bit (12) of CR3.
      const kernelCr3 = sregs.cr3 & ~0x1fffn;
      if (probe === undefined || mappedWritable(this.d.memory, kernelCr3, probe) !== false) return false;
    }
    const t0 = this.now();
    const slots = planMemorySlots(this.d.memory.size, this.d.regions);
    // The bytes as they are now: the owner compares them at the end.
    const hashes = this.map.hash(this.d.memory);
    this.copyToShadow();
    this.d.reslot(slots);
    this.d.protectMsrs?.();
    if (this.d.setSregs) this.pins.seal(ABI_CONSTANTS.SEAL_CR | ABI_CONSTANTS.SEAL_IDT, () => sregs);
    this.isArmed = true;
    const ro = slots.filter((s) => s.readonly);
    this.d.armed({
      exits,
      timeMs: Date.now(),
      cpl: cplOf(sregs),
      trigger,
      rip: this.d.getRegs().rip,
      protectedBytes: this.map.protectedBytes,
      readOnlyBytes: ro.reduce((n, s) => n + s.size, 0),
      slots: slots.map((s) => ({ gpa: s.gpa, size: s.size, readonly: s.readonly })),
      hashes,
      armUs: Number(this.now() - t0) / 1000,
    });
    return true;
  }

  /**
   * A guest write that exited (KVM_EXIT_MMIO). Undefined when it is not on a
   * protected page (not the seal's to handle); otherwise what the vCPU does next.
   */
  onWrite(gpa: number, data: Uint8Array): ExitAction | undefined {
    if (!this.isArmed) return undefined;
    const target = this.map.classifyWrite(gpa, data.length);
    if (target.kind === "unbacked" || target.kind === "writable") return undefined;
    if (this.faultPending) {
      // Another piece of the instruction a fault verdict stopped (a write across pages): it never happens.
      this.counters.faultedPieces++;
      return { kind: "continue" };
    }
    if (target.kind === "shared-page") {
      this.counters.sharedPageWrites++;
      this.d.memory.write(gpa, data);
      return { kind: "continue" };
    }
    const t0 = this.now();
    this.counters.protectedWrites++;
    const regs = this.d.getRegs();
    const sregs = this.d.getSregs();
    let store: ReturnType<typeof locateStore>;
    try {
      store = (this.d.locate ?? locateStore)(this.d.memory, { regs, sregs, gpa, data });
    } catch {
      store = undefined;
    }
    const rip = store ? store.site.rip : regs.rip;
    const ctx = this.context("protected-write", { ...regs, rip }, sregs);
    ctx.insn = readVirtual(this.d.memory, sregs.cr3, rip, 16);
    if (ctx.insn.length > 0) ctx.flags |= CONTEXT_FLAGS.INSN_VALID;
    if (!store) ctx.flags |= CONTEXT_FLAGS.WRITER_UNKNOWN;
    ctx.regionId = target.region.id;
    ctx.regionOffset = target.offset;
    ctx.gpa = gpa;
    ctx.data = data.slice(0, 8);
    const notes = [
      `${target.region.name}+${hex(target.offset)}`,
      `cpl ${ctx.cpl}`,
      `cr3 ${hex(sregs.cr3)}`,
      `${data.length} bytes ${Buffer.from(data).toString("hex")}`,
      store ? `writer ${hex(store.site.rip)}` : `writer not found; resumes at ${hex(regs.rip)}`,
    ];
    const why = this.d.patching
      ? notSanctioned(this.d.patching, {
          cpl: ctx.cpl,
          regs,
          writerRip: rip,
          cr3: sregs.cr3,
          target: this.d.virtualOf?.(gpa),
          memory: this.d.memory,
        })
      : "no symbols to recognise text_poke by";
    let decision: DecisionResult;
    if (why === undefined) {
      this.counters.sanctionedWrites++;
      notes.push("the kernel's text_poke");
      decision =
        this.d.kernelPatching === "immutable"
          ? this.d.decider.decide(ctx)
          : { verdict: "allow", decidedBy: "vmm", rule: SANCTIONED_RULE, reason: SANCTIONED_REASON };
    } else {
      notes.push(`not the kernel's text_poke: ${why}`);
      decision = this.d.decider.decide(ctx);
    }
    const effect = effectOf("protected-write", decision.verdict);
    if (effect.perform) {
      this.counters.performedWrites++;
      this.d.memory.write(gpa, data);
      this.shadowWrite(gpa, data);
    }
    if (effect.fault) notes.push(this.raiseFault(regs, store, decision.verdict === "kill-task"));
    this.post(ctx, decision, t0, notes.join("; "), { gpa, regionId: ctx.regionId });
    return fateAction(effect.vm, `protected write at ${hex(gpa)}`);
  }

  /**
   * After arming, on an exit: are CR0.WP, CR4.SMEP/SMAP and the IDTR as
   * sealed? Checked on every exit but console I/O, and on one in
   * PIN_CHECK_EVERY_IO of those. A change is an `integrity` event; a verdict
   * that restores puts the sealed value back before the guest goes on.
   * `pending`: the exit has an operation KVM completes on the next KVM_RUN
   * (MMIO, port I/O, MSR): registers must not be set before that (api.rst),
   * so the value is put back on the immediate exit that follows. A fault
   * verdict's #GP waits for that exit too, and is raised here first.
   */
  checkPins(exit: { io: boolean; pending: boolean }): ExitAction | undefined {
    if (this.faultPending && !exit.pending) this.applyFault();
    if (!this.isArmed || !this.d.setSregs) return undefined;
    if (this.deferred.length > 0) {
      this.putBack(this.deferred, this.d.getSregs());
      this.deferred = [];
    }
    if (exit.io && ++this.ioExits % PIN_CHECK_EVERY_IO !== 0) return undefined;
    const sregs = this.d.getSregs();
    const broken = this.pins.broken(sregs);
    if (broken.length === 0) return undefined;
    const t0 = this.now();
    const regs = this.d.getRegs();
    const restores: BrokenSeal["restore"][] = [];
    let end: ExitAction | undefined;
    for (const b of broken) {
      this.counters.pinsBroken++;
      const ctx = this.context("integrity", regs, sregs);
      ctx.object = b.object;
      ctx.flags |= CONTEXT_FLAGS.WRITER_UNKNOWN; // found after the fact
      const decision = this.d.decider.decide(ctx);
      const effect = effectOf("integrity", decision.verdict);
      if (effect.restore) restores.push(b.restore);
      this.post(ctx, decision, t0, b.what, { object: b.object });
      end = strongerEnding(end, fateAction(effect.vm, b.what));
    }
    if (restores.length > 0 && exit.pending && this.d.requestImmediateExit) {
      this.deferred = restores;
      this.d.requestImmediateExit();
    } else if (restores.length > 0) this.putBack(restores, sregs);
    return end;
  }

  /** Set the sealed values back: `sregs` with each restore applied, in one KVM_SET_SREGS. */
  private putBack(restores: readonly BrokenSeal["restore"][], sregs: Sregs): void {
    const fixed = { ...sregs };
    for (const restore of restores) restore(fixed);
    this.d.setSregs?.(fixed);
  }

  /**
   * A fault verdict on a protected write: #GP(0) at the writing instruction,
   * as the CPU's own fault would leave it (its registers put back). The MMIO
   * exit is completed first (an immediate exit), then the registers are set
   * and the exception raised (applyFault). The kernel's #GP handler runs the
   * write's exception fixup if it has one (copy_to_kernel_nofault fails
   * with -EFAULT); otherwise it oopses, and the oops ends the writing task:
   * that is how a kill-task verdict ends the task in a Linux guest.
   * Returns the event's note.
   */
  private raiseFault(regs: Regs, store: ReturnType<typeof locateStore>, killTask: boolean): string {
    if (!this.d.injectException || !this.d.setRegs || !this.d.requestImmediateExit) {
      return "dropped (no way to raise a fault here)";
    }
    this.counters.faultsRaised++;
    this.faultPending = { regs: store ? { ...regs, ...store.before } : undefined };
    this.d.requestImmediateExit();
    const at = store ? `#GP at the writer ${hex(store.site.rip)}` : `#GP where the guest resumes, ${hex(regs.rip)}`;
    return killTask ? `${at}; the kernel's #GP handling ends the task unless the write has an exception fixup` : at;
  }

  /** The pending fault verdict: the writer's registers back, then #GP(0). */
  private applyFault(): void {
    const f = this.faultPending;
    this.faultPending = undefined;
    if (!f) return;
    if (f.regs) this.d.setRegs?.(f.regs);
    this.d.injectException?.(GP_VECTOR, 0);
  }

  /** A write to a protected MSR (the filter is installed when the seal is armed). */
  onMsrWrite(index: number, value: bigint): ExitAction {
    const t0 = this.now();
    this.counters.msrWrites++;
    const regs = this.d.getRegs();
    const ctx = this.context("msr-write", regs, this.d.getSregs());
    ctx.msrIndex = index;
    ctx.msrValue = value;
    const decision = this.d.decider.decide(ctx);
    const effect = effectOf("msr-write", decision.verdict);
    let note = `MSR ${hex(index)} <- ${hex(value)}`;
    if (effect.perform) {
      const ok = this.d.setMsr?.(index, value) ?? false;
      this.d.setMsrResult?.(ok ? 0 : 1);
      if (!ok) note += "; KVM refused the value: #GP in the guest";
    } else if (effect.fault) {
      this.d.setMsrResult?.(1);
      note += "; #GP in the guest";
    } else {
      this.d.setMsrResult?.(0); // dropped: the guest believes it wrote
      note += "; dropped";
    }
    this.post(ctx, decision, t0, note, { msrIndex: index });
    return fateAction(effect.vm, `write of MSR ${hex(index)}`);
  }

  private copyToShadow(): void {
    const sh = this.d.shadow;
    if (!sh) return;
    let at = 0;
    for (const r of this.d.regions) {
      sh.set(this.d.memory.read(r.start, r.end - r.start), at);
      at += r.end - r.start;
    }
  }

  /** A performed write, in the shadow too (the part of it inside the regions). */
  private shadowWrite(gpa: number, data: Uint8Array): void {
    const sh = this.d.shadow;
    if (!sh) return;
    let at = 0;
    for (const r of this.d.regions) {
      const from = Math.max(gpa, r.start);
      const to = Math.min(gpa + data.length, r.end);
      if (from < to) sh.set(data.subarray(from - gpa, to - gpa), at + (from - r.start));
      at += r.end - r.start;
    }
  }

  /** A context record of `kind` for this vCPU, numbered. */
  context(kind: EventKind, regs: Regs, sregs: Sregs): ContextRecord {
    return capturedContext(kind, regs, sregs, { seq: ++this.seq, vmId: this.d.vmId, vcpu: this.d.vcpuId });
  }

  /** Post the event of a decided record (the first MAX_POSTED_EVENTS; the rest are counted). */
  post(
    ctx: ContextRecord,
    decision: DecisionResult,
    t0: bigint,
    note: string,
    fields: Partial<Pick<CapturedEvent, "gpa" | "regionId" | "vector" | "object" | "msrIndex">> = {},
  ): void {
    if (ctx.seq - (this.d.firstSeq ?? 0) > MAX_POSTED_EVENTS) {
      this.counters.eventsNotPosted++;
      return;
    }
    this.d.event({
      seq: ctx.seq,
      kind: ctx.kind,
      vmId: ctx.vmId,
      vcpu: ctx.vcpu,
      regionId: 0,
      gpa: 0,
      rip: ctx.regs.rip,
      vector: 0,
      object: 0,
      msrIndex: 0,
      ...fields,
      note,
      verdict: decision.verdict,
      decidedBy: decision.decidedBy,
      rule: decision.rule,
      reason: decision.reason,
      latencyUs: Number(this.now() - t0) / 1000,
      timeMs: Date.now(),
      record: encodeContext(ctx),
    });
  }
}

/**
 * Decide a captured record, post its event, and what the vCPU does next: the
 * verdict's fate for the VM (`what` names the event). The one sequence the
 * oops, panic and hang captures share.
 */
export function settleEvent(
  decider: Decider,
  events: Pick<LinuxSeal, "post">,
  ctx: ContextRecord,
  t0: bigint,
  note: string,
  what: string,
  fields?: Parameters<LinuxSeal["post"]>[4],
): ExitAction {
  const decision = decider.decide(ctx);
  events.post(ctx, decision, t0, note, fields);
  return fateAction(effectOf(ctx.kind, decision.verdict).vm, what);
}
