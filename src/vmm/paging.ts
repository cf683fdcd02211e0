/**
 * A 4-level x86-64 page-table walker over guest RAM. The tables are guest
 * data: every entry is bounds-checked and a walk that leaves RAM fails
 * (returns undefined) instead of throwing.
 */
import type { GuestMemory } from "../kvm/guest-memory.js";

const P = 1n;
const PS = 0x80n;
const ADDR_MASK = 0x000ffffffffff000n;

export function isCanonical(va: bigint): boolean {
  const top = va >> 47n;
  return top === 0n || top === 0x1ffffn;
}

/** Translate a guest-virtual address with the tables at `cr3`; undefined when not mapped. */
export function translate(mem: GuestMemory, cr3: bigint, va: bigint): number | undefined {
  if (!isCanonical(va)) return undefined;
  let table = cr3 & ADDR_MASK;
  const shifts = [39n, 30n, 21n, 12n];
  for (let level = 0; level < 4; level++) {
    const shift = shifts[level] as bigint;
    const index = (va >> shift) & 0x1ffn;
    const at = table + index * 8n;
    if (at + 8n > BigInt(mem.size)) return undefined;
    const entry = mem.readU64(Number(at));
    if ((entry & P) === 0n) return undefined;
    const large = level > 0 && level < 3 && (entry & PS) !== 0n;
    if (large || level === 3) {
      const pageMask = (1n << shift) - 1n;
      const base = entry & ADDR_MASK & ~pageMask;
      const pa = base | (va & pageMask);
      return pa < BigInt(Number.MAX_SAFE_INTEGER) ? Number(pa) : undefined;
    }
    table = entry & ADDR_MASK;
  }
  return undefined;
}

/** One page's part of a virtual range: its offset in the range, its length, its guest-physical address. */
export interface PagePart {
  at: number;
  len: number;
  /** Undefined when the page is not mapped. */
  pa: number | undefined;
}

/** [va, va + size) (wrapping at 2^64) split where pages end, each part translated on its own. */
export function* pageParts(mem: GuestMemory, cr3: bigint, va: bigint, size: number): Generator<PagePart> {
  for (let at = 0; at < size; ) {
    const from = BigInt.asUintN(64, va + BigInt(at));
    const len = Math.min(size - at, 0x1000 - Number(from & 0xfffn));
    yield { at, len, pa: translate(mem, cr3, from) };
    at += len;
  }
}

/**
 * Where the guest-physical bytes [gpa, gpa + len) lie in the virtual range
 * [va, va + size): their offset in it, or undefined when no one page of it
 * holds them all (KVM hands a write over split at page boundaries).
 */
export function physicalOffsetIn(
  mem: GuestMemory,
  cr3: bigint,
  va: bigint,
  size: number,
  gpa: number,
  len: number,
): number | undefined {
  for (const p of pageParts(mem, cr3, va, size)) {
    if (p.pa !== undefined && gpa >= p.pa && gpa + len <= p.pa + p.len) return p.at + gpa - p.pa;
  }
  return undefined;
}

/**
 * Read up to `len` bytes at a guest-virtual address, page by page; stops at the
 * first byte that is not mapped or not in RAM (so the result may be shorter).
 */
export function readVirtual(mem: GuestMemory, cr3: bigint, va: bigint, len: number): Uint8Array {
  const out: number[] = [];
  let addr = va;
  while (out.length < len) {
    const pa = translate(mem, cr3, addr);
    if (pa === undefined) break;
    const inPage = 4096 - (pa % 4096);
    const n = Math.min(inPage, len - out.length);
    if (!mem.contains(pa, n)) break;
    for (const b of mem.slice(pa, n)) out.push(b);
    addr += BigInt(n);
  }
  return Uint8Array.from(out);
}
