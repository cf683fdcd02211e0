/**
 * The bytes a guest's UART sends, as lines of its console log. The guest is
 * hostile: a line is cut at MAX_LINE bytes and anything but printable ASCII
 * and tabs is shown as "?". Used by both COM1 models (serial.ts for gv-kernel,
 * uart16550.ts for Linux).
 */
export const MAX_LINE = 4096;

export class ConsoleLines {
  /** Every byte sent, newlines included. */
  bytesOut = 0;
  private line: number[] = [];

  /** @param onLine receives each complete line (without the newline). */
  constructor(private readonly onLine: (line: string) => void) {}

  put(b: number): void {
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
