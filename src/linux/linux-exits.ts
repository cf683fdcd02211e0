/**
 * What a Linux guest's exits mean. The in-kernel irqchip and PIT answer the
 * interrupt controllers and the timer, and a halted vCPU waits inside KVM for
 * its next interrupt, so what reaches the VMM is port I/O for the devices on
 * the bus, accesses to guest-physical addresses with no RAM behind them, and
 * the ways a run ends. Injected dependencies, so it is tested without KVM.
 */
import type { IoBus } from "../devices/bus.js";
import type { VcpuExit } from "../kvm/exits.js";
import type { Regs } from "../kvm/structs.js";
import type { ExitAction } from "../vmm/dispatcher.js";

export interface LinuxExitDeps {
  bus: IoBus;
  /** The registers at this exit (for the RIP in a crash report). */
  getRegs(): Regs;
  /** Answer an MSR exit: 1 = #GP. */
  setMsrResult(error: 0 | 1): void;
  setRegs(r: Regs): void;
  /** Deliver a CPU exception through the guest's IDT. */
  injectException(vector: number): void;
  /** Withdraw the exception KVM queued with this exit, when it is `vector`. */
  cancelException(vector: number): void;
  /** True once the guest asked for a reset (the i8042 device saw it). */
  resetRequested(): boolean;
}

/** KVM_INTERNAL_ERROR_EMULATION, and its flag saying the instruction bytes follow (data[1]: size, then bytes). */
const INTERNAL_ERROR_EMULATION = 1;
const EMULATION_FLAG_INSTRUCTION_BYTES = 1n;
const INT3 = 0xcc;
/** RFLAGS.AC, which CLAC clears and STAC sets. */
const RFLAGS_AC = 1n << 18n;
const VECTOR_UD = 6;
const VECTOR_BP = 3;

/** The instruction bytes KVM reported with an emulation failure (empty when it sent none). */
export function emulationFailureBytes(data: readonly bigint[]): Uint8Array {
  if (data.length < 2 || ((data[0] ?? 0n) & EMULATION_FLAG_INSTRUCTION_BYTES) === 0n) return new Uint8Array(0);
  const raw = new Uint8Array(8 * (data.length - 1));
  const v = new DataView(raw.buffer);
  data.slice(1).forEach((q, i) => {
    v.setBigUint64(8 * i, q, true);
  });
  const size = Math.min(raw[0] ?? 0, 15, raw.length - 1);
  return raw.subarray(1, 1 + size);
}

/** KVM_SYSTEM_EVENT_* types. */
const SYSTEM_EVENT_SHUTDOWN = 1;
const SYSTEM_EVENT_RESET = 2;
const SYSTEM_EVENT_CRASH = 3;

export type LinuxExitCounters = Record<
  | "exits"
  | "io"
  | "mmioRead"
  | "mmioWrite"
  | "kicks"
  | "msr"
  | "debug"
  | "unhandledIn"
  | "unhandledOut"
  | "int3"
  | "clacStac",
  number
>;

const CONTINUE: ExitAction = { kind: "continue" };

const hex = (n: bigint | number) => `0x${n.toString(16)}`;

export class LinuxExitHandler {
  readonly counters: LinuxExitCounters = {
    exits: 0,
    io: 0,
    mmioRead: 0,
    mmioWrite: 0,
    kicks: 0,
    msr: 0,
    debug: 0,
    unhandledIn: 0,
    unhandledOut: 0,
    int3: 0,
    clacStac: 0,
  };

  constructor(private readonly d: LinuxExitDeps) {}

