/**
 * Hang detection for a stock Linux guest, from the VMM. An idle Linux vCPU
 * can stay inside KVM_RUN for a long time (its HLT, timer and interrupts are
 * KVM's in-kernel work), so "no exit for a while" alone is not a hang. The
 * owner's watchdog (VcpuThread.watchHangs) kicks the vCPU out of a run that
 * made no exit for a sample period; each such kick is a sample here. The
 * vCPU is hung when every sample for `limitMs` found it in ring 0 with
 * interrupts disabled (RFLAGS.IF clear) and no exit in between: a kernel
 * spinning with interrupts off, which nothing inside the guest can end. A
 * kernel spinning with interrupts on is the kernel's own soft-lockup
 * detector's to report (with `softlockup_panic=1` on the command line that
 * report is a panic, caught at panic()).
 *
 * The hang is a `hang` event, decided by the policy (the default restarts).
 */
import type { Decider } from "../decide/decider.js";
import { cplOf, type Regs, type Sregs } from "../kvm/structs.js";
import type { ExitAction } from "../vmm/dispatcher.js";
import { type LinuxSeal, settleEvent } from "./linux-seal.js";

/** RFLAGS.IF: maskable interrupts enabled. */
const RFLAGS_IF = 0x200n;

export interface LinuxHangDeps {
  /** A vCPU in ring 0 with interrupts off, with no exit, for this long is hung. */
  limitMs: number;
  getRegs(): Regs;
  getSregs(): Sregs;
  /** The vCPU's exits so far (kicks excluded): any exit between two samples is progress. */
  progress(): number;
  decider: Decider;
  /** Numbers and posts the events (the seal's numbering, so one sequence per guest). */
  events: Pick<LinuxSeal, "context" | "post">;
  nowMs?: () => number;
  now?: () => bigint;
}

export interface LinuxHangCounters {
  /** Watchdog samples taken (kicks out of a run with no exit). */
  hangSamples: number;
  /** Hangs found (each an event). */
  hangs: number;
}

export class LinuxHangWatch {
  readonly counters: LinuxHangCounters = { hangSamples: 0, hangs: 0 };
  /** Since when every sample found the vCPU stuck, and at which exit count. */
  private stuck: { sinceMs: number; exits: number } | undefined;
  private readonly nowMs: () => number;
  private readonly now: () => bigint;

  constructor(private readonly d: LinuxHangDeps) {
    this.nowMs = d.nowMs ?? Date.now;
    this.now = d.now ?? process.hrtime.bigint;
  }

  /** The watchdog kicked the vCPU out of a run with no exit: look at where it is. */
  sample(): ExitAction {
    this.counters.hangSamples++;
    const regs = this.d.getRegs();
    const sregs = this.d.getSregs();
    const exits = this.d.progress();
    const now = this.nowMs();
    const spinning = (regs.rflags & RFLAGS_IF) === 0n && cplOf(sregs) === 0;
    if (!spinning) {
      this.stuck = undefined;
      return { kind: "continue" };
    }
    if (!this.stuck || this.stuck.exits !== exits) {
      this.stuck = { sinceMs: now, exits };
      return { kind: "continue" };
    }
    const forMs = now - this.stuck.sinceMs;
    if (forMs < this.d.limitMs) return { kind: "continue" };
    this.stuck = undefined;
    this.counters.hangs++;
    const t0 = this.now();
    const ctx = this.d.events.context("hang", regs, sregs);
    const detail = `kernel hung: ring 0 with interrupts disabled and no exit for ${forMs} ms, at RIP 0x${regs.rip.toString(16)}`;
    return settleEvent(this.d.decider, this.d.events, ctx, t0, detail, detail);
  }
}
