/**
 * The hypercall port: EAX holds the number, RDI/RSI/RCX the arguments; the
 * result goes back in RAX. Handlers are registered by number by the layers
 * that own them (health management, sealing, …).
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import type { Regs } from "../kvm/structs.js";
import { CONTINUE, type DeviceAction, type PortDevice } from "./bus.js";

/** The vCPU state a hypercall may read and change. */
export interface HypercallCpu {
  getRegs(): Regs;
  setRegs(r: Regs): void;
  cpl(): number;
}

export interface HypercallArgs {
  nr: number;
  a0: bigint;
  a1: bigint;
  a2: bigint;
  cpl: number;
}

/** Returns the value for RAX, or a DeviceAction to stop the VM. */
export type HypercallHandler = (args: HypercallArgs) => bigint | DeviceAction;

export class Hypercalls implements PortDevice {
  readonly name = "hypercall";
  readonly firstPort = ABI_CONSTANTS.PORT_HYPERCALL;
  readonly lastPort = ABI_CONSTANTS.PORT_HYPERCALL;
  private readonly handlers = new Map<number, HypercallHandler>();
  count = 0;

  constructor(private readonly cpu: HypercallCpu) {
    this.handlers.set(ABI_CONSTANTS.HC_NOP, () => BigInt(ABI_CONSTANTS.HC_OK));
  }

  on(nr: number, h: HypercallHandler): void {
    this.handlers.set(nr, h);
  }

  ioOut(): DeviceAction {
    this.count++;
    const regs = this.cpu.getRegs();
    const nr = Number(regs.rax & 0xffffffffn);
    const h = this.handlers.get(nr);
    const result = h
      ? h({ nr, a0: regs.rdi, a1: regs.rsi, a2: regs.rcx, cpl: this.cpu.cpl() })
      : BigInt(ABI_CONSTANTS.HC_EINVAL);
    if (typeof result !== "bigint") return result;
    regs.rax = result;
    this.cpu.setRegs(regs);
    return CONTINUE;
  }

  ioIn(_port: number, _size: number, _count: number, data: Uint8Array): void {
    data.fill(0xff);
  }
}
