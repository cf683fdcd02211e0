/**
 * Which instruction made a protected write. KVM emulates a write to a
 * read-only page in the kernel and exits to userspace (KVM_EXIT_MMIO) with
 * the instruction's register effects already committed: RIP points at the
 * next instruction, and RDI (string stores) or RSP (push, call, pop, enter)
 * has already moved. The evidence and the decision (RIP-range rules, the
 * allowlist) need the writing instruction itself, so it is found here.
 *
 * A candidate explains the write when the memory it writes, computed from
 * the registers as they are after it ran (RSP and RDI as it left them, the
 * others taken as unchanged) and translated page by page through the guest's
 * page tables, holds all the exit's bytes (KVM splits a write at page
 * boundaries and into 8-byte pieces), and its source is the value written
 * where that can be told (MOV, STOS, MOVS, PUSH, CALL). The candidates:
 *  - the instructions that end exactly at RIP (1 to 15 bytes back). For a
 *    stack write the address is the pre-instruction RSP iced uses, rebuilt
 *    from the current one; a push therefore writes at the current RSP.
 *    String stores (STOS/MOVS/INS) write the element just before RDI (RDI - S
 *    with RFLAGS.DF clear, RDI + S with it set; RDI/RCX cut to 32 bits under
 *    an address-size prefix); a REP one only retires once RCX is 0.
 *  - a REP string store AT RIP with RCX not yet 0: KVM exits once per
 *    iteration and leaves RIP on the instruction until the last.
 * Among the candidates, one writing exactly the exit's size wins over one
 * writing more, unless the exit may be one piece of a larger store (8 bytes,
 * or at a page boundary); then a REP string store at RIP; then the longest
 * (the one starting earliest): a shorter suffix that also decodes is a tail
 * of the executed instruction, not an instruction of its own.
 * When none explains it: a near CALL leaves RIP at its target, so an 8-byte
 * write at RSP is tried as a return address: the call ending there whose
 * target is RIP. Last, RIP itself with the registers taken as before the
 * instruction, for a host that exits before the instruction retires.
 *
 * Everything read here is guest-controlled: bytes come through readVirtual
 * (bounds-checked), the decoder never reads past them, and a write no
 * candidate explains is reported as such rather than guessed.
 */
import { REG_NAMES, type RegName } from "../abi/guest-abi.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import { type Regs, RFLAGS_DF, type Sregs } from "../kvm/structs.js";
import { type Iced, loadIced } from "../x86/iced.js";
import { physicalOffsetIn, readVirtual } from "./paging.js";

/** The longest x86 instruction. */
const MAX_INSN = 15;

export interface WriteSite {
  /** Address of the writing instruction. */
  rip: bigint;
  /** Its length in bytes. */
  length: number;
}

/** A located store: the instruction, everything it writes, and how to fault it precisely. */
export interface LocatedStore {
  site: WriteSite;
  /**
   * The virtual bytes the instruction writes from this exit on, lowest
   * first: one operand, or for a REP string store this element and the
   * iterations still to come (RCX of them, upwards or, with DF set, downwards).
   */
  write: { va: bigint; size: number };
  /** Where the exit's bytes lie in `write` (bytes from its start). */
  offset: number;
  /** A REP string store with iterations left: KVM exits once per element, RIP staying on it. */
  repeating: boolean;
  /** The operand's size (a string store's element). */
  element: number;
  /**
   * The registers the instruction moved, as they were before it (RSP for a
   * push or call; RDI, RSI and RCX for one string element): a fault at the
   * instruction puts them back, as the CPU's own fault would leave them.
   */
  before: Partial<Regs>;
}

/** What a protected-write exit tells: where the guest resumes and what it wrote. */
export interface WriteExit {
  regs: Regs;
  sregs: Sregs;
  gpa: number;
  /** The bytes written (KVM_EXIT_MMIO data). */
  data: Uint8Array;
}

/** The general-purpose registers a context holds (REG_NAMES without rip and rflags). */
const GPRS = new Set<string>(REG_NAMES.filter((r) => r !== "rip" && r !== "rflags"));

type Insn = InstanceType<Iced["Instruction"]>;
type Used = InstanceType<Iced["UsedMemory"]>;

/** A register's 64-bit value (its full register), or undefined for one we do not hold. */
function regValue(lib: Iced, regs: Regs, reg: number): bigint | undefined {
  const name = gprName(lib, reg);
  return name === null ? 0n : name === undefined ? undefined : regs[name];
}

