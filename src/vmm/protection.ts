/**
 * Host-enforced write protection of guest-physical memory.
 *
 * Protected regions (kernel .text, .rodata, …) are backed by read-only memory
 * slots, page-granular. A guest write to such a page exits to the VMM; this
 * module says what the write touched: a protected region (a decider rules on
 * it), or only unprotected bytes that share a read-only page (the VMM performs
 * the write transparently), or memory that is not RAM at all.
 */
import { createHash } from "node:crypto";
import { type GuestMemory, PAGE_SIZE } from "../kvm/guest-memory.js";
import type { ProtectedRegion } from "../model/regions.js";

export interface SlotPlan {
  readonly gpa: number;
  readonly size: number;
  readonly readonly: boolean;
}

export type WriteTarget =
  | { kind: "protected"; region: ProtectedRegion; offset: number }
  | { kind: "shared-page" }
  | { kind: "writable" }
  | { kind: "unbacked" };

const pageDown = (a: number) => Math.floor(a / PAGE_SIZE) * PAGE_SIZE;
const pageUp = (a: number) => Math.ceil(a / PAGE_SIZE) * PAGE_SIZE;

/**
 * Split [0, memSize) into memory slots: read-only over every page that holds a
 * protected byte, writable elsewhere. Adjacent slots of one kind are merged.
 */
export function planMemorySlots(memSize: number, regions: readonly ProtectedRegion[]): SlotPlan[] {
  const ro: Array<[number, number]> = [];
  for (const r of regions) {
    const s = pageDown(r.start);
    const e = pageUp(r.end);
    const last = ro[ro.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else ro.push([s, e]);
  }
  const slots: SlotPlan[] = [];
  let at = 0;
  for (const [s, e] of ro) {
    if (s > at) slots.push({ gpa: at, size: s - at, readonly: false });
    slots.push({ gpa: s, size: e - s, readonly: true });
    at = e;
  }
  if (at < memSize) slots.push({ gpa: at, size: memSize - at, readonly: false });
  return slots;
}

export class ProtectionMap {
  readonly regions: readonly ProtectedRegion[];
  private readonly roPages: ReadonlyArray<readonly [number, number]>;
  private readonly memSize: number;

  constructor(regions: readonly ProtectedRegion[], memSize: number) {
    this.regions = regions;
    this.memSize = memSize;
    this.roPages = planMemorySlots(memSize, regions)
      .filter((s) => s.readonly)
      .map((s) => [s.gpa, s.gpa + s.size] as const);
  }

  get protectedBytes(): number {
    return this.regions.reduce((n, r) => n + (r.end - r.start), 0);
  }

  regionById(id: number): ProtectedRegion | undefined {
    return this.regions[id - 1];
  }

  /** The first protected region that [gpa, gpa+len) touches. */
  regionTouching(gpa: number, len: number): ProtectedRegion | undefined {
    const end = gpa + Math.max(1, len);
    let lo = 0;
    let hi = this.regions.length - 1;
    // Binary search for the first region whose end is above gpa.
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.regions[mid] as ProtectedRegion;
      if (r.end <= gpa) lo = mid + 1;
      else hi = mid - 1;
    }
    const r = this.regions[lo];
    return r && r.start < end ? r : undefined;
  }

  isReadOnlyPage(gpa: number): boolean {
    return this.roPages.some(([s, e]) => gpa >= s && gpa < e);
  }

  /** What a guest write of `len` bytes at `gpa` touched. */
  classifyWrite(gpa: number, len: number): WriteTarget {
    if (!(gpa >= 0 && len > 0 && gpa + len <= this.memSize)) return { kind: "unbacked" };
    const region = this.regionTouching(gpa, len);
    if (region) return { kind: "protected", region, offset: Math.max(0, gpa - region.start) };
    return this.isReadOnlyPage(gpa) || this.isReadOnlyPage(gpa + len - 1)
      ? { kind: "shared-page" }
      : { kind: "writable" };
  }

  /** SHA-256 of every region's bytes, in region order. */
  hash(mem: GuestMemory): string[] {
    return this.regions.map((r) =>
      createHash("sha256")
        .update(mem.slice(r.start, r.end - r.start))
        .digest("hex"),
    );
  }
}
