/**
 * COM1, 16550-style, output only: bytes written to THR become lines of the
 * VM's serial log. String output (`rep outsb`) arrives in one exit. The line
 * length and the number of bytes kept are bounded (the guest is hostile).
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import { CONTINUE, type DeviceAction, type PortDevice } from "./bus.js";
import { ConsoleLines } from "./console-lines.js";

const THR = 0;
const LSR = 5;
const LSR_THR_EMPTY = 0x20;
const LSR_TX_IDLE = 0x40;

export class Serial implements PortDevice {
  readonly name = "com1";
  readonly firstPort = ABI_CONSTANTS.PORT_COM1;
  readonly lastPort = ABI_CONSTANTS.PORT_COM1 + 7;
  private readonly regs = new Uint8Array(8);
  private readonly out: ConsoleLines;

  /** @param onLine receives each complete line (without the newline). */
  constructor(onLine: (line: string) => void) {
    this.out = new ConsoleLines(onLine);
  }

  ioOut(port: number, size: number, count: number, data: Uint8Array): DeviceAction {
    const reg = port - this.firstPort;
    if (reg !== THR) {
      this.regs[reg] = data[0] ?? 0;
      return CONTINUE;
    }
    // Each element is `size` bytes; a UART takes the low byte of each.
    for (let i = 0; i < count; i++) this.out.put(data[i * size] ?? 0);
    return CONTINUE;
  }

  ioIn(port: number, _size: number, _count: number, data: Uint8Array): void {
    const reg = port - this.firstPort;
    data.fill(reg === LSR ? LSR_THR_EMPTY | LSR_TX_IDLE : reg === THR ? 0 : (this.regs[reg] ?? 0));
  }

  get bytesOut(): number {
    return this.out.bytesOut;
  }

  /** Emit a partial line (at the end of a run). */
  flush(): void {
    this.out.flush();
  }
}
