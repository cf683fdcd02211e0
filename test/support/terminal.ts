/**
 * Test support: writable streams that look like a pipe or a terminal, and a
 * tiny terminal model (printable text, \r, \n, erase line, cursor up, SGR
 * ignored, auto-wrap) to see what a terminal would show at the end.
 */

export class FakeStream {
  readonly chunks: string[] = [];
  constructor(
    readonly isTTY: boolean,
    readonly columns = 200,
  ) {}
  write(chunk: string): boolean {
    this.chunks.push(chunk);
    return true;
  }
  get text(): string {
    return this.chunks.join("");
  }
  /** The non-empty lines of the output (for a pipe: what a file would hold). */
  get lines(): string[] {
    return this.text.split("\n").filter((l) => l !== "");
  }
}

export const ESC = String.fromCharCode(27);
/** A colour or style code (SGR). */
export const SGR = new RegExp(`${ESC}\\[[0-9;]*m`);
/** Any escape sequence at all. */
export const ANY_ESCAPE = new RegExp(ESC);
const CSI = new RegExp(`^${ESC}\\[([0-9;]*)([A-Za-z])`);

/** What a terminal `columns` wide shows after `output`, trailing empty rows dropped. */
export function screen(output: string, columns: number): string[] {
  const rows: string[][] = [[]];
  let row = 0;
  let col = 0;
  const at = (r: number) => {
    while (rows.length <= r) rows.push([]);
    return rows[r] as string[];
  };
  for (let i = 0; i < output.length; i++) {
    const ch = output[i] as string;
    if (ch === ESC) {
      const m = CSI.exec(output.slice(i));
      if (!m) throw new Error(`unexpected escape at ${i}: ${JSON.stringify(output.slice(i, i + 8))}`);
      i += m[0].length - 1;
      const n = m[1] === "" ? 1 : Number(m[1]);
      switch (m[2]) {
        case "m":
          break;
        case "K":
          if (m[1] !== "2") throw new Error(`unsupported erase ${m[0]}`);
          rows[row] = [];
          break;
        case "A":
          row = Math.max(0, row - n);
          col = Math.min(col, columns - 1);
          break;
        default:
          throw new Error(`unsupported escape ${JSON.stringify(m[0])}`);
      }
      continue;
    }
    if (ch === "\r") col = 0;
    else if (ch === "\n") {
      row++;
      col = 0;
      at(row);
    } else {
      if (col >= columns) {
        row++;
        col = 0;
      }
      const line = at(row);
      while (line.length < col) line.push(" ");
      line[col] = ch;
      col++;
    }
  }
  const text = rows.map((r) => r.join("").trimEnd());
  while (text.length > 0 && text.at(-1) === "") text.pop();
  return text;
}
