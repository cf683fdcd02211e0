/**
 * Catching a stock Linux kernel's oopses and panics first, from the VMM:
 * hardware execute breakpoints on `__die` (page faults, BUG, invalid opcode,
 * … go through it before the kernel prints anything), `die_addr` (general
 * protection faults: it prints the oops itself, without __die) and `panic`,
 * found by their symbols. At the breakpoint the arguments are in the
 * registers (System V ABI):
 *  - `__die(const char *str, struct pt_regs *regs, long err)` and
 *    `die_addr(str, regs, err, gp_addr)`: the frame the
 *    exception saved is decoded from `struct pt_regs` in guest memory, as
 *    hostile input (read through the guest's page tables, bounded, checked);
 *  - `panic(const char *fmt, …)`: the format string names the panic.
 * An oops is a `cpu-exception` event with the faulting registers; a panic is
 * a `crash` event. Each is decided by the policy: the default logs an oops
 * (the kernel's own oops handling goes on: it kills the task) and restarts
 * on a panic (the VM stops before the kernel prints its panic message).
 * After a capture the breakpoint is stepped over (exception-capture.ts).
 * A third breakpoint, on the system-call entry, arms the seal (linux-seal.ts).
 */
import { CONTEXT_FLAGS } from "../abi/guest-abi.js";
import type { Decider } from "../decide/decider.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import type { Regs, Sregs } from "../kvm/structs.js";
import type { ExitAction } from "../vmm/dispatcher.js";
import type { ExceptionCapture } from "../vmm/exception-capture.js";
import { readVirtual } from "../vmm/paging.js";
import { type LinuxSeal, settleEvent } from "./linux-seal.js";

/** struct pt_regs on x86-64: 21 quadwords, in this order. */
export const PT_REGS_FIELDS = [
  "r15",
  "r14",
  "r13",
  "r12",
  "rbp",
  "rbx",
  "r11",
  "r10",
  "r9",
  "r8",
  "rax",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "orig_rax",
  "rip",
  "cs",
  "eflags",
  "rsp",
  "ss",
] as const;
export const PT_REGS_SIZE = PT_REGS_FIELDS.length * 8;

/** Strings read from the guest at most (the oops or panic message). */
export const MAX_GUEST_STRING = 160;

/** The vector an oops is for, from the name __die is given (arch/x86/kernel/traps.c, fault.c). */
const VECTOR_BY_NAME: ReadonlyArray<readonly [RegExp, number]> = [
  [/^divide error/, 0],
  [/^int3/, 3],
  [/^invalid opcode/, 6],
  [/^double fault/, 8],
  [/^stack segment/, 12],
  [/^general protection/, 13],
  [/^Oops/, 14],
];

export interface LinuxCrashDeps {
  capture: ExceptionCapture;
  /** The addresses of __die, die_addr and panic (their breakpoints are the capture's). */
  die?: bigint;
  dieAddr?: bigint;
  panic?: bigint;
  /**
   * A breakpoint that arms the seal (the system-call entry: the first
   * SYSCALL is user space's): `arm()` says whether it armed; once it has,
   * the breakpoint is taken off.
   */
  armAt?: { address: bigint; arm: () => boolean };
  memory: GuestMemory;
  getRegs(): Regs;
  getSregs(): Sregs;
  decider: Decider;
  /** Numbers and posts the events (the seal's numbering, so one sequence per guest). */
  events: Pick<LinuxSeal, "context" | "post">;
  /** Give the guest a #DB of its own (a task's TF, int1, its debug registers): it is the guest's to handle. */
  injectDebug: () => void;
  now?: () => bigint;
}

export interface LinuxCrashCounters {
  oopses: number;
  panics: number;
  /** pt_regs frames that could not be read or made no sense. */
  badFrames: number;
  /** Debug exits during a step over a breakpoint that were not the step. */
  stepsLost: number;
  /** #DBs of the guest's own, handed back to it. */
  guestDebugs: number;
}

const hex = (n: bigint | number) => `0x${n.toString(16)}`;

/** A NUL-terminated string at `va`, printable ASCII only, at most MAX_GUEST_STRING bytes. */
export function guestString(memory: GuestMemory, cr3: bigint, va: bigint): string {
  const raw = readVirtual(memory, cr3, va, MAX_GUEST_STRING);
  const end = raw.indexOf(0);
  return Buffer.from(raw.subarray(0, end < 0 ? raw.length : end))
    .toString("latin1")
    .replace(/[^\x20-\x7e]/g, "?");
}

