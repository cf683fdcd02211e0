/**
 * Which instruction made a protected write. KVM emulates a write to a
 * read-only page in the kernel and exits to userspace (KVM_EXIT_MMIO) after
 * the instruction has retired: RIP already points at the next instruction.
 * The evidence and the decision (RIP-range rules, the allowlist) need the
 * writing instruction itself, so it is found here: the candidate that
 * decodes to exactly the bytes before RIP, writes memory of at least the
 * exit's size, whose address, computed from the registers and translated
 * through the guest's page tables, covers the written GPA, and (for a plain
 * MOV) whose source is the value written. RIP itself is tried last, for a
 * host that exits before the instruction retires.
 *
 * Everything read here is guest-controlled: bytes come through readVirtual
 * (bounds-checked), the decoder never reads past them, and a write no
 * candidate explains is reported as such rather than guessed.
 */
import { REG_NAMES, type RegName } from "../abi/guest-abi.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import type { Regs, Sregs } from "../kvm/structs.js";
import { type Iced, loadIced } from "../x86/iced.js";
import { readVirtual, translate } from "./paging.js";

/** The longest x86 instruction. */
const MAX_INSN = 15;

export interface WriteSite {
  /** Address of the writing instruction. */
  rip: bigint;
  /** Its length in bytes. */
  length: number;
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

/** A register's 64-bit value (its full register), or undefined for one we do not hold. */
function regValue(lib: Iced, regs: Regs, reg: number): bigint | undefined {
  if (reg === lib.Register.None) return 0n;
  const name = String(lib.Register[lib.RegisterExt.fullRegister(reg)] ?? "").toLowerCase();
  return GPRS.has(name) ? regs[name as RegName] : undefined;
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

/** For a plain MOV to memory: is its source (immediate or register) the value written? Other instructions: yes. */
function sourceMatches(lib: Iced, insn: InstanceType<Iced["Instruction"]>, x: WriteExit): boolean {
  if (insn.mnemonic !== lib.Mnemonic.Mov || insn.op0Kind !== lib.OpKind.Memory) return true;
  let value: bigint | undefined;
  const highByte = [lib.Register.AH, lib.Register.BH, lib.Register.CH, lib.Register.DH];
  if (insn.op1Kind === lib.OpKind.Register && highByte.includes(insn.op1Register)) return true;
  if (insn.op1Kind === lib.OpKind.Register) value = regValue(lib, x.regs, insn.op1Register);
  else if (insn.op1Kind !== lib.OpKind.Memory) value = insn.immediate(1);
  if (value === undefined) return true; // a register we do not hold (a segment register, say)
  let written = 0n;
  for (let i = x.data.length - 1; i >= 0; i--) written = (written << 8n) | BigInt(x.data[i] ?? 0);
  return BigInt.asUintN(8 * x.data.length, value) === written;
}

/** Does this decoded instruction write memory covering the exit's GPA, with the exit's value? */
function writesTarget(
  lib: Iced,
  info: InstanceType<Iced["InstructionInfo"]>,
  insn: InstanceType<Iced["Instruction"]>,
  mem: GuestMemory,
  x: WriteExit,
): boolean {
  const writes = writeAccesses(lib);
  const used = info.usedMemory() as InstanceType<Iced["UsedMemory"]>[];
  try {
    for (const m of used) {
      if (!writes.has(m.access)) continue;
      const size = lib.MemorySizeExt.size(m.memorySize);
      if (size < x.data.length || !sourceMatches(lib, insn, x)) continue;
      const base = regValue(lib, x.regs, m.base);
      const index = regValue(lib, x.regs, m.index);
      if (base === undefined || index === undefined) continue;
      const va = BigInt.asUintN(
        64,
        segmentBase(lib, x.sregs, m.segment) + base + index * BigInt(m.scale) + m.displacement,
      );
      for (const [from, at] of [
        [va, 0],
        [va + BigInt(size - 1), size - 1],
      ] as const) {
        const pa = translate(mem, x.sregs.cr3, BigInt.asUintN(64, from));
        if (pa !== undefined && x.gpa >= pa - at && x.gpa < pa - at + size) return true;
      }
    }
    return false;
  } finally {
    for (const m of used) m.free(); // WebAssembly memory: not collected
  }
}

// Reused across calls (one per thread): allocating them per candidate costs more than decoding.
let factory: InstanceType<Iced["InstructionInfoFactory"]> | undefined;
let reused: InstanceType<Iced["Instruction"]> | undefined;

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

/**
 * The instruction that made the write the exit reports, or undefined when
 * none explains it. One decoder over the code around RIP: the candidates
 * ending exactly at RIP (1 to 15 bytes back), then RIP itself.
 */
export function locateWrite(mem: GuestMemory, x: WriteExit): WriteSite | undefined {
  const lib = loadIced();
  if (!lib) return undefined;
  const rip = x.regs.rip;
  const { bytes, before } = codeAround(mem, x.sregs.cr3, rip);
  if (bytes.length === 0) return undefined;
  factory ??= new lib.InstructionInfoFactory();
  reused ??= new lib.Instruction();
  const insn = reused;
  const decoder = new lib.Decoder(64, bytes, lib.DecoderOptions.None);
  try {
    for (let i = 1; i <= before + 1; i++) {
      const back = i % (before + 1); // 1..before, then 0
      if (back === 0 && bytes.length <= before) break;
      decoder.position = before - back;
      decoder.ip = BigInt.asUintN(64, rip - BigInt(back));
      decoder.decodeOut(insn);
      if (insn.isInvalid || (back > 0 && insn.length !== back)) continue;
      const info = factory.info(insn);
      try {
        if (writesTarget(lib, info, insn, mem, x))
          return { rip: BigInt.asUintN(64, rip - BigInt(back)), length: insn.length };
      } finally {
        info.free();
      }
    }
    return undefined;
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
