/**
 * Typed views of the <linux/kvm.h> register structs, encoded and decoded with
 * the offset tables the native addon computed with offsetof().
 */
import { REG_NAMES, type RegName } from "../abi/guest-abi.js";
import { kernelLayout } from "./native.js";

export type Regs = Record<RegName, bigint>;

/** RFLAGS.DF: string instructions step downwards. */
export const RFLAGS_DF = 1n << 10n;
/** RFLAGS.RF: resume flag (KVM sets it while it restarts a string instruction). */
export const RFLAGS_RF = 1n << 16n;

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface DTable {
  base: bigint;
  limit: number;
}

export const SEGMENT_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
export type SegmentName = (typeof SEGMENT_NAMES)[number];

export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DTable;
  idt: DTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
}

/**
 * A register set with every register zero. Register sets are built as
 * object literals in REG_NAMES order (here and in decodeRegs), so they all
 * share one shape: built key by key they were several times slower to read.
 */
export function zeroRegs(): Regs {
  return {
    rax: 0n,
    rbx: 0n,
    rcx: 0n,
    rdx: 0n,
    rsi: 0n,
    rdi: 0n,
    rsp: 0n,
    rbp: 0n,
    r8: 0n,
    r9: 0n,
    r10: 0n,
    r11: 0n,
    r12: 0n,
    r13: 0n,
    r14: 0n,
    r15: 0n,
    rip: 0n,
    rflags: 0n,
  };
}

/**
 * The field offsets of the kernel structs, looked up once (the addon's tables
 * are keyed by name; registers are decoded on every exit).
 */
interface Offsets {
  regs: readonly number[];
  seg: { base: number; limit: number; selector: number; u8: readonly number[] };
  dtable: { base: number; limit: number };
  sregs: { size: number; segs: readonly number[]; gdt: number; idt: number; crs: readonly number[] };
}

let offsets: Offsets | undefined;

function offs(): Offsets {
  if (offsets) return offsets;
  const R = kernelLayout("kvm_regs");
  const G = kernelLayout("kvm_segment");
  const D = kernelLayout("kvm_dtable");
  const S = kernelLayout("kvm_sregs");
  offsets = {
    regs: REG_NAMES.map((r) => R.off(r)),
    seg: { base: G.off("base"), limit: G.off("limit"), selector: G.off("selector"), u8: SEG_U8.map((f) => G.off(f)) },
    dtable: { base: D.off("base"), limit: D.off("limit") },
    sregs: {
      size: S.size,
      segs: SEGMENT_NAMES.map((n) => S.off(n)),
      gdt: S.off("gdt"),
      idt: S.off("idt"),
      crs: CRS.map(([, f]) => S.off(f)),
    },
  };
  return offsets;
}

export function decodeRegs(view: DataView, base = 0): Regs {
  const o = offs().regs;
  const q = (i: number) => view.getBigUint64(base + (o[i] as number), true);
  // In REG_NAMES order (the literal keeps every register set one shape: zeroRegs).
  return {
    rax: q(0),
    rbx: q(1),
    rcx: q(2),
    rdx: q(3),
    rsi: q(4),
    rdi: q(5),
    rsp: q(6),
    rbp: q(7),
    r8: q(8),
    r9: q(9),
    r10: q(10),
    r11: q(11),
    r12: q(12),
    r13: q(13),
    r14: q(14),
    r15: q(15),
    rip: q(16),
    rflags: q(17),
  };
}

export function encodeRegs(regs: Regs, view: DataView, base = 0): void {
  const o = offs().regs;
  for (let i = 0; i < REG_NAMES.length; i++) {
    view.setBigUint64(base + (o[i] as number), BigInt.asUintN(64, regs[REG_NAMES[i] as RegName]), true);
  }
}

const SEG_U8 = ["type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"] as const;

function decodeSegment(view: DataView, at: number): Segment {
  const o = offs().seg;
  const u8 = o.u8;
  return {
    base: view.getBigUint64(at + o.base, true),
    limit: view.getUint32(at + o.limit, true),
    selector: view.getUint16(at + o.selector, true),
    type: view.getUint8(at + (u8[0] as number)),
    present: view.getUint8(at + (u8[1] as number)),
    dpl: view.getUint8(at + (u8[2] as number)),
    db: view.getUint8(at + (u8[3] as number)),
    s: view.getUint8(at + (u8[4] as number)),
    l: view.getUint8(at + (u8[5] as number)),
    g: view.getUint8(at + (u8[6] as number)),
    avl: view.getUint8(at + (u8[7] as number)),
    unusable: view.getUint8(at + (u8[8] as number)),
  };
}