/** A general register's full name (null for none), or undefined for one we do not hold. */
function gprName(lib: Iced, reg: number): RegName | null | undefined {
  if (reg === lib.Register.None) return null;
  const name = String(lib.Register[lib.RegisterExt.fullRegister(reg)] ?? "").toLowerCase();
  return GPRS.has(name) ? (name as RegName) : undefined;
}

/** AH, BH, CH, DH: bits 8-15 of their full register. */
function isHigh8(lib: Iced, reg: number): boolean {
  const R = lib.Register;
  return reg === R.AH || reg === R.BH || reg === R.CH || reg === R.DH;
}

/** What a register operand stores, from its low byte up (AH..DH: bits 8-15), or undefined for one we do not hold. */
function operandValue(lib: Iced, regs: Regs, reg: number): bigint | undefined {
  const full = regValue(lib, regs, reg);
  if (full === undefined) return undefined;
  return isHigh8(lib, reg) ? full >> 8n : full;
}

function segmentBase(lib: Iced, sregs: Sregs, seg: number): bigint {
  if (seg === lib.Register.FS) return sregs.fs.base;
  if (seg === lib.Register.GS) return sregs.gs.base;
  return 0n; // flat in 64-bit mode
}

let writeAccess: Set<number> | undefined;
/** The operand accesses that write memory. */
function writeAccesses(lib: Iced): Set<number> {
  writeAccess ??= new Set<number>([
    lib.OpAccess.Write,
    lib.OpAccess.ReadWrite,
    lib.OpAccess.CondWrite,
    lib.OpAccess.ReadCondWrite,
  ]);
  return writeAccess;
}

/** Are the exit's bytes those of `value` (little-endian) from byte `off` on? */
function valueIs(value: bigint, off: number, data: Uint8Array): boolean {
  const v = BigInt.asUintN(64, value);
  for (let i = 0; i < data.length; i++) {
    if (Number((v >> BigInt(8 * (off + i))) & 0xffn) !== data[i]) return false;
  }
  return true;
}

/**
 * Where the exit's bytes lie in a write of `size` bytes at virtual `va`: their
 * offset in it, or undefined when the write does not hold all of them. KVM
 * splits a write at page boundaries (and in 8-byte pieces), so each page the
 * write spans is translated on its own.
 */
function offsetIn(mem: GuestMemory, x: WriteExit, va: bigint, size: number): number | undefined {
  if (size < x.data.length) return undefined;
  return physicalOffsetIn(mem, x.sregs.cr3, va, size, x.gpa, x.data.length);
}

/**
 * The virtual address of a memory operand iced reports. iced computes stack
 * operands (push, call, pop, enter) from RSP before the instruction; `after`
 * says the registers are those after it, so RSP is first moved back.
 */
function address(lib: Iced, insn: Insn, m: Used, x: WriteExit, after: boolean): bigint | undefined {
  let base = regValue(lib, x.regs, m.base);
  const index = regValue(lib, x.regs, m.index);
  if (base === undefined || index === undefined) return undefined;
  const rsp = lib.RegisterExt.fullRegister(m.base) === lib.Register.RSP;
  if (after && rsp && insn.stackPointerIncrement !== 0) base -= BigInt(insn.stackPointerIncrement);
  let ea = base + index * BigInt(m.scale) + m.displacement;
  if (lib.RegisterExt.isGPR32(m.base) || lib.RegisterExt.isGPR32(m.index)) ea = BigInt.asUintN(32, ea);
  return BigInt.asUintN(64, segmentBase(lib, x.sregs, m.segment) + ea);
}

/**
 * A direct near call's target (from its code bytes). Indirect calls are not
 * told: their target would come from registers or memory the guest controls,
 * and a located writer can be an allowlisted one, so their pushes stay unexplained.
 */
function callTarget(lib: Iced, insn: Insn): bigint | undefined {
  const K = lib.OpKind;
  const kind = insn.op0Kind;
  if (kind === K.NearBranch16 || kind === K.NearBranch32 || kind === K.NearBranch64) return insn.nearBranchTarget;
  return undefined;
}

/**
 * Is the source of the write (bytes `off` on) the value written? Told for a
 * plain MOV; after the instruction, for PUSH (a register or an immediate) and
 * a direct near CALL (the return address, and its target must be where the
 * guest resumes). Other instructions: yes.
 */
