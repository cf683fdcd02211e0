/**
 * A Linux System.map ("ffffffff81000000 T _text" per line; /proc/kallsyms has
 * the same shape, with an optional "[module]" fourth field). The file is
 * untrusted: its size, the number and length of lines, the address, the type
 * letter and the name are all checked, and the first bad line is one
 * LINUX_SYSTEM_MAP_INVALID error naming its line number.
 */
import { GuardvisorError } from "../errors.js";

export interface KernelSymbol {
  address: bigint;
  /** nm's type letter: T/t text, D/d data, R/r read-only data, B/b bss, A absolute, W/w weak, V/v, … */
  type: string;
  name: string;
}

export interface SystemMap {
  /** Symbols sorted by address (ties keep file order). */
  symbols: KernelSymbol[];
  byName: Map<string, KernelSymbol>;
}

export const MAX_SYSTEM_MAP_BYTES = 64 * 1024 * 1024;
export const MAX_SYSTEM_MAP_LINES = 2_000_000;
export const MAX_SYMBOL_NAME = 512;

const LINE = /^([0-9a-fA-F]{1,16}) ([A-Za-z?]) ([!-~]+)(?:\t\[[!-~]+\])?$/;

const invalid = (what: string) => new GuardvisorError("LINUX_SYSTEM_MAP_INVALID", what);

/** Parse a System.map. `name` is used in messages. */
export function parseSystemMap(data: Uint8Array | string, name = "System.map"): SystemMap {
  const size = typeof data === "string" ? data.length : data.length;
  if (size > MAX_SYSTEM_MAP_BYTES) {
    throw invalid(`${name} is ${size} bytes, larger than the ${MAX_SYSTEM_MAP_BYTES / 1024 / 1024} MiB accepted`);
  }
  const text =
    typeof data === "string" ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("latin1");
  const lines = text.split("\n");
  if (lines.length > MAX_SYSTEM_MAP_LINES + 1) throw invalid(`${name} has more than ${MAX_SYSTEM_MAP_LINES} lines`);
  const symbols: KernelSymbol[] = [];
  lines.forEach((raw, i) => {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line === "") return;
    const m = LINE.exec(line);
    if (!m && line.includes("The real System.map is in")) {
      throw invalid(
        `${name} is Debian's placeholder; the real System.map is in the linux-image-<version>-dbg package (or read /proc/kallsyms of the running kernel)`,
      );
    }
    if (!m) {
      const shown = line.length > 60 ? `${line.slice(0, 60)}…` : line;
      throw invalid(
        `${name}:${i + 1}: expected "ADDRESS TYPE NAME", got ${JSON.stringify(shown.replace(/[^\x20-\x7e]/g, "?"))}`,
      );
    }
    const [, addr, type, sym] = m as unknown as [string, string, string, string];
    if (sym.length > MAX_SYMBOL_NAME) throw invalid(`${name}:${i + 1}: a symbol name longer than ${MAX_SYMBOL_NAME}`);
    symbols.push({ address: BigInt(`0x${addr}`), type, name: sym });
  });
  if (symbols.length === 0) throw invalid(`${name} holds no symbols`);
  return systemMapOf(symbols);
}

/** A map of `symbols`: sorted by address (ties keep their order), and by name (the first of a name wins). */
export function systemMapOf(symbols: readonly KernelSymbol[]): SystemMap {
  const sorted = symbols
    .map((s, i) => [s, i] as const)
    .sort(([a, i], [b, j]) => (a.address < b.address ? -1 : a.address > b.address ? 1 : i - j));
  const byName = new Map<string, KernelSymbol>();
  for (const s of symbols) if (!byName.has(s.name)) byName.set(s.name, s);
  return { symbols: sorted.map(([s]) => s), byName };
}
