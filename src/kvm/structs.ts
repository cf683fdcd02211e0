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

export function zeroRegs(): Regs {
  const out = {} as Regs;
  for (const r of REG_NAMES) out[r] = 0n;
  return out;
}

export function decodeRegs(view: DataView, base = 0): Regs {
  const L = kernelLayout("kvm_regs");
  const out = {} as Regs;
  for (const r of REG_NAMES) out[r] = view.getBigUint64(base + L.off(r), true);
  return out;
}

export function encodeRegs(regs: Regs, view: DataView, base = 0): void {
  const L = kernelLayout("kvm_regs");
  for (const r of REG_NAMES) view.setBigUint64(base + L.off(r), BigInt.asUintN(64, regs[r]), true);
}

const SEG_U8 = ["type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"] as const;

function decodeSegment(view: DataView, at: number): Segment {
  const L = kernelLayout("kvm_segment");
  const seg = {
    base: view.getBigUint64(at + L.off("base"), true),
    limit: view.getUint32(at + L.off("limit"), true),
    selector: view.getUint16(at + L.off("selector"), true),
  } as Segment;
  for (const f of SEG_U8) seg[f] = view.getUint8(at + L.off(f));
  return seg;
}

function encodeSegment(seg: Segment, view: DataView, at: number): void {
  const L = kernelLayout("kvm_segment");
  view.setBigUint64(at + L.off("base"), seg.base, true);
  view.setUint32(at + L.off("limit"), seg.limit, true);
  view.setUint16(at + L.off("selector"), seg.selector, true);
  for (const f of SEG_U8) view.setUint8(at + L.off(f), seg[f]);
}

function decodeDTable(view: DataView, at: number): DTable {
  const L = kernelLayout("kvm_dtable");
  return { base: view.getBigUint64(at + L.off("base"), true), limit: view.getUint16(at + L.off("limit"), true) };
}

function encodeDTable(t: DTable, view: DataView, at: number): void {
  const L = kernelLayout("kvm_dtable");
  view.setBigUint64(at + L.off("base"), t.base, true);
  view.setUint16(at + L.off("limit"), t.limit, true);
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

export function decodeSregs(view: DataView, base = 0): Sregs {
  const L = kernelLayout("kvm_sregs");
  const out = {} as Sregs;
  for (const s of SEGMENT_NAMES) out[s] = decodeSegment(view, base + L.off(s));
  out.gdt = decodeDTable(view, base + L.off("gdt"));
  out.idt = decodeDTable(view, base + L.off("idt"));
  for (const [k, f] of CRS) out[k] = view.getBigUint64(base + L.off(f), true);
  return out;
}

/**
 * Encode into a buffer that already holds the current sregs (from a get), so
 * fields we do not model (the interrupt bitmap) are preserved.
 */
export function encodeSregs(s: Sregs, view: DataView, base = 0): void {
  const L = kernelLayout("kvm_sregs");
  for (const n of SEGMENT_NAMES) encodeSegment(s[n], view, base + L.off(n));
  encodeDTable(s.gdt, view, base + L.off("gdt"));
  encodeDTable(s.idt, view, base + L.off("idt"));
  for (const [k, f] of CRS) view.setBigUint64(base + L.off(f), s[k], true);
}

/** The privilege level the vCPU runs at (the RPL of CS always equals CPL). */
export function cplOf(sregs: Sregs): number {
  return sregs.cs.selector & 3;
}