function valueMatches(lib: Iced, insn: Insn, x: WriteExit, off: number, after: boolean): boolean {
  const K = lib.OpKind;
  if (insn.mnemonic === lib.Mnemonic.Mov && insn.op0Kind === K.Memory) {
    let value: bigint | undefined;
    if (insn.op1Kind === K.Register) value = operandValue(lib, x.regs, insn.op1Register);
    else if (insn.op1Kind !== K.Memory) value = insn.immediate(1);
    return value === undefined || valueIs(value, off, x.data); // undefined: a register we do not hold
  }
  if (!after) return true;
  if (insn.mnemonic === lib.Mnemonic.Push && insn.opCount === 1) {
    const kind = insn.op0Kind;
    let value: bigint | undefined;
    if (kind === K.Register && lib.RegisterExt.fullRegister(insn.op0Register) === lib.Register.RSP) {
      value = x.regs.rsp - BigInt(insn.stackPointerIncrement); // push rsp stores RSP before the push
    } else if (kind === K.Register) value = operandValue(lib, x.regs, insn.op0Register);
    else if (kind !== K.Memory) value = insn.immediate(0);
    return value === undefined || valueIs(value, off, x.data);
  }
  if (insn.isCallNear || insn.isCallNearIndirect) {
    return valueIs(insn.nextIP, off, x.data) && callTarget(lib, insn) === x.regs.rip;
  }
  return true;
}

/** STOS, MOVS, INS: a store to ES:[RDI] (or [EDI]). */
function isStringStore(lib: Iced, insn: Insn): boolean {
  return insn.op0Kind === lib.OpKind.MemoryESRDI || insn.op0Kind === lib.OpKind.MemoryESEDI;
}

/**
 * A string store, from the registers after an iteration: the element it just
 * wrote is before RDI (after it, when DF is set). `atRip`: the candidate is
 * the instruction at RIP, which for REP is the case while RCX is not yet 0.
 * Returns the element's size when it explains the write.
 */
function stringStore(lib: Iced, insn: Insn, mem: GuestMemory, x: WriteExit, atRip: boolean): Hit | undefined {
  const bits = insn.op0Kind === lib.OpKind.MemoryESRDI ? 64 : 32;
  const size = lib.MemorySizeExt.size(insn.memorySize);
  if (size === 0) return undefined;
  const rep = insn.hasRepPrefix || insn.hasRepnePrefix;
  const rcx = BigInt.asUintN(bits, x.regs.rcx);
  if (rep ? (rcx !== 0n) !== atRip : atRip) return undefined;
  const down = (x.regs.rflags & RFLAGS_DF) !== 0n;
  const step = down ? BigInt(size) : -BigInt(size);
  const va = BigInt.asUintN(bits, x.regs.rdi + step); // ES base: 0 in 64-bit mode
  const off = offsetIn(mem, x, va, size);
  if (off === undefined) return undefined;
  const src = insn.op1Kind;
  const movs = src === lib.OpKind.MemorySegRSI || src === lib.OpKind.MemorySegESI;
  if (movs) {
    // MOVS: the element it copied is before RSI likewise. One we cannot read (not RAM) is not told.
    const from = segmentBase(lib, x.sregs, insn.memorySegment) + BigInt.asUintN(bits, x.regs.rsi + step);
    const copied = readVirtual(mem, x.sregs.cr3, BigInt.asUintN(64, from), size);
    if (copied.length === size && x.data.some((b, i) => copied[off + i] !== b)) return undefined;
  } else if (src === lib.OpKind.Register && insn.op1Register !== lib.Register.DX) {
    // STOS: AL, AX, EAX or RAX (INS stores what it read from port DX: not told).
    const value = operandValue(lib, x.regs, insn.op1Register);
    if (value !== undefined && !valueIs(value, off, x.data)) return undefined;
  }
  // This element, then the RCX still to come (capped: the extent is for deciding, not for walking).
  const left = rep ? (rcx < MAX_REP_LEFT ? Number(rcx) : Number(MAX_REP_LEFT)) : 0;
  const before: Partial<Regs> = { rdi: x.regs.rdi + step };
  if (movs) before.rsi = x.regs.rsi + step;
  if (rep) before.rcx = x.regs.rcx + 1n;
  return {
    size,
    va: down ? BigInt.asUintN(64, va - BigInt(left * size)) : va,
    off: down ? left * size + off : off,
    extent: size * (left + 1),
    repeating: rep && rcx !== 0n,
    before,
  };
}

