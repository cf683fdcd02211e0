/**
 * The legacy PC ports a stock Linux kernel touches that the in-kernel KVM
 * devices (PIC, IOAPIC, local APIC, PIT, port 0x61) do not answer:
 *   0x80          POST code / I/O delay: writes ignored
 *   0x70-0x71     CMOS: an MC146818 real-time clock (BCD, 24-hour, the host's UTC time) and 114 bytes of NVRAM
 *   0xcf8-0xcff   PCI configuration mechanism #1 with no devices: the address latch works, data reads all-ones
 *   0x60-0x64     i8042 keyboard controller, just enough for a reset: command 0xfe (pulse the reset line)
 * Every value the guest writes is masked to the register's width; every
 * index is bounded.
 */
import { CONTINUE, type DeviceAction, type PortDevice } from "./bus.js";

/** Fill the low `size` bytes of each of `count` elements with `value` (little-endian). */
function fillValue(data: Uint8Array, size: number, count: number, value: number): void {
  for (let i = 0; i < count; i++) {
    for (let b = 0; b < size; b++) data[i * size + b] = (value >>> (8 * b)) & 0xff;
  }
}

function littleEndian(data: Uint8Array, size: number): number {
  let v = 0;
  for (let b = size - 1; b >= 0; b--) v = v * 256 + (data[b] ?? 0);
  return v >>> 0;
}

/** Port 0x80: the POST code port, also the kernel's I/O delay. */
export class PostPort implements PortDevice {
  readonly name = "post";
  readonly firstPort = 0x80;
  readonly lastPort = 0x80;
  writes = 0;
  last = 0;

  ioOut(_port: number, size: number, _count: number, data: Uint8Array): DeviceAction {
    this.writes++;
    this.last = littleEndian(data, Math.min(size, 1));
    return CONTINUE;
  }

  ioIn(_port: number, _size: number, _count: number, data: Uint8Array): void {
    data.fill(0xff);
  }
}

export const CMOS = {
  SECONDS: 0x00,
  MINUTES: 0x02,
  HOURS: 0x04,
  WEEKDAY: 0x06,
  DAY: 0x07,
  MONTH: 0x08,
  YEAR: 0x09,
  STATUS_A: 0x0a,
  STATUS_B: 0x0b,
  STATUS_C: 0x0c,
  STATUS_D: 0x0d,
  CENTURY: 0x32,
} as const;
/** Status B: 24-hour mode; BCD (DM clear). */
export const CMOS_STATUS_B_24H = 0x02;
/** Status D: the battery is good (VRT). */
export const CMOS_STATUS_D_VRT = 0x80;
/** Status A: divider 32.768 kHz, rate 1024 Hz, no update in progress. */
export const CMOS_STATUS_A = 0x26;

const bcd = (n: number) => ((Math.floor(n / 10) % 10) << 4) | (n % 10);

/** Ports 0x70 (index; bit 7 masks NMI) and 0x71 (data). */
export class Cmos implements PortDevice {
  readonly name = "cmos";
  readonly firstPort = 0x70;
  readonly lastPort = 0x71;
  private index = 0;
  private readonly nvram = new Uint8Array(128);

  /** @param now the wall clock the RTC shows (UTC) */
  constructor(private readonly now: () => Date = () => new Date()) {
    this.nvram[CMOS.STATUS_A] = CMOS_STATUS_A;
    this.nvram[CMOS.STATUS_B] = CMOS_STATUS_B_24H;
    this.nvram[CMOS.STATUS_D] = CMOS_STATUS_D_VRT;
  }

  ioOut(port: number, _size: number, _count: number, data: Uint8Array): DeviceAction {
    const b = data[0] ?? 0;
    if (port === this.firstPort) {
      this.index = b & 0x7f;
      return CONTINUE;
    }
    const i = this.index;
    // The clock and status C/D are the host's: writes to them are dropped. Status B stays
    // 24-hour BCD with SET off (the interrupt enables are kept); status A's UIP is read-only.
    if (i === CMOS.STATUS_B) this.nvram[i] = (b & 0x78) | CMOS_STATUS_B_24H;
    else if (i === CMOS.STATUS_A) this.nvram[i] = b & 0x7f;
    else if (i > CMOS.STATUS_D) this.nvram[i] = b;
    return CONTINUE;
  }

  ioIn(port: number, size: number, count: number, data: Uint8Array): void {
    fillValue(data, size, count, port === this.firstPort ? this.index : this.register(this.index));
  }

