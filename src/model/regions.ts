/**
 * Protected regions: guest-physical ranges whose pages the VMM maps read-only.
 * The ELF loader finds them (unnumbered), a VM numbers them; deciders, rule
 * tables and the audit name them by number.
 */
import { GuardvisorError } from "../errors.js";

/** A guest-physical range `[start, end)` to protect, as a kernel image names it. */
export interface RegionRange {
  readonly name: string;
  readonly start: number;
  readonly end: number;
}

/** A protected region of one VM. */
export interface ProtectedRegion extends RegionRange {
  /** 1-based; 0 in a context record means "no region". */
  readonly id: number;
}

/** The first two neighbours of a list sorted by start that overlap, if any. */
export function firstOverlap<R extends RegionRange>(sorted: readonly R[]): [R, R] | undefined {
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1] as R;
    const cur = sorted[i] as R;
    if (cur.start < prev.end) return [prev, cur];
  }
  return undefined;
}

/** Assign ids, sort, and check regions lie in RAM and do not overlap. @throws GuardvisorError ELF_LAYOUT. */
export function makeRegions(list: readonly RegionRange[], memSize: number): ProtectedRegion[] {
  const sorted = [...list].sort((a, b) => a.start - b.start);
  for (const r of sorted) {
    if (!(r.start >= 0 && r.start < r.end && r.end <= memSize)) {
      throw new GuardvisorError(
        "ELF_LAYOUT",
        `protected region ${r.name} [0x${r.start.toString(16)}, 0x${r.end.toString(16)}) is not inside guest RAM`,
      );
    }
  }
  const overlap = firstOverlap(sorted);
  if (overlap)
    throw new GuardvisorError("ELF_LAYOUT", `protected regions ${overlap[0].name} and ${overlap[1].name} overlap`);
  return sorted.map((r, i) => ({ id: i + 1, name: r.name, start: r.start, end: r.end }));
}