/** Iterations of a REP store counted into its extent at most (about 16 MiB of qwords). */
const MAX_REP_LEFT = 1n << 21n;

/** What a candidate writes, when it explains the exit. */
interface Hit {
  /** The operand's (element's) size. */
  size: number;
  /** The lowest virtual byte of the whole write (REP: with the iterations to come). */
  va: bigint;
  /** The exit's bytes' offset from `va`. */
  off: number;
  /** Bytes from `va` on that the instruction writes. */
  extent: number;
  repeating: boolean;
  before: Partial<Regs>;
}

// Reused across calls (one per thread): allocating them per candidate costs more than decoding.
let factory: InstanceType<Iced["InstructionInfoFactory"]> | undefined;
let reused: Insn | undefined;

/**
 * Does the decoded instruction explain the exit's write? `after`: the
 * registers are those after it ran (else before: the fallback at RIP).
 * Returns what it writes, or undefined.
 */
function explains(
  lib: Iced,
  insn: Insn,
  mem: GuestMemory,
  x: WriteExit,
  after: boolean,
  atRip: boolean,
): Hit | undefined {
  if (after && isStringStore(lib, insn)) return stringStore(lib, insn, mem, x, atRip);
  if (after && (atRip || insn.isCallFar || insn.isCallFarIndirect)) return undefined;
  factory ??= new lib.InstructionInfoFactory();
  const info = factory.info(insn);
  let used: Used[] = [];
  try {
    used = info.usedMemory() as Used[];
    const writes = writeAccesses(lib);
    for (const m of used) {
      if (!writes.has(m.access)) continue;
      const va = address(lib, insn, m, x, after);
      if (va === undefined) continue;
      const size = lib.MemorySizeExt.size(m.memorySize);
      const off = offsetIn(mem, x, va, size);
      if (off !== undefined && valueMatches(lib, insn, x, off, after)) {
        const moved = after && insn.stackPointerIncrement !== 0;
        const before: Partial<Regs> = moved ? { rsp: x.regs.rsp - BigInt(insn.stackPointerIncrement) } : {};
        return { size, va, off, extent: size, repeating: false, before };
      }
    }
    return undefined;
  } finally {
    for (const m of used) m.free(); // WebAssembly memory: not collected
    info.free();
  }
}

/**
 * The code around RIP: up to 15 bytes before it (fewer when the page before
 * is not mapped) and 16 from it. `before` says how many precede RIP.
 */
function codeAround(mem: GuestMemory, cr3: bigint, rip: bigint): { bytes: Uint8Array; before: number } {
  const from = BigInt.asUintN(64, rip - BigInt(MAX_INSN));
  let bytes = readVirtual(mem, cr3, from, 2 * MAX_INSN + 1);
  if (bytes.length >= MAX_INSN) return { bytes, before: MAX_INSN };
  const page = rip & ~0xfffn;
  const before = Number(rip - page) < MAX_INSN ? Number(rip - page) : 0;
  bytes = readVirtual(mem, cr3, BigInt.asUintN(64, rip - BigInt(before)), before + MAX_INSN + 1);
  return bytes.length >= before ? { bytes, before } : { bytes: new Uint8Array(0), before: 0 };
}

/** A located candidate, and whether it writes exactly the exit's size. */
interface Found {
  store: LocatedStore;
  exact: boolean;
}

function found(rip: bigint, length: number, hit: Hit, exitLength: number): Found {
  return {
    store: {
      site: { rip, length },
      write: { va: hit.va, size: hit.extent },
      offset: hit.off,
      repeating: hit.repeating,
      element: hit.size,
      before: { ...hit.before, rip },
    },
    exact: hit.size === exitLength,
  };
}

/**
 * Can the exit's bytes be one piece of a larger store? KVM hands a store over
 * in pieces of at most 8 bytes, split at page boundaries: then a candidate
 * writing more is no less likely than one writing exactly the piece.
 */
function maybePiece(x: WriteExit): boolean {
  const start = x.gpa % 0x1000;
  return x.data.length === 8 || start === 0 || start + x.data.length === 0x1000;
}

