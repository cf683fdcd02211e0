/**
 * One verdict per store instruction. KVM hands a store to read-only memory
 * to the VMM in pieces: at most 8 bytes per exit and one exit per page (a
 * 16-byte vector store, a store across two pages), and for a REP string store
 * one exit per element. The first piece is decided; this remembers that
 * decision and recognises the instruction's later pieces, which take it
 * without a new event. A health-VM failure or a policy reload between pieces
 * can then never leave a store half done.
 *
 * A later piece of the same instruction is told from the registers:
 *  - pieces of one execution: KVM runs no guest instruction between them, so
 *    every register is as it was (or as the VMM set it), and the piece lies
 *    further on in the same write;
 *  - the next element of a REP store: RIP still on it (after the last, past
 *    it or still on it with RCX 0), RCX one less, RDI one element on, and the
 *    piece is that element.
 * Anything else (another exit, another instruction, an interrupt handler
 * writing in between) ends the run: the next write is decided anew.
 */
import type { GuestMemory } from "../kvm/guest-memory.js";
import { type Regs, RFLAGS_DF, RFLAGS_RF } from "../kvm/structs.js";
import { physicalOffsetIn } from "./paging.js";
import type { LocatedStore } from "./write-site.js";

const SAME = ["rip", "rsp", "rdi", "rsi", "rcx"] as const;
/** RFLAGS alike but for RF, which KVM sets while it restarts a string instruction and clears at its end. */
const sameFlags = (a: bigint, b: bigint) => (a | RFLAGS_RF) === (b | RFLAGS_RF);

interface Run {
  /** Carry out the pieces (allowed) or drop them (denied). */
  perform: boolean;
  /** The registers at the last piece (after any change the VMM made). */
  regs: Regs;
  cr3: bigint;
  store: LocatedStore;
  /** Virtual address after the last piece seen (pieces of one execution). */
  next: bigint;
  end: bigint;
  /** Element size of a REP store. */
  element: number;
}

export class StorePieces {
  private run: Run | undefined;
  constructor(private readonly mem: GuestMemory) {}

  /** Forget the run (any exit that is not a write ends it). */
  clear(): void {
    this.run = undefined;
  }

  /**
   * A store was decided on its piece [va, va + len): remember the verdict
   * when the instruction has more to write. `regs`: the registers as the
   * guest resumes (after any rewind the verdict made).
   */
  start(store: LocatedStore, va: bigint, len: number, regs: Regs, cr3: bigint, perform: boolean): void {
    const end = store.write.va + BigInt(store.write.size);
    const next = va + BigInt(len);
    if (!store.repeating && next >= end) {
      this.run = undefined;
      return;
    }
    this.run = { perform, regs: { ...regs }, cr3, store, next, end, element: store.element };
  }

  /**
   * Is the write [gpa, gpa + len) with these registers a later piece of the
   * run? Returns whether to carry it out, or undefined (and the run ends)
   * when it is not.
   */
  follow(regs: Regs, gpa: number, len: number): boolean | undefined {
    const r = this.run;
    if (!r) return undefined;
    const ok = r.store.repeating ? this.nextElement(r, regs, gpa, len) : this.samePiece(r, regs, gpa, len);
    if (!ok) {
      this.run = undefined;
      return undefined;
    }
    return r.perform;
  }

  /** Further on in one execution: registers untouched, the bytes at or after `next`. */
  private samePiece(r: Run, regs: Regs, gpa: number, len: number): boolean {
    if (SAME.some((k) => regs[k] !== r.regs[k]) || !sameFlags(regs.rflags, r.regs.rflags)) return false;
    const va = this.virtualOf(r, r.next, r.end, gpa, len);
    if (va === undefined) return false;
    r.next = va + BigInt(len);
    if (r.next >= r.end) this.run = undefined;
    return true;
  }

  /** The next element of a REP string store. */
  private nextElement(r: Run, regs: Regs, gpa: number, len: number): boolean {
    const prev = r.regs;
    const site = r.store.site;
    const done = regs.rcx === 0n;
    if (regs.rcx !== BigInt.asUintN(64, prev.rcx - 1n)) return false;
    // After the last element RIP is past it, or still on it (then RCX = 0 makes it a no-op).
    if (regs.rip !== site.rip && !(done && regs.rip === site.rip + BigInt(site.length))) return false;
    const step = BigInt((prev.rflags & RFLAGS_DF) !== 0n ? -r.element : r.element);
    if (regs.rdi !== BigInt.asUintN(64, prev.rdi + step) || !sameFlags(regs.rflags, prev.rflags)) return false;
    // The element just written starts where RDI pointed before it.
    const at = this.virtualOf(r, prev.rdi, prev.rdi + BigInt(r.element), gpa, len);
    if (at === undefined) return false;
    r.regs = { ...regs };
    if (done) this.run = undefined;
    return true;
  }

  /** The virtual address in [from, to) whose bytes [gpa, gpa + len) are, page by page. */
  private virtualOf(r: Run, from: bigint, to: bigint, gpa: number, len: number): bigint | undefined {
    const at = physicalOffsetIn(this.mem, r.cr3, from, Number(to - from), gpa, len);
    return at === undefined ? undefined : from + BigInt(at);
  }
}
