/**
 * Names guest addresses as `symbol+0xoff` using an image's symbol table.
 *
 * Which symbols take part: STT_FUNC, STT_GNU_IFUNC and STT_OBJECT symbols, and
 * STT_NOTYPE symbols with a nonzero value that are not SHN_ABS (labels in
 * assembly and linker-script symbols such as `__text_start`; absolute NOTYPE
 * symbols are usually sizes or constants, not addresses).
 *
 * The rule for an address A:
 * 1. Covering: if one or more sized symbols (size > 0) contain A in
 *    `[value, value + size)`, the innermost one wins: the greatest start, then
 *    the smallest size, then FUNC over OBJECT over NOTYPE, then GLOBAL over WEAK
 *    over LOCAL, then the name in code-unit order.
 * 2. Nearest label: otherwise take the symbols with the greatest value <= A. If
 *    they are all zero-sized and A is less than MAX_LABEL_DISTANCE past them, the
 *    best of them (same order as above) names A. If any of them is sized, that
 *    symbol ended before A, and A (padding, or data no symbol describes) is unknown.
 * 3. Otherwise A is unknown.
 *
 * The constructor flattens the symbols into disjoint sorted ranges in
 * O(n log n); each lookup is two binary searches, O(log n).
 */
import {
  type ElfSymbol,
  SHN_ABS,
  STB_GLOBAL,
  STB_WEAK,
  STT_FUNC,
  STT_GNU_IFUNC,
  STT_NOTYPE,
  STT_OBJECT,
} from "./elf.js";

/** How far past a zero-sized symbol an address may lie and still be named after it. */
export const MAX_LABEL_DISTANCE = 0x10000;

/** A symbol-relative name for an address. */
export interface SymbolLocation {
  name: string;
  /** Bytes from the symbol's value to the address, >= 0. */
  offset: number;
}

/** A disjoint address range `[start, end)` covered by one sized symbol. */
interface CoveredRange {
  start: number;
  end: number;
  symbol: ElfSymbol;
}

/** All symbols starting at one address, reduced to what rule 2 needs. */
interface LabelGroup {
  value: number;
  /** The best zero-sized symbol here, or undefined when a sized symbol starts here too. */
  label: ElfSymbol | undefined;
}

const TYPE_RANK: Record<number, number> = { [STT_FUNC]: 0, [STT_GNU_IFUNC]: 0, [STT_OBJECT]: 1, [STT_NOTYPE]: 2 };
const BIND_RANK: Record<number, number> = { [STB_GLOBAL]: 0, [STB_WEAK]: 1 };

/** Orders symbols at the same start best first (see the rule above). */
function preference(a: ElfSymbol, b: ElfSymbol): number {
  return (
    a.size - b.size ||
    (TYPE_RANK[a.type] ?? 3) - (TYPE_RANK[b.type] ?? 3) ||
    (BIND_RANK[a.bind] ?? 2) - (BIND_RANK[b.bind] ?? 2) ||
    (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );
}

function isAddressSymbol(s: ElfSymbol): boolean {
  if (!Number.isSafeInteger(s.value) || !Number.isSafeInteger(s.value + s.size) || s.size < 0) return false;
  if (s.name === "") return false;
  if (s.type === STT_FUNC || s.type === STT_GNU_IFUNC || s.type === STT_OBJECT) return true;
  return s.type === STT_NOTYPE && s.value !== 0 && s.sectionIndex !== SHN_ABS;
}

/**
 * Splits the sized symbols into disjoint ranges, each owned by the innermost
 * symbol covering it. `sorted` is ordered by value, best first within a value
 * (so smallest size first). Sweeps the boundary points with a stack of open
 * symbols, pushed in start order and, within one start, worst first; after the
 * ended ones are popped off the top, the top is the innermost open symbol.
 */
function flattenSized(sorted: ElfSymbol[]): CoveredRange[] {
  // Of several sized symbols with the same range, only the best can ever win.
  const sized = sorted.filter((s, i) => s.size > 0 && !sameRange(sorted[i - 1], s));
  const points = [...new Set(sized.flatMap((s) => [s.value, s.value + s.size]))].sort((a, b) => a - b);
  const open: ElfSymbol[] = [];
  const ranges: CoveredRange[] = [];
  let next = 0;
  for (let i = 0; i < points.length - 1; i++) {
    const point = points[i]!;
    const first = next;
    while (next < sized.length && sized[next]!.value === point) next++;
    for (let k = next - 1; k >= first; k--) open.push(sized[k]!);
    while (open.length > 0 && endOf(open[open.length - 1]!) <= point) open.pop();
    const top = open[open.length - 1];
    if (top) appendRange(ranges, { start: point, end: points[i + 1]!, symbol: top });
  }
  return ranges;
}

const endOf = (s: ElfSymbol): number => s.value + s.size;

const sameRange = (a: ElfSymbol | undefined, b: ElfSymbol): boolean =>
  a !== undefined && a.value === b.value && a.size === b.size;

function appendRange(ranges: CoveredRange[], range: CoveredRange): void {
  const last = ranges[ranges.length - 1];
  if (last && last.symbol === range.symbol && last.end === range.start) last.end = range.end;
  else ranges.push(range);
}

/**
 * One group per distinct value of `sorted` (ordered by value, best first within
 * a value). Within a value, zero-sized symbols come before sized ones, so the
 * first member is the best label; any sized member clears it.
 */
function groupLabels(sorted: ElfSymbol[]): LabelGroup[] {
  const groups: LabelGroup[] = [];
  for (const s of sorted) {
    const last = groups[groups.length - 1];
    if (last && last.value === s.value) {
      if (s.size > 0) last.label = undefined;
    } else {
      groups.push({ value: s.value, label: s.size > 0 ? undefined : s });
    }
  }
  return groups;
}

/** Index of the last element whose key is <= `addr`, or -1. */
function lastAtOrBefore<T>(items: T[], key: (item: T) => number, addr: number): number {
  let lo = 0;
  let hi = items.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (key(items[mid]!) <= addr) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

/** Answers "which symbol is this address in?" for one image's symbols. */
export class Symbolizer {
  private readonly covered: CoveredRange[];
  private readonly labels: LabelGroup[];

  /** Indexes the symbols that name addresses (see the module comment); others are ignored. */
  constructor(symbols: readonly ElfSymbol[]) {
    const sorted = symbols.filter(isAddressSymbol).sort((a, b) => a.value - b.value || preference(a, b));
    this.covered = flattenSized(sorted);
    this.labels = groupLabels(sorted);
  }

  /** The symbol that names `addr` and the offset into it, or undefined when none does. */
  lookup(addr: number): SymbolLocation | undefined {
    if (!Number.isSafeInteger(addr) || addr < 0) return undefined;
    const r = this.covered[lastAtOrBefore(this.covered, (c) => c.start, addr)];
    if (r && addr < r.end) return { name: r.symbol.name, offset: addr - r.symbol.value };
    const group = this.labels[lastAtOrBefore(this.labels, (g) => g.value, addr)];
    if (!group?.label || addr - group.value >= MAX_LABEL_DISTANCE) return undefined;
    return { name: group.label.name, offset: addr - group.value };
  }

  /** `name+0x4`, `name` at offset 0, or `0x<hex>` when no symbol names the address. */
  format(addr: number): string {
    const loc = this.lookup(addr);
    if (!loc) return Number.isSafeInteger(addr) && addr >= 0 ? `0x${addr.toString(16)}` : String(addr);
    return loc.offset === 0 ? loc.name : `${loc.name}+0x${loc.offset.toString(16)}`;
  }
}
