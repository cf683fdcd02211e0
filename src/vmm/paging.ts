/**
 * A 4-level x86-64 page-table walker over guest RAM. The tables are guest
 * data: every entry is bounds-checked and a walk that leaves RAM fails
 * (returns undefined) instead of throwing.
 */
import type { GuestMemory } from "../kvm/guest-memory.js";

const ADDR_MASK = 0x000ffffffffff000n;

export function isCanonical(va: bigint): boolean {
  const top = va >> 47n;
  return top === 0n || top === 0x1ffffn;
}

/** Is `va` mapped writable by the tables at `cr3` (R/W at every level)? Undefined when not mapped. */
export function mappedWritable(mem: GuestMemory, cr3: bigint, va: bigint): boolean | undefined {
  const w = walk(mem, cr3, va, true);
  return w < 0 ? undefined : w === 1;
}

/**
 * Translate a guest-virtual address with the tables at `cr3`; undefined when
 * not mapped. Walked in 32-bit halves (no BigInt per level: this runs several
 * times per exit); entry addresses are bits 12-51, so every sum stays exact.
 */
export function translate(mem: GuestMemory, cr3: bigint, va: bigint): number | undefined {
  const pa = walk(mem, cr3, va, false);
  return pa < 0 ? undefined : pa;
}

/** The walk: -1 when not mapped, else the physical address, or (`rw`) 1 when writable at every level, 0 when not. */
function walk(mem: GuestMemory, cr3: bigint, va: bigint, rw: boolean): number {
  if (!isCanonical(va)) return -1;
  let writable = 2;
  const lo = Number(va & 0xffffffffn);
  const hi = Number((va >> 32n) & 0xffffn);
  const idx = [(hi >>> 7) & 0x1ff, ((hi << 2) | (lo >>> 30)) & 0x1ff, (lo >>> 21) & 0x1ff, (lo >>> 12) & 0x1ff];
  let table = Number(cr3 & ADDR_MASK);
  const v = mem.view;
  for (let level = 0; level < 4; level++) {
    const at = table + (idx[level] as number) * 8;
    if (at + 8 > mem.size) return -1;
    const eLo = v.getUint32(at, true);
    const eHi = v.getUint32(at + 4, true);
    if ((eLo & 1) === 0) return -1;
    writable &= eLo;
    const base = (eHi & 0xfffff) * 0x1_0000_0000 + ((eLo & 0xfffff000) >>> 0);
    const large = level > 0 && level < 3 && (eLo & 0x80) !== 0;
    if (large || level === 3) {
      if (rw) return writable !== 0 ? 1 : 0;
      const pageMask = level === 1 ? 0x3fffffff : level === 2 ? 0x1fffff : 0xfff;
      // The page base without its offset bits (a large page's low address bits are flags, not address).
      const pageBase = base - (base % (pageMask + 1));
      return pageBase + (lo & pageMask);
    }
    table = base;
  }
  return -1;
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
  // Most reads (instruction bytes) lie in one page: one translation, one copy.
  const first = len > 0 ? translate(mem, cr3, va) : undefined;
  if (first !== undefined && len <= 4096 - (first % 4096) && mem.contains(first, len)) {
    return mem.bytes.slice(first, first + len);
  }
  const out = new Uint8Array(Math.max(0, len));
  let n = 0;
  let addr = va;
  while (n < len) {
    const pa = translate(mem, cr3, addr);
    if (pa === undefined) break;
    const inPage = 4096 - (pa % 4096);
    const k = Math.min(inPage, len - n);
    if (!mem.contains(pa, k)) break;
    out.set(mem.slice(pa, k), n);
    n += k;
    addr += BigInt(k);
  }
  return n === len ? out : out.slice(0, n);
}