function encodeSegment(seg: Segment, view: DataView, at: number): void {
  const o = offs().seg;
  view.setBigUint64(at + o.base, seg.base, true);
  view.setUint32(at + o.limit, seg.limit, true);
  view.setUint16(at + o.selector, seg.selector, true);
  SEG_U8.forEach((f, i) => {
    view.setUint8(at + (o.u8[i] as number), seg[f]);
  });
}

function decodeDTable(view: DataView, at: number): DTable {
  const o = offs().dtable;
  return { base: view.getBigUint64(at + o.base, true), limit: view.getUint16(at + o.limit, true) };
}

function encodeDTable(t: DTable, view: DataView, at: number): void {
  const o = offs().dtable;
  view.setBigUint64(at + o.base, t.base, true);
  view.setUint16(at + o.limit, t.limit, true);
}

const CRS = [
  ["cr0", "cr0"],
  ["cr2", "cr2"],
  ["cr3", "cr3"],
  ["cr4", "cr4"],
  ["cr8", "cr8"],
  ["efer", "efer"],
  ["apicBase", "apic_base"],
] as const;

/**
 * The special registers last decoded on this thread, and the bytes they came
 * from. Exits in a row mostly find them unchanged, and decoding them (17
 * BigInts, 10 objects) costs about 0.45 µs: when the bytes are the same, the
 * same object is handed out again. It is frozen, as every decoded set is, so
 * sharing it is safe (a change is made on a copy: `{ ...sregs, cr3 }`).
 */
let lastSregsWords: Int32Array | undefined;
let lastSregs: Sregs | undefined;
/** The words of the buffer last decoded from (a kvm_run page, decoded from on every exit). */
let wordsView: Int32Array | undefined;

export function decodeSregs(view: DataView, base = 0): Sregs {
  const size = offs().sregs.size;
  const at = view.byteOffset + base;
  if (at % 4 !== 0 || size % 4 !== 0) return deepFreeze(decodeSregsFresh(view, base));
  let words = wordsView;
  if (words?.buffer !== view.buffer || words.byteOffset !== at) {
    words = new Int32Array(view.buffer, at, size / 4);
    wordsView = words;
  }
  const last = lastSregsWords;
  if (last !== undefined && lastSregs !== undefined && sameWords(last, words)) return lastSregs;
  const s = deepFreeze(decodeSregsFresh(view, base));
  lastSregsWords = words.slice();
  lastSregs = s;
  return s;
}

/** Element by element. Each hot path keeps its own copy: one shared by the three measured 5–8% slower at the replay's p90 (docs/performance.md). */
function sameWords(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function deepFreeze(s: Sregs): Sregs {
  for (const n of SEGMENT_NAMES) Object.freeze(s[n]);
  Object.freeze(s.gdt);
  Object.freeze(s.idt);
  return Object.freeze(s);
}

function decodeSregsFresh(view: DataView, base: number): Sregs {
  const o = offs().sregs;
  const seg = (i: number) => decodeSegment(view, base + (o.segs[i] as number));
  const cr = (i: number) => view.getBigUint64(base + (o.crs[i] as number), true);
  // In SEGMENT_NAMES and CRS order.
  return {
    cs: seg(0),
    ds: seg(1),
    es: seg(2),
    fs: seg(3),
    gs: seg(4),
    ss: seg(5),
    tr: seg(6),
    ldt: seg(7),
    gdt: decodeDTable(view, base + o.gdt),
    idt: decodeDTable(view, base + o.idt),
    cr0: cr(0),
    cr2: cr(1),
    cr3: cr(2),
    cr4: cr(3),
    cr8: cr(4),
    efer: cr(5),
    apicBase: cr(6),
  };
}

/**
 * Encode into a buffer that already holds the current sregs (from a get), so
 * fields we do not model (the interrupt bitmap) are preserved.
 */
export function encodeSregs(s: Sregs, view: DataView, base = 0): void {
  const o = offs().sregs;
  SEGMENT_NAMES.forEach((n, i) => {
    encodeSegment(s[n], view, base + (o.segs[i] as number));
  });
  encodeDTable(s.gdt, view, base + o.gdt);
  encodeDTable(s.idt, view, base + o.idt);
  CRS.forEach(([k], i) => {
    view.setBigUint64(base + (o.crs[i] as number), s[k], true);
  });
}

/** The privilege level the vCPU runs at (the RPL of CS always equals CPL). */
export function cplOf(sregs: Sregs): number {
  return sregs.cs.selector & 3;
}
