/**
 * First-time capture of guest CPU exceptions with a hardware breakpoint on
 * the guest's common exception entry (PLATFORM.md): the breakpoint fires
 * before the entry's first instruction, with the exception frame on the
 * guest stack. Setting RFLAGS.RF does not step over it on every host, so after
 * a capture the breakpoint is disabled, the vCPU single-steps one instruction,
 * and the breakpoint is re-armed (two extra exits per exception).
 */

/** KVM_SET_GUEST_DEBUG as the capture needs it. */
export interface DebugControl {
  setGuestDebug(control: number, debugregs?: readonly bigint[]): void;
}

/** The KVM_GUESTDBG_* flags (from the native layer; injected for tests). */
export interface GuestDebugFlags {
  enable: number;
  singlestep: number;
  useHwBp: number;
}

/** DR7: local enable of DR0, execute breakpoint, length 1 (bits 19:16 = 0), bit 10 reads as 1. */
export const DR7_EXEC_DR0 = 0x401n;

/** DR6 bit 0: breakpoint 0 (our DR0) was hit. */
export const DR6_B0 = 1n;
/** DR6 bit 14: the exit is a single step (KVM reports it with the step, as measured in the lab). */
export const DR6_BS = 1n << 14n;

/**
 * exception-entry: our breakpoint (capture); stepped: the step over it ended;
 * step-lost: a debug exit while stepping that is not the step (the guest's
 * own #DB): the step is abandoned and the breakpoint re-armed; other: not ours.
 */
export type DebugExitKind = "exception-entry" | "stepped" | "step-lost" | "other";

export class ExceptionCapture {
  private state: "off" | "armed" | "stepping" = "off";
  /** Exceptions captured. */
  captures = 0;

  constructor(
    readonly entry: bigint,
    private readonly cpu: DebugControl,
    private readonly flags: GuestDebugFlags,
  ) {}

  get armed(): boolean {
    return this.state === "armed";
  }

  /** Put the execute breakpoint on the entry. */
  arm(): void {
    const f = this.flags;
    this.cpu.setGuestDebug(f.enable | f.useHwBp, [this.entry, 0n, 0n, 0n, 0n, 0n, 0n, DR7_EXEC_DR0]);
    this.state = "armed";
  }

  /**
   * What a KVM_EXIT_DEBUG at `pc` means. While armed, DR6.B0 or the entry's
   * address marks our breakpoint. While stepping, the step is the exit with
   * DR6.BS away from the entry; an exit at the entry is a new exception that
   * reached it during the step (captured too); anything else is not the step.
   */
  classify(pc: bigint, dr6 = 0n): DebugExitKind {
    if (this.state === "stepping") {
      if (pc === this.entry) return "exception-entry";
      return (dr6 & DR6_BS) !== 0n ? "stepped" : "step-lost";
    }
    if (this.state === "armed" && (pc === this.entry || (dr6 & DR6_B0) !== 0n)) return "exception-entry";
    return "other";
  }

  /** After a capture: let the entry's first instruction run, with the breakpoint off. */
  stepOver(): void {
    this.captures++;
    const f = this.flags;
    this.cpu.setGuestDebug(f.enable | f.singlestep);
    this.state = "stepping";
  }

  /** After the single step: breakpoint back on. */
  stepped(): void {
    this.arm();
  }
}