/** Decode struct pt_regs; undefined when it cannot be read whole or is not a kernel frame. */
export function decodePtRegs(bytes: Uint8Array): Record<(typeof PT_REGS_FIELDS)[number], bigint> | undefined {
  if (bytes.length !== PT_REGS_SIZE) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = {} as Record<(typeof PT_REGS_FIELDS)[number], bigint>;
  PT_REGS_FIELDS.forEach((f, i) => {
    out[f] = v.getBigUint64(8 * i, true);
  });
  // A frame the CPU saved: a 16-bit CS and SS, RFLAGS with its always-one bit 1.
  if (out.cs > 0xffffn || out.ss > 0xffffn || (out.eflags & 2n) === 0n) return undefined;
  return out;
}

export class LinuxCrashCapture {
  readonly counters: LinuxCrashCounters = { oopses: 0, panics: 0, badFrames: 0, stepsLost: 0, guestDebugs: 0 };
  private readonly now: () => bigint;

  constructor(private readonly d: LinuxCrashDeps) {
    this.now = d.now ?? process.hrtime.bigint;
  }

  /** Put the breakpoints on. */
  arm(): void {
    this.d.capture.arm();
  }

  /** A KVM_EXIT_DEBUG: ours (a breakpoint or the step over one), or the guest's own #DB, handed back to it. */
  onDebug(pc: bigint, dr6: bigint): ExitAction {
    const c = this.d.capture;
    const kind = c.classify(pc, dr6);
    if (kind === "stepped") {
      c.stepped();
      return { kind: "continue" };
    }
    if (kind === "step-lost") {
      // A debug exit while stepping that is not the step (the guest's own #DB): re-arm at once,
      // so no oops passes uncaptured, and give the guest its #DB.
      this.counters.stepsLost++;
      c.stepped();
      this.d.injectDebug();
      return { kind: "continue" };
    }
    if (kind === "other") {
      // The guest's own #DB (a task's TF, int1, its debug registers): it is the guest's to handle.
      this.counters.guestDebugs++;
      this.d.injectDebug();
      return { kind: "continue" };
    }
    const d = this.d;
    let action: ExitAction | undefined;
    if (pc === d.panic) action = this.onPanic();
    else if (pc === d.die) action = this.onDie("__die");
    else if (pc === d.dieAddr) action = this.onDie("die_addr");
    else if (d.armAt && pc === d.armAt.address && d.armAt.arm()) c.retire(pc);
    c.stepOver();
    return action ?? { kind: "continue" };
  }

  private onDie(entry: "__die" | "die_addr"): ExitAction {
    const t0 = this.now();
    this.counters.oopses++;
    const regs = this.d.getRegs();
    const sregs = this.d.getSregs();
    const name = guestString(this.d.memory, sregs.cr3, regs.rdi);
    const frame = decodePtRegs(readVirtual(this.d.memory, sregs.cr3, regs.rsi, PT_REGS_SIZE));
    const vector = VECTOR_BY_NAME.find(([re]) => re.test(name))?.[1] ?? 255;
    // The context is the faulting frame's registers (the state the exception interrupted).
    const at: Regs = frame
      ? {
          ...regs,
          rax: frame.rax,
          rbx: frame.rbx,
          rcx: frame.rcx,
          rdx: frame.rdx,
          rsi: frame.rsi,
          rdi: frame.rdi,
          rsp: frame.rsp,
          rbp: frame.rbp,
          r8: frame.r8,
          r9: frame.r9,
          r10: frame.r10,
          r11: frame.r11,
          r12: frame.r12,
          r13: frame.r13,
          r14: frame.r14,
          r15: frame.r15,
          rip: frame.rip,
          rflags: frame.eflags,
        }
      : regs;
    const ctx = this.d.events.context("cpu-exception", at, sregs);
    ctx.vector = vector;
    ctx.errorCode = BigInt.asUintN(64, regs.rdx);
    if (frame) ctx.cpl = Number(frame.cs & 3n);
    else {
      this.counters.badFrames++;
      ctx.flags |= CONTEXT_FLAGS.FRAME_INVALID;
    }
    const note = frame
      ? `kernel oops "${name}" at ${hex(frame.rip)} (cpl ${frame.cs & 3n}, error ${hex(regs.rdx)}, cr2 ${hex(sregs.cr2)}), captured at ${entry} before the kernel printed it`
      : `kernel oops "${name}": its pt_regs at ${hex(regs.rsi)} could not be read`;
    return settleEvent(this.d.decider, this.d.events, ctx, t0, note, `kernel oops "${name}"`, { vector });
  }

  private onPanic(): ExitAction {
    const t0 = this.now();
    this.counters.panics++;
    const regs = this.d.getRegs();
    const sregs = this.d.getSregs();
    const message = guestString(this.d.memory, sregs.cr3, regs.rdi);
    const ctx = this.d.events.context("crash", regs, sregs);
    const note = `kernel panic "${message}", captured at panic() before the kernel printed it`;
    return settleEvent(this.d.decider, this.d.events, ctx, t0, note, `kernel panic "${message}"`);
  }
}
