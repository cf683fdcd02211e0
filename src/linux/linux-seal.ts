/**
 * Sealing a stock Linux guest's code and read-only data, from the VMM, with
 * no guest patch (docs/linux-guests.md, "Sealing").
 *
 * Linux patches its own text while it boots (alternatives, jump labels,
 * ftrace init) and makes its read-only data read-only in mark_rodata_ro(),
 * just before it runs /init. So the seal is armed at the first exit (or kick)
 * that finds the vCPU in ring 3: user space has started, init's self-patching
 * is over. Arming replaces the RAM slot by slots that back the protected
 * pages read-only (KVM_MEM_READONLY), while the vCPU is out of KVM_RUN.
 *
 * From then on a guest write to a protected page exits as an MMIO write.
 * Bytes outside the protected ranges that share such a page are written for
 * the guest; a write to protected bytes is a `protected-write` event, decided
 * by the policy (default: deny, the write is dropped and the guest goes on).
 * Reads never exit. Dependencies are injected: tested without KVM.
 */
import { CONTEXT_FLAGS } from "../abi/guest-abi.js";
import type { Decider } from "../decide/decider.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import { cplOf, type Regs, type Sregs } from "../kvm/structs.js";
import { capturedContext, encodeContext } from "../model/context.js";
import type { ProtectedRegion } from "../model/regions.js";
import { effectOf } from "../vmm/act.js";
import type { CapturedEvent, ExitAction } from "../vmm/dispatcher.js";
import { readVirtual } from "../vmm/paging.js";
import { ProtectionMap, planMemorySlots, type SlotPlan } from "../vmm/protection.js";
import type { ProtectionArmed } from "../vmm/vcpu-protocol.js";
import { locateStore } from "../vmm/write-site.js";

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
}

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
}

const hex = (n: bigint | number) => `0x${n.toString(16)}`;

export class LinuxSeal {
  readonly counters: LinuxSealCounters = {
    armChecks: 0,
    protectedWrites: 0,
    sharedPageWrites: 0,
    performedWrites: 0,
    eventsNotPosted: 0,
  };
  private readonly map: ProtectionMap;
  private isArmed = false;
  private seq = 0;
  private readonly now: () => bigint;

  constructor(private readonly d: LinuxSealDeps) {
    this.map = new ProtectionMap(d.regions, d.memory.size);
    this.now = d.now ?? process.hrtime.bigint;
  }

  get armed(): boolean {
    return this.isArmed;
  }

  /**
   * Before an exit is handled: arm the seal when the guest is in ring 3.
   * `exits` is the exit count so far (for the record). True when it armed now.
   */
  check(exits: number): boolean {
    if (this.isArmed) return false;
    this.counters.armChecks++;
    const sregs = this.d.getSregs();
    if (cplOf(sregs) !== 3) return false;
    const t0 = this.now();
    const slots = planMemorySlots(this.d.memory.size, this.d.regions);
    // The bytes as they are now: the owner compares them at the end.
    const hashes = this.map.hash(this.d.memory);
    this.d.reslot(slots);
    this.isArmed = true;
    const ro = slots.filter((s) => s.readonly);
    this.d.armed({
      exits,
      timeMs: Date.now(),
      cpl: cplOf(sregs),
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
    const ctx = capturedContext("protected-write", { ...regs, rip }, sregs, {
      seq: ++this.seq,
      vmId: this.d.vmId,
      vcpu: this.d.vcpuId,
    });
    ctx.insn = readVirtual(this.d.memory, sregs.cr3, rip, 16);
    if (ctx.insn.length > 0) ctx.flags |= CONTEXT_FLAGS.INSN_VALID;
    if (!store) ctx.flags |= CONTEXT_FLAGS.WRITER_UNKNOWN;
    ctx.regionId = target.region.id;
    ctx.regionOffset = target.offset;
    ctx.gpa = gpa;
    ctx.data = data.slice(0, 8);
    const decision = this.d.decider.decide(ctx);
    const effect = effectOf("protected-write", decision.verdict);
    const notes = [
      `${target.region.name}+${hex(target.offset)}`,
      `cpl ${ctx.cpl}`,
      `cr3 ${hex(sregs.cr3)}`,
      `${data.length} bytes ${Buffer.from(data).toString("hex")}`,
      store ? `writer ${hex(store.site.rip)}` : `writer not found; resumes at ${hex(regs.rip)}`,
    ];
    if (effect.perform) {
      this.counters.performedWrites++;
      this.d.memory.write(gpa, data);
    }
    // A fault (#GP at the writer) is not raised for a Linux guest yet: the write is dropped.
    if (effect.fault) notes.push("fault verdicts are not applied to Linux guests yet: dropped");
    if (this.seq <= MAX_POSTED_EVENTS) {
      this.d.event({
        seq: ctx.seq,
        kind: "protected-write",
        vmId: ctx.vmId,
        vcpu: ctx.vcpu,
        regionId: ctx.regionId,
        gpa,
        rip,
        vector: 0,
        object: 0,
        msrIndex: 0,
        note: notes.join("; "),
        verdict: decision.verdict,
        decidedBy: decision.decidedBy,
        rule: decision.rule,
        reason: decision.reason,
        latencyUs: Number(this.now() - t0) / 1000,
        timeMs: Date.now(),
        record: encodeContext(ctx),
      });
    } else this.counters.eventsNotPosted++;
    switch (effect.vm) {
      case "runs":
        return { kind: "continue" };
      case "paused":
        return { kind: "pause", detail: `protected write at ${hex(gpa)}: paused by verdict` };
      case "halted":
        return { kind: "stop", outcome: "halt", detail: `protected write at ${hex(gpa)}: halted by verdict` };
      case "restarted":
        return { kind: "stop", outcome: "restart", detail: `protected write at ${hex(gpa)}: restart by verdict` };
      case "crashed":
        return { kind: "stop", outcome: "crash", detail: `protected write at ${hex(gpa)}` };
    }
  }
}
