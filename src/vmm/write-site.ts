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
import type { RegName } from "../abi/guest-abi.js";
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

const GPRS = new Set<string>([
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
]);

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

const WRITES = (lib: Iced) =>
  new Set<number>([lib.OpAccess.Write, lib.OpAccess.ReadWrite, lib.OpAccess.CondWrite, lib.OpAccess.ReadCondWrite]);

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

/** Does the instruction at `ip` (already decoded from `bytes`) write the exit's GPA? */
function writesTarget(lib: Iced, bytes: Uint8Array, ip: bigint, want: number, mem: GuestMemory, x: WriteExit): number {
  const decoder = new lib.Decoder(64, bytes, lib.DecoderOptions.None);
  const factory = new lib.InstructionInfoFactory();
  let insn: InstanceType<Iced["Instruction"]> | undefined;
  let info: InstanceType<Iced["InstructionInfo"]> | undefined;
  try {
    decoder.ip = ip;
    insn = decoder.decode();
    if (insn.isInvalid || (want > 0 && insn.length !== want)) return 0;
    info = factory.info(insn);
    const writes = WRITES(lib);
    for (const m of info.usedMemory()) {
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
        if (pa !== undefined && x.gpa >= pa - at && x.gpa < pa - at + size) return insn.length;
      }
    }
    return 0;
  } catch {
    return 0;
  } finally {
    info?.free();
    insn?.free();
    factory.free();
    decoder.free();
  }
}

/** The instruction that made the write the exit reports, or undefined when none explains it. */
export function locateWrite(mem: GuestMemory, x: WriteExit): WriteSite | undefined {
  const lib = loadIced();
  if (!lib) return undefined;
  const rip = x.regs.rip;
  for (let i = 1; i <= MAX_INSN + 1; i++) {
    const back = i % (MAX_INSN + 1); // 1..15, then 0
    const at = BigInt.asUintN(64, rip - BigInt(back));
    const bytes = readVirtual(mem, x.sregs.cr3, at, back === 0 ? MAX_INSN + 1 : back);
    if (bytes.length === 0 || (back > 0 && bytes.length !== back)) continue;
    const length = writesTarget(lib, bytes, at, back, mem, x);
    if (length > 0) return { rip: at, length };
  }
  return undefined;
}
