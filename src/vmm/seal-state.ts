/**
 * Sealed state: what the guest sealed with HC_SEAL (one-way), and the check
 * that finds what has changed since. The IDTR, GDTR, pinned CR0/CR4 bits and
 * CR3 live in the vCPU, not in memory, so they are compared on exits; the
 * page-table entries under protected memory are pinned by the paging seal.
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import type { Sregs } from "../kvm/structs.js";
import { PagingSeal, PTE_ADDR_MASK, type VirtualRange } from "./paging-seal.js";

type DescriptorTable = { base: bigint; limit: number };

/** CR0.WP; CR4.SMEP and SMAP: the bits sealing pins when they are set. */
const CR0_PINNABLE = 1n << 16n;
const CR4_PINNABLE = (1n << 20n) | (1n << 21n);
const SEALS_IN_VCPU =
  ABI_CONSTANTS.SEAL_IDT | ABI_CONSTANTS.SEAL_CR | ABI_CONSTANTS.SEAL_GDT | ABI_CONSTANTS.SEAL_PAGING;
const SEAL_ALL = SEALS_IN_VCPU | ABI_CONSTANTS.SEAL_MSRS;

/** One sealed object found changed. */
export interface BrokenSeal {
  /** The integrity object (INTEGRITY_*). */
  object: number;
  /** What changed, for the event's note. */
  what: string;
  /** Put the sealed value back: in the registers to load (`x`), or in memory (`inMemory`: then flush the TLB). */
  restore: (x: Sregs) => void;
  inMemory?: boolean;
}

export class SealState {
  /** HC_SEAL bits the guest has set (one-way). */
  private sealed = 0;
  private idt: DescriptorTable | undefined;
  private gdt: DescriptorTable | undefined;
  private cr0 = 0n;
  private cr4 = 0n;
  /** Pins the translation of protected memory once the guest seals its paging. */
  private readonly paging: PagingSeal;

  constructor(
    memory: GuestMemory,
    /** The protected regions' virtual addresses: their translation is pinned by SEAL_PAGING. */
    private readonly protectedVirtual: readonly VirtualRange[] | undefined,
  ) {
    this.paging = new PagingSeal(memory);
  }

  get bits(): number {
    return this.sealed;
  }

  has(bit: number): boolean {
    return (this.sealed & bit) !== 0;
  }

  get pinnedEntries(): number {
    return this.paging.pinnedEntries;
  }

  /** HC_SEAL: protect more from now on, taking the sealed values from `sregs()` (read only when needed). */
  seal(what: number, sregs: () => Sregs): number {
    const C = ABI_CONSTANTS;
    const add = what & SEAL_ALL & ~this.sealed;
    if (add & SEALS_IN_VCPU) {
      const s = sregs();
      if (add & C.SEAL_PAGING) {
        // The kernel's protected ranges, and the IDT wherever the IDTR points now.
        const idt = { name: "the IDT", start: s.idt.base, end: s.idt.base + BigInt(s.idt.limit) + 1n };
        this.paging.seal(s.cr3, [...(this.protectedVirtual ?? []), idt]);
      }
      if (add & C.SEAL_IDT) this.idt = { base: s.idt.base, limit: s.idt.limit };
      if (add & C.SEAL_GDT) this.gdt = { base: s.gdt.base, limit: s.gdt.limit };
      if (add & C.SEAL_CR) {
        this.cr0 = s.cr0 & CR0_PINNABLE;
        this.cr4 = s.cr4 & CR4_PINNABLE;
      }
    }
    this.sealed |= add;
    return this.sealed;
  }

  /** Anything sealed that lives in the vCPU or its page tables (so worth checking on exits)? */
  get checked(): boolean {
    return (this.sealed & SEALS_IN_VCPU) !== 0;
  }

  /** The sealed objects that `s` (the vCPU's special registers now) and the page tables no longer match. */
  broken(s: Sregs): BrokenSeal[] {
    const C = ABI_CONSTANTS;
    const out: BrokenSeal[] = [];
    const hex = (n: bigint | number) => `0x${n.toString(16)}`;
    const table = (object: number, name: string, key: "idt" | "gdt", sealed: DescriptorTable | undefined) => {
      const now = s[key];
      if (!sealed || (now.base === sealed.base && now.limit === sealed.limit)) return;
      out.push({
        object,
        what: `${name} changed from ${hex(sealed.base)}/${sealed.limit} to ${hex(now.base)}/${now.limit}`,
        restore: (x) => {
          x[key] = { base: sealed.base, limit: sealed.limit };
        },
      });
    };
    const pinned = (object: number, name: string, key: "cr0" | "cr4", bits: bigint) => {
      if ((s[key] & bits) === bits) return;
      out.push({
        object,
        what: `pinned ${name} bits cleared: ${hex(bits & ~s[key])}`,
        restore: (x) => {
          x[key] |= bits;
        },
      });
    };
    table(C.INTEGRITY_IDTR, "IDTR", "idt", this.idt);
    table(C.INTEGRITY_GDTR, "GDTR", "gdt", this.gdt);
    pinned(C.INTEGRITY_CR0, "CR0", "cr0", this.cr0);
    pinned(C.INTEGRITY_CR4, "CR4", "cr4", this.cr4);
    const root = this.paging.cr3;
    if (root === undefined) return out;
    if ((s.cr3 & PTE_ADDR_MASK) !== root) {
      out.push({
        object: C.INTEGRITY_CR3,
        what: `CR3 changed from the sealed page tables at ${hex(root)} to ${hex(s.cr3)}`,
        restore: (x) => {
          x.cr3 = root | (x.cr3 & ~PTE_ADDR_MASK);
        },
      });
    }
    for (const c of this.paging.changes()) {
      out.push({
        object: C.INTEGRITY_PAGING,
        what: `page-table entry at ${hex(c.entry)} translating ${c.name} (${hex(c.va)}) changed from ${hex(c.from)} to ${hex(c.to)}`,
        restore: () => this.paging.restore(c.entry),
        inMemory: true,
      });
    }
    return out;
  }
}