/**
 * A candidate ending at RIP that writes memory the plain way: one written
 * memory operand, addressed by general registers (or none) and a
 * displacement, or RIP-relative, not through the stack pointer's own move,
 * not a string store or a call. What `explains` computes for it with iced
 * can then be computed from these plain values alone.
 */
interface PlainCandidate {
  back: number;
  /** The written operand (undefined: the candidate writes no memory it can tell: it never explains a write). */
  mem?: {
    base: RegName | null;
    index: RegName | null;
    scale: bigint;
    /** RIP-relative: from the end of the instruction (RIP); else absolute. */
    displacement: bigint;
    ripRelative: boolean;
    segment: "fs" | "gs" | null;
    addr32: boolean;
    size: number;
  };
  /** What it stores, where that can be told (a MOV's register or immediate); undefined: anything. */
  value?: { reg: RegName; high8: boolean } | { imm: bigint };
}

/** What is known of one window of code before RIP. */
interface Ending {
  /** The lengths (longest first) for which it decodes to one instruction ending at RIP. */
  backs: number[];
  /** Those candidates as plain values; null: one of them is not plain; undefined: not worked out yet. */
  plain?: PlainCandidate[] | null;
  /** The instruction at RIP (the window's bytes from `before` on) is a string store. */
  ripStringStore: boolean;
}

type Decoder = InstanceType<Iced["Decoder"]>;

/**
 * A decoder over one window of code, made on first use: a window whose
 * answers are all known (the common store, seen before) needs none, and
 * making one copies the bytes into the decoder's WebAssembly memory.
 */
class LazyDecoder {
  private made: Decoder | undefined;
  constructor(
    private readonly lib: Iced,
    private readonly bytes: Uint8Array,
  ) {}
  get(): Decoder {
    this.made ??= new this.lib.Decoder(64, this.bytes, this.lib.DecoderOptions.None);
    return this.made;
  }
  /** Decode into `insn` the candidate `back` bytes long that ends at `end` (`before` bytes of code precede it). */
  decodeBack(insn: Insn, before: number, back: number, end: bigint): void {
    const d = this.get();
    d.position = before - back;
    d.ip = BigInt.asUintN(64, end - BigInt(back));
    d.decodeOut(insn);
  }
  free(): void {
    this.made?.free();
    this.made = undefined;
  }
}

/** Code windows seen (by a hash of their bytes and `before`; each entry keeps its bytes), and what ends at their RIP. */
const endingCache = new Map<number, { before: number; code: Uint8Array; ending: Ending }[]>();
let endingCount = 0;

/** FNV-1a over the window and where RIP lies in it. */
function windowHash(code: Uint8Array, before: number): number {
  let h = 0x811c9dc5 ^ before;
  for (let i = 0; i < code.length; i++) h = Math.imul(h ^ (code[i] as number), 0x01000193);
  return h >>> 0;
}