  dispatch(exit: VcpuExit): ExitAction {
    const c = this.counters;
    if (exit.kind === "interrupted") {
      c.kicks++;
      return CONTINUE;
    }
    c.exits++;
    switch (exit.kind) {
      case "io-out": {
        c.io++;
        const a = this.d.bus.out(exit.port, exit.size, exit.count, exit.data);
        c.unhandledOut = this.d.bus.unhandledOut;
        if (a.kind === "continue") return CONTINUE;
        if (this.d.resetRequested()) {
          return { kind: "stop", outcome: "restart", detail: "the guest reset the machine (i8042 reset, port 0x64)" };
        }
        return {
          kind: "stop",
          outcome: "exit",
          code: a.code,
          detail: `the guest wrote ${a.code} to the debug-exit port`,
        };
      }
      case "io-in":
        c.io++;
        this.d.bus.in(exit.port, exit.size, exit.count, exit.data);
        c.unhandledIn = this.d.bus.unhandledIn;
        return CONTINUE;
      case "mmio-read":
        c.mmioRead++;
        exit.data.fill(0xff); // no device: the bus floats high
        return CONTINUE;
      case "mmio-write":
        c.mmioWrite++;
        return CONTINUE;
      case "msr-read":
      case "msr-write":
        // No MSR filter is installed for a Linux guest; an MSR exit is KVM's "unknown MSR": #GP, as on hardware.
        c.msr++;
        this.d.setMsrResult(1);
        return CONTINUE;
      case "debug":
        c.debug++;
        return CONTINUE;
      case "hlt":
        return this.stop("halt", "the guest halted with no in-kernel local APIC to wake it (KVM_EXIT_HLT)");
      case "shutdown":
        return this.stop("crash", "triple fault (KVM_EXIT_SHUTDOWN)");
      case "internal-error":
        if (exit.suberror === INTERNAL_ERROR_EMULATION) {
          const b = emulationFailureBytes(exit.data);
          if (b[0] === INT3) return this.deliverInt3();
          if (b[0] === 0x0f && b[1] === 0x01 && (b[2] === 0xca || b[2] === 0xcb))
            return this.completeClacStac(b[2] === 0xcb);
        }
        return this.stop(
          "crash",
          `KVM internal error, suberror ${exit.suberror}${exit.data.length ? ` (data ${exit.data.map(hex).join(" ")})` : ""}`,
        );
      case "fail-entry":
        return this.stop("crash", `KVM could not enter the guest (hardware reason ${hex(exit.reason)})`);
      case "system-event":
        if (exit.type === SYSTEM_EVENT_RESET) return this.stop("restart", "the guest reset the machine (system event)");
        if (exit.type === SYSTEM_EVENT_SHUTDOWN) return this.stop("halt", "the guest powered off (system event)");
        if (exit.type === SYSTEM_EVENT_CRASH) return this.stop("crash", "the guest crashed (system event)");
        return this.stop("crash", `unknown system event ${exit.type}`);
      case "unknown":
        return this.stop("crash", `unknown exit reason ${exit.reason}`);
    }
  }

  /**
   * An INT3 KVM could not emulate (PVM runs a stock kernel's ring 0 through
   * its instruction emulator, which lacks it; Linux uses INT3 for its
   * self-test and for every live code patch, text_poke_bp). Do what the CPU
   * does: #BP, a trap, with RIP after the instruction; and withdraw the #UD
   * KVM queued with the failure.
   */
  private deliverInt3(): ExitAction {
    this.counters.int3++;
    this.d.cancelException(VECTOR_UD);
    const r = this.d.getRegs();
    this.d.setRegs({ ...r, rip: r.rip + 1n });
    this.d.injectException(VECTOR_BP);
    return CONTINUE;
  }

  /**
   * CLAC or STAC (0f 01 ca / 0f 01 cb) KVM could not emulate (PVM's emulator
   * lacks them; Linux runs CLAC on every exception entry once SMAP is in
   * use): clear or set RFLAGS.AC and step past it, as the CPU does at CPL 0.
   */
  private completeClacStac(stac: boolean): ExitAction {
    this.counters.clacStac++;
    this.d.cancelException(VECTOR_UD);
    const r = this.d.getRegs();
    this.d.setRegs({ ...r, rip: r.rip + 3n, rflags: stac ? r.rflags | RFLAGS_AC : r.rflags & ~RFLAGS_AC });
    return CONTINUE;
  }

  private stop(outcome: "crash" | "halt" | "restart", what: string): ExitAction {
    let at = "";
    try {
      at = ` at RIP ${hex(this.d.getRegs().rip)}`;
    } catch {
      // the registers cannot be read: report without them
    }
    return { kind: "stop", outcome, detail: `${what}${at}` };
  }
}
