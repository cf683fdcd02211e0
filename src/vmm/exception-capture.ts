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

/** DR7 for execute breakpoints on DR0..DR(n-1): local enable bit 2i each, type and length 0, bit 10. */
export function dr7Exec(n: number): bigint {
  let dr7 = 0x400n;
  for (let i = 0; i < n; i++) dr7 |= 1n << BigInt(2 * i);
  return dr7;
}

/** DR6 bit 0: breakpoint 0 (our DR0) was hit. */
export const DR6_B0 = 1n;
/** DR6 bits 3:0: which of DR0..DR3 was hit. */
export const DR6_B0_3 = 0xfn;
/** Hardware breakpoints an x86 CPU has. */
export const MAX_BREAKPOINTS = 4;
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
  private list: bigint[];

  constructor(
    entry: bigint | readonly bigint[],
    private readonly cpu: DebugControl,
    private readonly flags: GuestDebugFlags,
  ) {
    this.list = typeof entry === "bigint" ? [entry] : [...entry];
    if (this.list.length === 0 || this.list.length > MAX_BREAKPOINTS) {
      throw new RangeError(`${this.list.length} breakpoints: 1 to ${MAX_BREAKPOINTS}`);
    }
  }

  /** The addresses with a breakpoint (DR0 onwards). */
  get entries(): readonly bigint[] {
    return this.list;
  }

  /**
   * Take the breakpoint off `addr` from the next arm() on (after the step
   * over it); the last one stays.
   */
  retire(addr: bigint): void {
    if (this.list.length > 1) this.list = this.list.filter((e) => e !== addr);
  }

  /** The first (for gv-kernel, the only) entry. */
  get entry(): bigint {
    return this.entries[0] as bigint;
  }

  /** Which entry `pc` is (-1: none). */
  entryAt(pc: bigint): number {
    return this.entries.indexOf(pc);
  }

  get armed(): boolean {
    return this.state === "armed";
  }

  /** Put the execute breakpoint on the entry. */
  arm(): void {
    const f = this.flags;
    const dr = [0n, 0n, 0n, 0n, 0n, 0n, 0n, dr7Exec(this.entries.length)];
    this.entries.forEach((e, i) => {
      dr[i] = e;
    });
    this.cpu.setGuestDebug(f.enable | f.useHwBp, dr);
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
      if (this.entryAt(pc) >= 0) return "exception-entry";
      return (dr6 & DR6_BS) !== 0n ? "stepped" : "step-lost";
    }
    const hit = (dr6 & DR6_B0_3 & ((1n << BigInt(this.entries.length)) - 1n)) !== 0n;
    if (this.state === "armed" && (this.entryAt(pc) >= 0 || hit)) return "exception-entry";
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
