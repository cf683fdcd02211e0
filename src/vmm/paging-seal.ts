/**
 * The page-table seal: once the guest seals its paging, the translation of
 * every protected virtual page stays as it was.
 *
 * Read-only memory slots protect physical pages; a kernel that points the
 * page-table entry of a protected virtual page at a writable copy would run
 * (or use) the copy with no write to protected memory at all. The seal takes
 * the walk of every protected virtual page (the kernel's protected sections
 * and the IDT) under the sealed CR3 and pins each entry on it, present or not:
 * a later value that differs in anything but the accessed and dirty bits and
 * the bits the CPU ignores changes how protected memory is translated.
 *
 * The entries are checked on exits, like the rest of the sealed vCPU state
 * (ExitDispatcher.checkSealed). They cannot be write-protected: on AMD (NPT)
 * and on Intel with EPT accessed/dirty bits, the CPU's own walk of the guest
 * page tables counts as a write, so a read-only memory slot under them faults
 * on every TLB miss (measured in the lab: the guest does not get past its
 * first instructions). So this is detection and repair on the next exit, not
 * prevention: code can run through a remapped page until then.
 */
import type { GuestMemory } from "../kvm/guest-memory.js";

/** A virtual range [start, end) whose translation the seal pins. */
export interface VirtualRange {
  readonly name: string;
  readonly start: bigint;
  readonly end: bigint;
  /** The guest-physical address `start` is loaded at (the kernel's own mapping), when known. */
  readonly gpa?: number;
}

export interface PinnedEntry {
  /** The sealed value. */
  readonly value: bigint;
  /** One protected virtual address translated through this entry (for the event's note). */
  readonly va: bigint;
  readonly name: string;
}

/** A write that would change a pinned entry. */
export interface PagingChange {
  /** Guest-physical address of the 8-byte entry. */
  entry: number;
  from: bigint;
  to: bigint;
  va: bigint;
  name: string;
}

const P = 1n;
const PS = 0x80n;
const AD = 0x60n;
export const PTE_ADDR_MASK = 0x000ffffffffff000n;
/** Bits that do not change a translation: accessed, dirty, and the bits the CPU ignores (9-11, 52-58). */
const IGNORED = AD | 0xe00n | 0x07f0000000000000n;
const PAGE = 4096n;
/** A seal pins at most this many virtual pages (a kernel's code and constants are far smaller). */
const MAX_PINNED_PAGES = 1 << 18;

const sameTranslation = (a: bigint, b: bigint) => (a & ~IGNORED) === (b & ~IGNORED);
/** ~IGNORED as two 32-bit halves. */
const KEEP_LO = Number(~IGNORED & 0xffffffffn) | 0;
const KEEP_HI = Number((~IGNORED >> 32n) & 0xffffffffn) | 0;

export class PagingSeal {
  private readonly pinned = new Map<number, PinnedEntry>();
  private sealedCr3: bigint | undefined;

  constructor(private readonly mem: GuestMemory) {}

  get sealed(): boolean {
    return this.sealedCr3 !== undefined;
  }

  /** The page-table root (CR3 without its flag bits) the seal was taken under. */
  get cr3(): bigint | undefined {
    return this.sealedCr3;
  }

  get pinnedEntries(): number {
    return this.pinned.size;
  }

  /** Pin the walk of every page in `ranges` under `cr3` (once; later calls do nothing). */
  seal(cr3: bigint, ranges: readonly VirtualRange[]): void {
    if (this.sealed) return;
    this.sealedCr3 = cr3 & PTE_ADDR_MASK;
    this.fast = undefined;
    let pages = 0;
    for (const r of ranges) {
      for (let va = r.start & ~(PAGE - 1n); va < r.end && pages < MAX_PINNED_PAGES; va += PAGE, pages++) {
        this.pinWalk(va, r.name);
      }
    }
  }

  private pinWalk(va: bigint, name: string): void {
    let table = this.sealedCr3 ?? 0n;
    for (const shift of [39n, 30n, 21n, 12n]) {
      const at = table + ((va >> shift) & 0x1ffn) * 8n;
      if (at + 8n > BigInt(this.mem.size)) return;
      const gpa = Number(at);
      const value = this.mem.readU64(gpa);
      if (!this.pinned.has(gpa)) this.pinned.set(gpa, { value, va, name });
      if ((value & P) === 0n || shift === 12n || (shift !== 39n && (value & PS) !== 0n)) return;
      table = value & PTE_ADDR_MASK;
    }
  }

  /**
   * The pinned entries whose translation changed since the seal. Checked on
   * every exit: the entries' addresses and sealed values (less the ignored
   * bits) are kept as 32-bit halves, so the check allocates nothing.
   */
  changes(): PagingChange[] {
    this.fast ??= this.flatten();
    const fast = this.fast;
    const w = fast.words;
    const mem = this.mem.view;
    let changed = false;
    for (let i = 0; i < fast.at.length; i++) {
      const at = fast.at[i] as number;
      if (
        (mem.getUint32(at, true) & KEEP_LO) >>> 0 !== w[2 * i] ||
        (mem.getUint32(at + 4, true) & KEEP_HI) >>> 0 !== w[2 * i + 1]
      ) {
        changed = true;
        break;
      }
    }
    if (!changed) return [];
    const out: PagingChange[] = [];
    for (const [entry, pin] of this.pinned) {
      const now = this.mem.readU64(entry);
      if (!sameTranslation(pin.value, now)) out.push({ entry, from: pin.value, to: now, va: pin.va, name: pin.name });
    }
    return out;
  }

  /** The pinned entries for the allocation-free check (built once, after the seal). */
  private fast: { at: Uint32Array; words: Uint32Array } | undefined;

  private flatten(): { at: Uint32Array; words: Uint32Array } {
    const at = new Uint32Array(this.pinned.size);
    const words = new Uint32Array(2 * this.pinned.size);
    let i = 0;
    for (const [entry, pin] of this.pinned) {
      // Pinned entries lie in RAM (pinWalk checks), which is below 4 GiB plus a page.
      at[i] = entry;
      const kept = pin.value & ~IGNORED;
      words[2 * i] = Number(kept & 0xffffffffn);
      words[2 * i + 1] = Number(kept >> 32n);
      i++;
    }
    return { at, words };
  }

  /** Put a pinned entry back as it was sealed. */
  restore(entry: number): void {
    const pin = this.pinned.get(entry);
    if (pin) this.mem.writeU64(entry, pin.value);
  }
}
