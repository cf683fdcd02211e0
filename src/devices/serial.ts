/**
 * COM1, 16550-style, output only: bytes written to THR become lines of the
 * VM's serial log. String output (`rep outsb`) arrives in one exit. The line
 * length and the number of bytes kept are bounded (the guest is hostile).
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import { CONTINUE, type DeviceAction, type PortDevice } from "./bus.js";

const THR = 0;
const LSR = 5;
const LSR_THR_EMPTY = 0x20;
const LSR_TX_IDLE = 0x40;
export const MAX_LINE = 4096;

export class Serial implements PortDevice {
  readonly name = "com1";
  readonly firstPort = ABI_CONSTANTS.PORT_COM1;
  readonly lastPort = ABI_CONSTANTS.PORT_COM1 + 7;
  private readonly regs = new Uint8Array(8);
  private line: number[] = [];
  bytesOut = 0;

  /** @param onLine receives each complete line (without the newline). */
  constructor(private readonly onLine: (line: string) => void) {}

  ioOut(port: number, size: number, count: number, data: Uint8Array): DeviceAction {
    const reg = port - this.firstPort;
    if (reg !== THR) {
      this.regs[reg] = data[0] ?? 0;
      return CONTINUE;
    }
    // Each element is `size` bytes; a UART takes the low byte of each.
    for (let i = 0; i < count; i++) this.put(data[i * size] ?? 0);
    return CONTINUE;
  }

  ioIn(port: number, _size: number, _count: number, data: Uint8Array): void {
    const reg = port - this.firstPort;
    data.fill(reg === LSR ? LSR_THR_EMPTY | LSR_TX_IDLE : reg === THR ? 0 : (this.regs[reg] ?? 0));
  }

  private put(b: number): void {
    this.bytesOut++;
    if (b === 0x0a) {
      this.flush();
      return;
    }
    if (b === 0x0d) return;
    this.line.push(b);
    if (this.line.length >= MAX_LINE) this.flush();
  }

  /** Emit a partial line (at the end of a run). */
  flush(): void {
    if (this.line.length === 0) return;
    const text = Buffer.from(this.line)
      .toString("latin1")
      .replace(/[^\x20-\x7e\t]/g, "?");
    this.line = [];
    this.onLine(text);
  }
}
