/** The UART as Linux's 8250 driver drives it, and the legacy PC ports. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { IoBus } from "../../src/devices/bus.js";
import { Cmos, I8042, PciConfigSpace, PostPort } from "../../src/devices/pc-platform.js";
import { Uart16550 } from "../../src/devices/uart16550.js";

function uart() {
  const lines: string[] = [];
  const irq: boolean[] = [];
  const u = new Uart16550({ onLine: (l) => lines.push(l), irq: (level) => irq.push(level) });
  const bus = new IoBus();
  bus.register(u);
  const out = (reg: number, v: number) => bus.out(0x3f8 + reg, 1, 1, Uint8Array.of(v));
  const inb = (reg: number) => {
    const d = new Uint8Array(1);
    bus.in(0x3f8 + reg, 1, 1, d);
    return d[0] as number;
  };
  return { u, lines, irq, out, inb };
}

describe("16550 UART", () => {
  it("passes the 8250 driver's probe (autoconfig): IER test, loopback MSR test, 16450 with a scratch register", () => {
    const { out, inb } = uart();
    // IER: writes of 0 and 0x0f read back.
    out(1, 0);
    assert.equal(inb(1) & 0x0f, 0);
    out(1, 0x0f);
    assert.equal(inb(1) & 0x0f, 0x0f);
    out(1, 0);
    // Loopback with RTS and OUT2: MSR shows CTS and DCD (0x90).
    out(4, 0x10 | 0x0a);
    assert.equal(inb(6) & 0xf0, 0x90);
    out(4, 0);
    // FIFO enable does nothing: IIR bits 7:6 stay 0 (no FIFO), no interrupt pending.
    out(2, 0x01);
    assert.equal(inb(2), 0x01);
    // Scratch register.
    out(7, 0xa5);
    assert.equal(inb(7), 0xa5);
    out(7, 0x5a);
    assert.equal(inb(7), 0x5a);
    // LSR: the transmitter is always empty.
    assert.equal(inb(5) & 0x60, 0x60);
  });

  it("keeps the divisor latch behind DLAB", () => {
    const { u, out, inb } = uart();
    out(3, 0x83);
    out(0, 0x01);
    out(1, 0x00);
    assert.equal(u.divisor, 1);
    assert.equal(inb(0), 0x01);
    out(3, 0x03);
    out(1, 0x05);
    assert.equal(inb(1), 0x05); // IER, not DLM
    assert.equal(u.divisor, 1);
  });

  it("turns THR bytes into console lines, bounded and cleaned", () => {
    const { u, lines, out } = uart();
    for (const b of Buffer.from("hello\r\nwor\x01ld\n")) out(0, b);
    assert.deepEqual(lines, ["hello", "wor?ld"]);
    for (let i = 0; i < 5000; i++) out(0, 0x41);
    u.flush();
    assert.equal(lines[2]?.length, 4096);
    assert.equal(lines[3]?.length, 904);
  });

  it("raises THRI when enabled with THR empty; reading IIR clears it; a THR write raises it again", () => {
    const { irq, out, inb } = uart();
    out(1, 0x02);
    assert.deepEqual(irq, [true]);
    assert.equal(inb(2), 0x02);
    assert.deepEqual(irq, [true, false]);
    assert.equal(inb(2), 0x01);
    out(0, 0x41);
    assert.deepEqual(irq, [true, false, true]);
    // The driver's THRE test: enable, read IIR, disable, enable again, read IIR: both report THRI.
    out(1, 0);
    assert.deepEqual(irq, [true, false, true, false]);
    out(1, 0x02);
    assert.equal(inb(2), 0x02);
    out(1, 0);
    out(1, 0x02);
    assert.equal(inb(2), 0x02);
  });

  it("loops THR back to RBR with data-ready in loopback mode, and sends nothing out", () => {
    const { lines, out, inb } = uart();
    out(4, 0x10);
    out(1, 0x01);
    out(0, 0x37);
    assert.equal(inb(5) & 0x01, 0x01);
    assert.equal(inb(2), 0x04);
    assert.equal(inb(0), 0x37);
    assert.equal(inb(5) & 0x01, 0);
    assert.deepEqual(lines, []);
  });
});

describe("PC platform ports", () => {
  it("CMOS shows the given time in BCD, 24-hour, with a good battery", () => {
    const c = new Cmos(() => new Date(Date.UTC(2031, 11, 25, 23, 59, 58)));
    const read = (i: number) => {
      c.ioOut(0x70, 1, 1, Uint8Array.of(0x80 | i)); // NMI mask bit set, as Linux does
      const d = new Uint8Array(1);
      c.ioIn(0x71, 1, 1, d);
      return d[0];
    };
    assert.deepEqual(
      [read(0), read(2), read(4), read(7), read(8), read(9), read(0x32)],
      [0x58, 0x59, 0x23, 0x25, 0x12, 0x31, 0x20],
    );
    assert.equal(read(0x0a)! & 0x80, 0); // no update in progress
    assert.equal(read(0x0b), 0x02);
    assert.equal(read(0x0d), 0x80);
    // Status B stays BCD 24-hour; NVRAM keeps what is written; the clock ignores writes.
    c.ioOut(0x70, 1, 1, Uint8Array.of(0x0b));
    c.ioOut(0x71, 1, 1, Uint8Array.of(0xff));
    assert.equal(read(0x0b), 0x7a);
    c.ioOut(0x70, 1, 1, Uint8Array.of(0x40));
    c.ioOut(0x71, 1, 1, Uint8Array.of(0x99));
    assert.equal(read(0x40), 0x99);
    c.ioOut(0x70, 1, 1, Uint8Array.of(0x00));
    c.ioOut(0x71, 1, 1, Uint8Array.of(0x00));
    assert.equal(read(0), 0x58);
  });

  it("PCI configuration: the address latch works, no device answers", () => {
    const p = new PciConfigSpace();
    p.ioOut(0xcf8, 4, 1, Uint8Array.of(0x00, 0x00, 0x00, 0x80));
    const d = new Uint8Array(4);
    p.ioIn(0xcf8, 4, 1, d);
    assert.deepEqual([...d], [0, 0, 0, 0x80]);
    p.ioIn(0xcfc, 4, 1, d);
    assert.deepEqual([...d], [0xff, 0xff, 0xff, 0xff]);
    p.ioOut(0xcfb, 1, 1, Uint8Array.of(1)); // a byte write does not reach the latch
    p.ioIn(0xcf8, 4, 1, d);
    assert.deepEqual([...d], [0, 0, 0, 0x80]);
  });

  it("i8042: command 0xfe and output-port bit 0 low both reset; status has no input pending", () => {
    let resets = 0;
    const k = new I8042(() => {
      resets++;
      return { kind: "exit", code: 0 };
    });
    const st = new Uint8Array(1);
    k.ioIn(0x64, 1, 1, st);
    assert.equal(st[0]! & 0x02, 0); // kb_wait: input buffer empty
    k.ioOut(0x64, 1, 1, Uint8Array.of(0xaa));
    k.ioIn(0x64, 1, 1, st);
    assert.equal(st[0]! & 0x01, 1);
    k.ioIn(0x60, 1, 1, st);
    assert.equal(st[0], 0x55);
    assert.deepEqual(k.ioOut(0x64, 1, 1, Uint8Array.of(0xfe)), { kind: "exit", code: 0 });
    assert.equal(k.ioOut(0x64, 1, 1, Uint8Array.of(0xd1)).kind, "continue");
    assert.equal(k.ioOut(0x60, 1, 1, Uint8Array.of(0xfe)).kind, "exit");
    assert.equal(resets, 2);
    assert.equal(k.ioOut(0x60, 1, 1, Uint8Array.of(0xfe)).kind, "continue"); // no command pending
  });

  it("port 0x80 takes writes", () => {
    const p = new PostPort();
    assert.equal(p.ioOut(0x80, 1, 1, Uint8Array.of(0x42)).kind, "continue");
    assert.equal(p.last, 0x42);
    assert.equal(p.writes, 1);
  });
});
