/**
 * The kernel's own symbol table, read from the vmlinux on the host: Linux
 * built with CONFIG_KALLSYMS carries every symbol's address and name in its
 * read-only data (what /proc/kallsyms prints), so a kernel whose System.map
 * is missing or a placeholder (Debian ships one) still names its symbols.
 *
 * scripts/kallsyms.c writes these tables into .rodata, each label aligned to
 * 8 bytes: `kallsyms_offsets` (s32 per symbol), `kallsyms_relative_base`
 * (u64), `kallsyms_num_syms`, `kallsyms_names` (per symbol: a length, 1 byte
 * or 2 with bit 7 set, then that many token numbers), `kallsyms_markers`
 * (the names offset of every 256th symbol), …, `kallsyms_token_table` (256
 * NUL-terminated strings) and `kallsyms_token_index` (256 u16 offsets into
 * it). No symbol table says where they are, so they are found by their shape:
 *  - the token table by its single-character tokens "0".."9" (always in the
 *    table at their own codes), confirmed by the index that follows it;
 *  - the header (relative base, count) at an 8-byte boundary, confirmed by
 *    decoding every name and finding the markers right after them.
 * Addresses follow CONFIG_KALLSYMS_ABSOLUTE_PERCPU when the offsets say so
 * (negative = relative to the base, counting down; non-negative = absolute).
 *
 * The vmlinux is untrusted: every read is bounded by .rodata; counts and
 * lengths are capped; anything that does not fit is LINUX_IMAGE_INVALID.
 */
import { GuardvisorError } from "../errors.js";
import { readKernelElf } from "./kernel-ranges.js";
import { type KernelSymbol, type SystemMap, systemMapOf } from "./system-map.js";

export const MAX_KALLSYMS = 4_000_000;
/** Fewer symbols than this is not a kernel (and two markers make the match certain). */
export const MIN_KALLSYMS = 512;
/** Kernel addresses live in the top 2 GiB (x86-64's kernel mapping). */
const KERNEL_BASE_MIN = 0xffffffff80000000n;

const invalid = (what: string) => new GuardvisorError("LINUX_IMAGE_INVALID", what);

/** The digit tokens as the token table holds them: "0\0" … "9\0". */
const DIGITS = Buffer.from("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00", "latin1");

interface Tokens {
  /** The 256 token strings. */
  table: string[];
  /** Offset (in .rodata) of the table's first byte: the names end before it. */
  start: number;
}

const align8 = (n: number) => (n + 7) & ~7;

/** The token table and index inside `ro` (the bytes of .rodata), or undefined. */
function findTokens(ro: Buffer): Tokens | undefined {
  for (let at = ro.indexOf(DIGITS); at >= 0; at = ro.indexOf(DIGITS, at + 1)) {
    // "0" is token 0x30: 48 strings come before it.
    let p = at - 1;
    let seen = 0;
    while (p > 0 && seen < 48) {
      p--;
      if (ro[p] === 0) seen++;
    }
    if (seen !== 48) continue;
    const start = p + 1;
    const offsets: number[] = [];
    const table: string[] = [];
    let q = start;
    for (let i = 0; i < 256 && q < ro.length; i++) {
      const end = ro.indexOf(0, q);
      if (end < 0 || end - q > 64) break;
      offsets.push(q - start);
      table.push(ro.toString("latin1", q, end));
      q = end + 1;
    }
    if (table.length !== 256) continue;
    const index = align8(q);
    if (index + 512 > ro.length) continue;
    if (offsets.every((o, i) => ro.readUInt16LE(index + 2 * i) === o)) return { table, start };
  }
  return undefined;
}

interface Names {
  /** Each symbol's name with its type letter first. */
  names: string[];
  /** Offset of the byte after the last name. */
  end: number;
}

/** Decode `count` names from `at`; undefined as soon as they do not fit before `limit` or the markers disagree. */
function decodeNames(
  ro: Buffer,
  at: number,
  count: number,
  limit: number,
  tokens: readonly string[],
): Names | undefined {
  const starts: number[] = [];
  const names: string[] = new Array(count);
  let q = at;
  for (let i = 0; i < count; i++) {
    if (i % 256 === 0) starts.push(q - at);
    if (q >= limit) return undefined;
    let len = ro[q] as number;
    q++;
    if (len & 0x80) {
      if (q >= limit) return undefined;
      len = (len & 0x7f) | ((ro[q] as number) << 7);
      q++;
    }
    if (len === 0 || q + len > limit) return undefined;
    let name = "";
    for (let k = 0; k < len; k++) name += tokens[ro[q + k] as number];
    names[i] = name;
    q += len;
  }
  // kallsyms_markers follows the names: the offset of every 256th name.
  const markers = align8(q);
  if (markers + starts.length * 4 > limit) return undefined;
  const asU32 = starts.every((s, i) => ro.readUInt32LE(markers + 4 * i) === s);
  const asU64 =
    !asU32 &&
    markers + starts.length * 8 <= limit &&
    starts.every((s, i) => ro.readBigUInt64LE(markers + 8 * i) === BigInt(s));
  return asU32 || asU64 ? { names, end: q } : undefined;
}

/** The symbols of a decompressed vmlinux's kallsyms tables. `what` names the image in errors. */
export function kallsymsFromVmlinux(vmlinux: Uint8Array, what = "the vmlinux"): SystemMap {
  const { sections } = readKernelElf(vmlinux);
  const rodata = sections.find((s) => s.name === ".rodata");
  if (!rodata || rodata.size === 0n) throw invalid(`${what} has no .rodata section`);
  if (rodata.offset + rodata.size > BigInt(vmlinux.length)) throw invalid(`${what}'s .rodata lies past the file's end`);
  const base = Number(rodata.offset);
  const ro = Buffer.from(vmlinux.buffer, vmlinux.byteOffset + base, Number(rodata.size));
  const tokens = findTokens(ro);
  if (!tokens) throw invalid(`${what} has no kallsyms token table (a kernel built without CONFIG_KALLSYMS?)`);
  // The header: relative base (u64) and count, 8-aligned, names right after.
  for (let p = 0; p + 16 <= tokens.start; p += 8) {
    const relBase = ro.readBigUInt64LE(p);
    if (relBase < KERNEL_BASE_MIN) continue;
    const count = ro.readUInt32LE(p + 8);
    if (count < MIN_KALLSYMS || count > MAX_KALLSYMS) continue;
    const offsetsAt = p - align8(count * 4);
    if (offsetsAt < 0) continue;
    const decoded = decodeNames(ro, p + 16, count, tokens.start, tokens.table);
    if (!decoded) continue;
    const negatives = countNegative(ro, offsetsAt, count);
    const absolutePercpu = negatives > count / 2;
    const symbols: KernelSymbol[] = decoded.names.map((full, i) => {
      const off = ro.readInt32LE(offsetsAt + 4 * i);
      const address = !absolutePercpu
        ? relBase + BigInt(off >>> 0)
        : off >= 0
          ? BigInt(off)
          : relBase - 1n - BigInt(off);
      return { address, type: full.slice(0, 1), name: full.slice(1) };
    });
    return systemMapOf(symbols);
  }
  throw invalid(`${what}'s kallsyms names could not be decoded`);
}

function countNegative(ro: Buffer, at: number, count: number): number {
  let n = 0;
  for (let i = 0; i < count; i++) if (ro.readInt32LE(at + 4 * i) < 0) n++;
  return n;
}