/** Element by element. Each hot path keeps its own copy: one shared by the three measured 5–8% slower at the replay's p90 (docs/performance.md). */
function sameCode(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
/** Windows kept at most (then the cache starts over): hot write sites are few. */
export const ENDING_CACHE_MAX = 4096;

/** Check plain candidates from their plain values (the default), or always through iced (false). */
let plainValues = true;

/** For the differential test: locate with plain values where they apply (true, the default) or with iced alone. */
export function usePlainCandidates(on: boolean): void {
  plainValues = on;
}

/**
 * The lengths `back` (longest first) for which the code `before` bytes
 * before RIP decodes to one instruction of exactly that length, and whether
 * the instruction at RIP is a string store. They depend on the code bytes
 * alone, so they are kept by the bytes themselves: the same site with the
 * same code skips the decodes (and the decoder), and changed code is another
 * key (no invalidation needed).
 */
function endingOf(lib: Iced, decoder: LazyDecoder, insn: Insn, code: Uint8Array, before: number): Ending {
  const key = windowHash(code, before);
  const bucket = endingCache.get(key);
  const known = bucket?.find((k) => k.before === before && sameCode(k.code, code));
  if (known) return known.ending;
  const d = decoder.get();
  const backs: number[] = [];
  for (let back = before; back >= 1; back--) {
    d.position = before - back;
    d.decodeOut(insn);
    if (!insn.isInvalid && insn.length === back) backs.push(back);
  }
  let ripStringStore = false;
  if (code.length > before) {
    d.position = before;
    d.decodeOut(insn);
    ripStringStore = !insn.isInvalid && isStringStore(lib, insn);
  }
  if (endingCount >= ENDING_CACHE_MAX) {
    endingCache.clear();
    endingCount = 0;
  }
  const ending: Ending = { backs, ripStringStore };
  const entry = { before, code: code.slice(), ending };
  if (bucket && endingCache.has(key)) bucket.push(entry);
  else endingCache.set(key, [entry]);
  endingCount++;
  return ending;
}

/** The decoded candidate as plain values, or undefined when it is not plain (see PlainCandidate). */
function plainOf(lib: Iced, insn: Insn, back: number, end: bigint): PlainCandidate | undefined {
  if (isStringStore(lib, insn) || insn.stackPointerIncrement !== 0) return undefined;
  if (insn.isCallNear || insn.isCallNearIndirect || insn.isCallFar || insn.isCallFarIndirect) return undefined;
  const ripRelative = insn.isIpRelMemoryOperand;
  if (ripRelative && insn.memoryBase !== lib.Register.RIP) return undefined; // EIP-relative: iced alone
  factory ??= new lib.InstructionInfoFactory();
  const info = factory.info(insn);
  let used: Used[] = [];
  try {
    used = info.usedMemory() as Used[];
    const writes = used.filter((m) => writeAccesses(lib).has(m.access));
    if (writes.length > 1) return undefined;
    const m = writes[0];
    if (!m) return { back };
    const base = gprName(lib, m.base);
    const index = gprName(lib, m.index);
    const seg = m.segment === lib.Register.FS ? "fs" : m.segment === lib.Register.GS ? "gs" : null;
    if (base === undefined || index === undefined) return { back }; // a register we do not hold: never explains
    const c: PlainCandidate = {
      back,
      mem: {
        base,
        index,
        scale: BigInt(m.scale),
        // iced gives a RIP-relative operand's address for this RIP: kept relative to it (the window has no RIP).
        displacement: ripRelative ? BigInt.asIntN(64, m.displacement - end) : m.displacement,
        ripRelative,
        segment: seg,
        addr32: lib.RegisterExt.isGPR32(m.base) || lib.RegisterExt.isGPR32(m.index),
        size: lib.MemorySizeExt.size(m.memorySize),
      },
    };
    const K = lib.OpKind;
    if (insn.mnemonic === lib.Mnemonic.Mov && insn.op0Kind === K.Memory) {
      if (insn.op1Kind === K.Register) {
        const reg = gprName(lib, insn.op1Register);
        if (reg) c.value = { reg, high8: isHigh8(lib, insn.op1Register) };
      } else if (insn.op1Kind !== K.Memory) c.value = { imm: insn.immediate(1) };
    }
    return c;
  } finally {
    for (const u of used) u.free(); // WebAssembly memory: not collected
    info.free();
  }
}

/** The window's candidates as plain values (decoded once per window), or null when one is not plain. */
function plainCandidates(
  lib: Iced,
  lazy: LazyDecoder,
  insn: Insn,
  ending: Ending,
  before: number,
  end: bigint,
): PlainCandidate[] | null {
  if (ending.plain !== undefined) return ending.plain;
  const out: PlainCandidate[] = [];
  for (const back of ending.backs) {
    lazy.decodeBack(insn, before, back, end);
    const c = plainOf(lib, insn, back, end);
    if (!c) {
      ending.plain = null;
      return null;
    }
    out.push(c);
  }
  ending.plain = out;
  return out;
}

/** What `explains` finds for a plain candidate, from its plain values: the same answer, with no decode. */
function explainsPlain(c: PlainCandidate, end: bigint, mem: GuestMemory, x: WriteExit): Hit | undefined {
  const m = c.mem;
  if (!m) return undefined;
  const base = m.base === null ? 0n : x.regs[m.base];
  const index = m.index === null ? 0n : x.regs[m.index];
  let ea = base + index * m.scale + (m.ripRelative ? end + m.displacement : m.displacement);
  if (m.addr32) ea = BigInt.asUintN(32, ea);
  const seg = m.segment === "fs" ? x.sregs.fs.base : m.segment === "gs" ? x.sregs.gs.base : 0n;
  const va = BigInt.asUintN(64, seg + ea);
  const off = offsetIn(mem, x, va, m.size);
  if (off === undefined) return undefined;
  const v = c.value;
  if (v !== undefined) {
    const value = "imm" in v ? v.imm : v.high8 ? x.regs[v.reg] >> 8n : x.regs[v.reg];
    if (!valueIs(value, off, x.data)) return undefined;
  }
  return { size: m.size, va, off, extent: m.size, repeating: false, before: {} };
}

/**
 * The best candidate ending exactly at `end` (`before` bytes of code precede
 * it in the decoder), registers taken as after it ran: the longest that
 * writes exactly the exit's size, else the longest that writes more.
 * `calls`: consider near calls only. A window whose candidates are all plain
 * (the common store) is decoded once; after that, only their plain values
 * are checked against the exit.
 */
function endingAt(
  lib: Iced,
  lazy: LazyDecoder,
  insn: Insn,
  ending: Ending,
  before: number,
  end: bigint,
  mem: GuestMemory,
  x: WriteExit,
  calls: boolean,
): Found | undefined {
  let larger: Found | undefined;
  const piece = maybePiece(x);
  const plain = calls || !plainValues ? null : plainCandidates(lib, lazy, insn, ending, before, end);
  if (plain) {
    for (const c of plain) {
      const hit = explainsPlain(c, end, mem, x);
      if (hit === undefined) continue;
      const f = found(BigInt.asUintN(64, end - BigInt(c.back)), c.back, hit, x.data.length);
      if (f.exact || piece) return f;
      larger ??= f;
    }
    return larger;
  }
  for (const back of ending.backs) {
    lazy.decodeBack(insn, before, back, end);
    if (calls && !insn.isCallNear && !insn.isCallNearIndirect) continue;
    const hit = explains(lib, insn, mem, x, true, false);
    if (hit === undefined) continue;
    const f = found(BigInt.asUintN(64, end - BigInt(back)), back, hit, x.data.length);
    if (f.exact || piece) return f;
    larger ??= f;
  }
  return larger;
}

/** The instruction at RIP, registers taken as after it ran (`after`: a REP string store mid-run) or before. */
function fromRip(
  lib: Iced,
  decoder: Decoder,
  insn: Insn,
  before: number,
  mem: GuestMemory,
  x: WriteExit,
  after: boolean,
): Found | undefined {
  decoder.position = before;
  decoder.ip = x.regs.rip;
  decoder.decodeOut(insn);
  if (insn.isInvalid) return undefined;
  const hit = explains(lib, insn, mem, x, after, after);
  if (hit === undefined) return undefined;
  const f = found(x.regs.rip, insn.length, hit, x.data.length);
  // Registers taken as before it (not after): it has not run, there is nothing to put back.
  if (!after) f.store.before = { rip: x.regs.rip };
  return f;
}

/**
 * A near call: RIP is its target, and the 8 bytes written at RSP are its
 * return address, so the call is the instruction that ends there.
 */
function callBehind(lib: Iced, insn: Insn, mem: GuestMemory, x: WriteExit): LocatedStore | undefined {
  if (x.data.length !== 8) return undefined;
  let ret = 0n;
  for (let i = 7; i >= 0; i--) ret = (ret << 8n) | BigInt(x.data[i] ?? 0);
  if (ret === x.regs.rip || offsetIn(mem, x, x.regs.rsp, 8) !== 0) return undefined; // (a call ending at RIP: tried)
  const { bytes, before } = codeAround(mem, x.sregs.cr3, ret);
  if (before === 0) return undefined;
  const decoder = new LazyDecoder(lib, bytes);
  try {
    const ending = endingOf(lib, decoder, insn, bytes, before);
    return endingAt(lib, decoder, insn, ending, before, ret, mem, x, true)?.store;
  } finally {
    decoder.free();
  }
}

/**
 * The instruction that made the write the exit reports, or undefined when
 * none explains it (see the top of this file for the candidates and their
 * order).
 */
export function locateWrite(mem: GuestMemory, x: WriteExit): WriteSite | undefined {
  return locateStore(mem, x)?.site;
}

/** locateWrite, with what the instruction writes in all and the registers it moved. */
export function locateStore(mem: GuestMemory, x: WriteExit): LocatedStore | undefined {
  const lib = loadIced();
  if (!lib) return undefined;
  reused ??= new lib.Instruction();
  const insn = reused;
  const { bytes, before } = codeAround(mem, x.sregs.cr3, x.regs.rip);
  if (bytes.length === 0) {
    try {
      return callBehind(lib, insn, mem, x); // a call to an unmapped target: RIP has no code, the call has
    } catch {
      return undefined;
    }
  }
  const decoder = new LazyDecoder(lib, bytes);
  try {
    const hasRip = bytes.length > before;
    const window = endingOf(lib, decoder, insn, bytes, before);
    // Only a string store explains a write from RIP with the registers as after it ran.
    const rep = window.ripStringStore ? fromRip(lib, decoder.get(), insn, before, mem, x, true) : undefined;
    if (rep?.exact) return rep.store;
    const ending = endingAt(lib, decoder, insn, window, before, x.regs.rip, mem, x, false);
    if (ending?.exact) return ending.store;
    const located = rep?.store ?? ending?.store ?? callBehind(lib, insn, mem, x);
    if (located || !hasRip) return located;
    return fromRip(lib, decoder.get(), insn, before, mem, x, false)?.store;
  } catch {
    return undefined;
  } finally {
    decoder.free();
  }
}

/**
 * Load the decoder now, while a VM is being made, and run it once on a
 * typical store: WebAssembly functions are compiled on first use, which would
 * otherwise land on the first protected write's verdict (tens of ms).
 */
export function preloadWriteLocator(): void {
  const lib = loadIced();
  if (!lib) return;
  factory ??= new lib.InstructionInfoFactory();
  reused ??= new lib.Instruction();
  const decoder = new lib.Decoder(64, Uint8Array.of(0x48, 0x89, 0x05, 0, 0, 0, 0), lib.DecoderOptions.None);
  try {
    decoder.decodeOut(reused);
    const info = factory.info(reused);
    for (const m of info.usedMemory() as InstanceType<Iced["UsedMemory"]>[]) {
      lib.MemorySizeExt.size(m.memorySize);
      m.free();
    }
    info.free();
  } finally {
    decoder.free();
  }
}

/** What an XSAVE-family store writes at most, when its size depends on XCR0. */
const XSAVE_MAX = 4096;

/**
 * The instruction at RIP, before it ran (KVM stopped on it: it could not
 * emulate it): its length and the virtual ranges it would write, or
 * undefined when there is no readable, decodable instruction there.
 */
export function storesAt(
  mem: GuestMemory,
  regs: Regs,
  sregs: Sregs,
): { site: WriteSite; writes: { va: bigint; size: number }[] } | undefined {
  const lib = loadIced();
  if (!lib) return undefined;
  const bytes = readVirtual(mem, sregs.cr3, regs.rip, MAX_INSN);
  if (bytes.length === 0) return undefined;
  reused ??= new lib.Instruction();
  const insn = reused;
  const decoder = new lib.Decoder(64, bytes, lib.DecoderOptions.None);
  try {
    decoder.ip = regs.rip;
    decoder.decodeOut(insn);
    if (insn.isInvalid) return undefined;
    const site = { rip: regs.rip, length: insn.length };
    const x: WriteExit = { regs, sregs, gpa: 0, data: new Uint8Array(0) };
    const writes: { va: bigint; size: number }[] = [];
    if (isStringStore(lib, insn)) {
      const bits = insn.op0Kind === lib.OpKind.MemoryESRDI ? 64 : 32;
      const size = lib.MemorySizeExt.size(insn.memorySize);
      const rep = insn.hasRepPrefix || insn.hasRepnePrefix;
      const rcx = BigInt.asUintN(bits, regs.rcx);
      const n = rep ? Number(rcx < MAX_REP_LEFT ? rcx : MAX_REP_LEFT) : 1;
      const rdi = BigInt.asUintN(bits, regs.rdi);
      const down = (regs.rflags & RFLAGS_DF) !== 0n;
      if (n > 0 && size > 0) writes.push({ va: down ? rdi - BigInt((n - 1) * size) : rdi, size: n * size });
      return { site, writes };
    }
    factory ??= new lib.InstructionInfoFactory();
    const info = factory.info(insn);
    let used: Used[] = [];
    try {
      used = info.usedMemory() as Used[];
      const writeKinds = writeAccesses(lib);
      for (const m of used) {
        if (!writeKinds.has(m.access)) continue;
        const va = address(lib, insn, m, x, false);
        if (va === undefined) continue;
        writes.push({ va, size: lib.MemorySizeExt.size(m.memorySize) || XSAVE_MAX });
      }
    } finally {
      for (const m of used) m.free();
      info.free();
    }
    return { site, writes };
  } catch {
    return undefined;
  } finally {
    decoder.free();
  }
}
