/**
 * Guardvisor's rules for a kernel image (docs/guest-abi.md, "The kernel
 * image"): its loadable segments must fit guest RAM clear of the boot area
 * and of each other, and its read-only allocated sections (code, read-only
 * data) are the protected regions. The ELF itself is read by elf.ts.
 * A well-formed file whose segments do not fit the guest raises `ELF_LAYOUT`.
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import { configError, elfError, GuardvisorError } from "../errors.js";
import { firstOverlap, type RegionRange } from "../model/regions.js";
import {
  type ElfImage,
  type ElfSection,
  type ElfSegment,
  formatSize,
  hex,
  PF_W,
  PF_X,
  parseElf,
  printable,
  range,
  SHF_ALLOC,
  SHF_WRITE,
  SHT_NOBITS,
} from "./elf.js";

const PAGE_SIZE = 0x1000;
const { BOOT_AREA_START, BOOT_AREA_END } = ABI_CONSTANTS;

const layoutError = (msg: string): GuardvisorError => new GuardvisorError("ELF_LAYOUT", msg);

/** The PT_LOAD segments that occupy memory (p_memsz > 0); empty ones load nothing. */
function occupiedSegments(img: ElfImage): ElfSegment[] {
  return img.loadSegments.filter((s) => s.memsz > 0);
}

const physicalRange = (seg: ElfSegment): string => range(seg.paddr, seg.paddr + seg.memsz);

function checkInsideRam(seg: ElfSegment, memSize: number): void {
  if (seg.paddr + seg.memsz > memSize) {
    throw layoutError(
      `PT_LOAD segment ${seg.index} ${physicalRange(seg)} lies outside guest RAM (${formatSize(memSize)})`,
    );
  }
}

function checkClearOfBootArea(seg: ElfSegment): void {
  if (seg.paddr >= BOOT_AREA_END) return;
  if (seg.paddr < BOOT_AREA_START) {
    throw layoutError(`segment ${seg.index} ${physicalRange(seg)} touches page 0 [0x0,${hex(PAGE_SIZE)})`);
  }
  throw layoutError(
    `segment ${seg.index} ${physicalRange(seg)} overlaps the boot area ${range(BOOT_AREA_START, BOOT_AREA_END)}`,
  );
}

function checkNoOverlap(segments: ElfSegment[]): void {
  const sorted = [...segments].sort((a, b) => a.paddr - b.paddr || a.index - b.index);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.paddr < prev.paddr + prev.memsz) {
      const [lo, hi] = [prev.index, cur.index].sort((a, b) => a - b);
      throw layoutError(`PT_LOAD segments ${lo} and ${hi} overlap`);
    }
  }
}

/**
 * The guest-physical address of the entry point: e_entry translated through the
 * PT_LOAD segment that contains it by virtual address.
 * @throws GuardvisorError ELF_LAYOUT when no loaded segment contains the entry
 *   point or the one that does is not executable (no PF_X).
 */
export function physicalEntry(img: ElfImage): number {
  const entry = img.entry;
  const seg = occupiedSegments(img).find((s) => entry >= s.vaddr && entry < s.vaddr + s.memsz);
  if (!seg) throw layoutError(`entry point ${hex(entry)} is not inside any PT_LOAD segment`);
  if ((seg.flags & PF_X) === 0) {
    throw layoutError(`entry point ${hex(entry)} is in segment ${seg.index}, which is not executable (no PF_X)`);
  }
  return seg.paddr + (entry - seg.vaddr);
}

/**
 * Checks that the image can be loaded into `memSize` bytes of guest RAM: at least
 * one non-empty PT_LOAD; every PT_LOAD's physical range `[p_paddr, p_paddr + p_memsz)`
 * inside RAM, clear of page 0 and the boot area (every byte >= BOOT_AREA_END) and
 * disjoint from the others; and the entry point inside an executable PT_LOAD.
 * PT_LOAD segments with p_memsz 0 load nothing and are not checked.
 * @throws GuardvisorError ELF_LAYOUT naming the offending segment.
 */
export function validateLayout(img: ElfImage, memSize: number): void {
  if (!Number.isSafeInteger(memSize) || memSize <= 0) {
    throw configError("memSize", `${memSize} is not a positive byte count`);
  }
  const segments = occupiedSegments(img);
  if (segments.length === 0) throw layoutError("the image has no non-empty PT_LOAD segment");
  for (const seg of segments) {
    checkInsideRam(seg, memSize);
    checkClearOfBootArea(seg);
  }
  checkNoOverlap(segments);
  physicalEntry(img);
}

// ---------------------------------------------------------------------------
// Protected regions
// ---------------------------------------------------------------------------

const isAllocated = (s: ElfSection): boolean => (s.flags & SHF_ALLOC) !== 0;

const isProtectedSection = (s: ElfSection): boolean =>
  isAllocated(s) && (s.flags & SHF_WRITE) === 0 && s.size > 0 && s.type !== SHT_NOBITS;

function sectionRegion(img: ElfImage, sec: ElfSection): RegionRange {
  const name = sec.name === "" ? `section${sec.index}` : sec.name;
  const end = sec.addr + sec.size;
  const seg = img.loadSegments.find((s) => sec.addr >= s.vaddr && end <= s.vaddr + s.memsz);
  if (!seg) {
    throw elfError(
      `section ${sec.index} (${printable(name)}) ${range(sec.addr, end)} is not inside any PT_LOAD segment`,
    );
  }
  const start = seg.paddr + (sec.addr - seg.vaddr);
  return { name, start, end: start + sec.size };
}

function segmentRegions(img: ElfImage): RegionRange[] {
  return occupiedSegments(img)
    .filter((s) => (s.flags & PF_W) === 0)
    .map((s) => ({ name: `segment${s.index}`, start: s.paddr, end: s.paddr + s.memsz }));
}

function checkRegionsDisjoint(regions: RegionRange[]): void {
  const overlap = firstOverlap(regions);
  if (overlap)
    throw elfError(`protected regions ${printable(overlap[0].name)} and ${printable(overlap[1].name)} overlap`);
}

/**
 * The protected regions of an image (docs/guest-abi.md, "Protection"), sorted by
 * start and disjoint. Each SHF_ALLOC section without SHF_WRITE, with a nonzero
 * size and not SHT_NOBITS, becomes one region named after the section (or
 * "section<N>" when unnamed), translated to guest-physical addresses through the
 * PT_LOAD that contains it by virtual address. When the image has no allocated
 * sections (no section headers at all, or none with SHF_ALLOC), each non-empty
 * PT_LOAD without PF_W is a region named "segment<N>", N being its program
 * header index.
 * @throws GuardvisorError ELF_INVALID when a protected section lies outside every
 *   PT_LOAD or two protected regions overlap.
 */
export function protectedRegions(img: ElfImage): RegionRange[] {
  const regions = img.sections.some(isAllocated)
    ? img.sections.filter(isProtectedSection).map((sec) => sectionRegion(img, sec))
    : segmentRegions(img);
  regions.sort((a, b) => a.start - b.start || a.end - b.end);
  checkRegionsDisjoint(regions);
  return regions;
}

/**
 * Parses a kernel image and checks it against guest RAM of `memSize` bytes.
 * @returns the image and its protected regions.
 * @throws GuardvisorError ELF_INVALID or ELF_LAYOUT.
 */
export function loadElf(bytes: Uint8Array, memSize: number): { image: ElfImage; regions: RegionRange[] } {
  const image = parseElf(bytes);
  validateLayout(image, memSize);
  return { image, regions: protectedRegions(image) };
}
