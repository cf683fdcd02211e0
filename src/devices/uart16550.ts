/**
 * A 16450-class UART (the 16550 register set without the FIFO) for Linux's
 * 8250 driver: IER, IIR, LCR, MCR, LSR, MSR, SCR, and DLL/DLM behind
 * LCR.DLAB. The transmitter is always ready (LSR THRE|TEMT): a byte written
 * to THR is sent at once and becomes part of the VM's console lines. There is
 * no input; MCR loopback works as on the chip (what the driver's probe checks).
 *
 * Interrupts: "transmitter empty" (IER.THRI) and "data ready" (IER.RDI, in
 * loopback) drive the line given to the constructor, level-style (raised
 * while IIR shows a pending interrupt, lowered when none is). As on the chip,
 * reading IIR while it reports THRI clears that interrupt, and writing THR
 * clears it until the byte has gone (here: at once, so it is raised again).
 *
 * Guest-controlled input is bounded: lines are cut at MAX_LINE bytes and
 * control characters are replaced.
 */
import { CONTINUE, type DeviceAction, type PortDevice } from "./bus.js";
import { ConsoleLines } from "./console-lines.js";

export const COM1_BASE = 0x3f8;
export const COM1_IRQ = 4;

/** Register offsets. */
export const UART = {
  RBR_THR_DLL: 0,
  IER_DLM: 1,
  IIR_FCR: 2,
  LCR: 3,
  MCR: 4,
  LSR: 5,
  MSR: 6,
  SCR: 7,
} as const;

export const IER_RDI = 0x01;
export const IER_THRI = 0x02;
export const IER_RLSI = 0x04;
export const IER_MSI = 0x08;
export const IIR_NO_INT = 0x01;
export const IIR_THRI = 0x02;
export const IIR_RDI = 0x04;
export const LCR_DLAB = 0x80;
export const MCR_DTR = 0x01;
export const MCR_RTS = 0x02;
export const MCR_OUT1 = 0x04;
export const MCR_OUT2 = 0x08;
export const MCR_LOOP = 0x10;
export const LSR_DR = 0x01;
export const LSR_THRE = 0x20;
export const LSR_TEMT = 0x40;
export const MSR_CTS = 0x10;
export const MSR_DSR = 0x20;
export const MSR_RI = 0x40;
export const MSR_DCD = 0x80;

export interface UartOptions {
  base?: number;
  name?: string;
  /** Each complete console line (without the newline). */
  onLine: (line: string) => void;
  /** Drive the interrupt line (absent: the UART is polled only). */
  irq?: (level: boolean) => void;
}

export class Uart16550 implements PortDevice {
  readonly name: string;
  readonly firstPort: number;
  readonly lastPort: number;
  private ier = 0;
  private lcr = 0x03;
  private mcr = 0;
  private scr = 0;
  private dll = 0x0c; // 9600 baud
  private dlm = 0;
  /** The byte waiting in RBR (loopback only), or -1. */
  private rbr = -1;
  private thrPending = false;
  private irqLevel = false;
  private readonly out: ConsoleLines;
  private readonly irq: ((level: boolean) => void) | undefined;
  /** Times the interrupt line was raised. */
  interrupts = 0;

  constructor(o: UartOptions) {
    this.firstPort = o.base ?? COM1_BASE;
    this.lastPort = this.firstPort + 7;
    this.name = o.name ?? "com1";
    this.out = new ConsoleLines(o.onLine);
    this.irq = o.irq;
  }

  get dlab(): boolean {
    return (this.lcr & LCR_DLAB) !== 0;
  }

  /** The divisor latch (DLM:DLL). */
  get divisor(): number {
    return (this.dlm << 8) | this.dll;
  }

  ioOut(port: number, size: number, count: number, data: Uint8Array): DeviceAction {
    // Each element is `size` bytes; a UART register takes the low byte of each.
    for (let i = 0; i < count; i++) this.write(port - this.firstPort, data[i * size] ?? 0);
    this.updateIrq();
    return CONTINUE;
  }

  ioIn(port: number, size: number, count: number, data: Uint8Array): void {
    data.fill(0);
    for (let i = 0; i < count; i++) data[i * size] = this.read(port - this.firstPort);
    this.updateIrq();
  }

  private write(reg: number, b: number): void {
    switch (reg) {
      case UART.RBR_THR_DLL:
        if (this.dlab) this.dll = b;
        else this.transmit(b);
        break;
      case UART.IER_DLM:
        if (this.dlab) this.dlm = b;
        else {
          const was = this.ier;
          this.ier = b & 0x0f;
          // Enabling THRI while the transmitter is empty raises it at once.
          if ((this.ier & IER_THRI) !== 0 && (was & IER_THRI) === 0) this.thrPending = true;
        }
        break;
      case UART.IIR_FCR:
        break; // no FIFO: FCR writes do nothing (IIR bits 7:6 stay 0, a 16450 to the driver)
      case UART.LCR:
        this.lcr = b;
        break;
      case UART.MCR:
        this.mcr = b & 0x1f;
        break;
      case UART.SCR:
        this.scr = b;
        break;
      default:
        break; // LSR and MSR are read-only
    }
  }

  private read(reg: number): number {
    switch (reg) {
      case UART.RBR_THR_DLL: {
        if (this.dlab) return this.dll;
        const b = this.rbr;
        this.rbr = -1;
        return Math.max(b, 0);
      }
      case UART.IER_DLM:
        return this.dlab ? this.dlm : this.ier;
      case UART.IIR_FCR: {
        const iir = this.iir();
        if (iir === IIR_THRI) this.thrPending = false;
        return iir;
      }
      case UART.LCR:
        return this.lcr;
      case UART.MCR:
        return this.mcr;
      case UART.LSR:
        return LSR_THRE | LSR_TEMT | (this.rbr >= 0 ? LSR_DR : 0);
      case UART.MSR:
        return this.msr();
      default:
        return this.scr;
    }
  }

  /** The highest-priority pending interrupt, as IIR shows it. */
  private iir(): number {
    if ((this.ier & IER_RDI) !== 0 && this.rbr >= 0) return IIR_RDI;
    if ((this.ier & IER_THRI) !== 0 && this.thrPending) return IIR_THRI;
    return IIR_NO_INT;
  }

  private msr(): number {
    if ((this.mcr & MCR_LOOP) === 0) return MSR_DCD | MSR_DSR | MSR_CTS; // a connected, ready terminal
    // Loopback: the modem outputs come back as the modem inputs.
    return (
      ((this.mcr & MCR_RTS) !== 0 ? MSR_CTS : 0) |
      ((this.mcr & MCR_DTR) !== 0 ? MSR_DSR : 0) |
      ((this.mcr & MCR_OUT1) !== 0 ? MSR_RI : 0) |
      ((this.mcr & MCR_OUT2) !== 0 ? MSR_DCD : 0)
    );
  }

  private transmit(b: number): void {
    if ((this.mcr & MCR_LOOP) !== 0) this.rbr = b;
    else this.out.put(b);
    // Sent at once: the transmitter is empty again.
    this.thrPending = true;
  }

  private updateIrq(): void {
    const level = this.iir() !== IIR_NO_INT;
    if (level === this.irqLevel) return;
    this.irqLevel = level;
    if (level) this.interrupts++;
    this.irq?.(level);
  }

  /** Every byte sent, newlines included. */
  get bytesOut(): number {
    return this.out.bytesOut;
  }

  /** Emit a partial line (at the end of a run). */
  flush(): void {
    this.out.flush();
  }
}