  /** The value of CMOS register `i` (0..127). */
  register(i: number): number {
    const t = this.now();
    switch (i & 0x7f) {
      case CMOS.SECONDS:
        return bcd(t.getUTCSeconds());
      case CMOS.MINUTES:
        return bcd(t.getUTCMinutes());
      case CMOS.HOURS:
        return bcd(t.getUTCHours());
      case CMOS.WEEKDAY:
        return bcd(t.getUTCDay() + 1);
      case CMOS.DAY:
        return bcd(t.getUTCDate());
      case CMOS.MONTH:
        return bcd(t.getUTCMonth() + 1);
      case CMOS.YEAR:
        return bcd(t.getUTCFullYear() % 100);
      case CMOS.CENTURY:
        return bcd(Math.floor(t.getUTCFullYear() / 100));
      case CMOS.STATUS_C:
        return 0; // no interrupt flags
      default:
        return this.nvram[i & 0x7f] ?? 0;
    }
  }
}

/** PCI configuration mechanism #1 on a bus with no devices. */
export class PciConfigSpace implements PortDevice {
  readonly name = "pci-config";
  readonly firstPort = 0xcf8;
  readonly lastPort = 0xcff;
  /** The CONFIG_ADDRESS latch (only a 32-bit access to 0xcf8 reaches it). */
  address = 0;

  ioOut(port: number, size: number, _count: number, data: Uint8Array): DeviceAction {
    if (port === 0xcf8 && size === 4) this.address = littleEndian(data, 4) & 0x80fffffc;
    return CONTINUE; // writes to configuration data: no device takes them
  }

  ioIn(port: number, size: number, count: number, data: Uint8Array): void {
    if (port === 0xcf8 && size === 4) fillValue(data, 4, count, this.address);
    else data.fill(0xff); // no device answers: all-ones
  }
}

export const I8042_DATA = 0x60;
export const I8042_COMMAND = 0x64;
export const I8042_CMD_READ_CCB = 0x20;
export const I8042_CMD_WRITE_CCB = 0x60;
export const I8042_CMD_SELF_TEST = 0xaa;
export const I8042_CMD_WRITE_OUTPUT = 0xd1;
export const I8042_CMD_RESET = 0xfe;
export const I8042_STATUS_OBF = 0x01;
export const I8042_STATUS_SYS = 0x04;

/**
 * The i8042 keyboard controller as far as a reset goes: status (output
 * buffer full when a reply waits), the command byte, self test, and the two
 * ways to reset the machine (command 0xfe; output port bit 0 cleared through
 * command 0xd1). `onReset` decides what a reset does to the VM.
 */
export class I8042 implements PortDevice {
  readonly name = "i8042";
  readonly firstPort = I8042_DATA;
  readonly lastPort = I8042_COMMAND;
  private ccb = 0x00;
  private reply = -1;
  /** The command whose data byte the next write to port 0x60 is. */
  private pending = 0;
  resets = 0;

  constructor(private readonly onReset: () => DeviceAction) {}

  ioOut(port: number, _size: number, _count: number, data: Uint8Array): DeviceAction {
    const b = data[0] ?? 0;
    if (port === I8042_COMMAND) {
      this.pending = 0;
      switch (b) {
        case I8042_CMD_READ_CCB:
          this.reply = this.ccb;
          break;
        case I8042_CMD_SELF_TEST:
          this.reply = 0x55;
          break;
        case I8042_CMD_WRITE_CCB:
        case I8042_CMD_WRITE_OUTPUT:
          this.pending = b;
          break;
        case I8042_CMD_RESET:
          this.resets++;
          return this.onReset();
        default:
          break;
      }
      return CONTINUE;
    }
    if (port === I8042_DATA) {
      const cmd = this.pending;
      this.pending = 0;
      if (cmd === I8042_CMD_WRITE_CCB) this.ccb = b;
      else if (cmd === I8042_CMD_WRITE_OUTPUT && (b & 0x01) === 0) {
        this.resets++;
        return this.onReset(); // output port bit 0 is the CPU reset line, active low
      }
    }
    return CONTINUE;
  }

  ioIn(port: number, size: number, count: number, data: Uint8Array): void {
    if (port === I8042_COMMAND) {
      fillValue(data, size, count, I8042_STATUS_SYS | (this.reply >= 0 ? I8042_STATUS_OBF : 0));
    } else if (port === I8042_DATA) {
      fillValue(data, size, count, Math.max(this.reply, 0));
      this.reply = -1;
    } else {
      data.fill(0xff); // 0x61-0x63 are not the controller's (KVM answers 0x61 itself)
    }
  }
}
