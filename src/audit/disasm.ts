/**
 * Disassembles the instruction the guest was executing, for the audit log,
 * with iced-x86 (the Rust iced decoder compiled to WebAssembly).
 *
 * The bytes come from guest memory and are hostile input: decoding reads at
 * most the 16 bytes given (an x86 instruction is at most 15), never throws,
 * and turns anything that is not one valid instruction into "(bad)". The
 * WebAssembly module is loaded on first use, so commands that never
 * disassemble do not pay for it.
 */
import { type Iced, loadIced } from "../x86/iced.js";

/** The most bytes the decoder is given (the context record holds 16). */
export const MAX_INSN_BYTES = 16;

export const BAD_INSN = "(bad)";

export interface DecodedInsn {
  /** Hex of the instruction's own bytes; all given bytes when they did not decode. */
  bytes: string;
  /** Intel syntax, e.g. "mov qword ptr [rax],rdx"; "(bad)" when the bytes are not a valid instruction. */
  text: string;
}

/**
 * Decoder width from the captured control state: 64 in long mode (EFER.LMA),
 * 32 in protected mode (CR0.PE), else 16. The context record has no CS.L, so
 * compatibility-mode code is decoded as 64-bit.
 */
export function bitnessOf(cr0: bigint, efer: bigint): 16 | 32 | 64 {
  if (efer & (1n << 10n)) return 64;
  if (cr0 & 1n) return 32;
  return 16;
}

/** Bytes as lower-case hex, no separators (the audit record's format). */
export const hexBytes = (b: Uint8Array): string => Buffer.from(b).toString("hex");

/**
 * Decode the first instruction of `bytes` (at most MAX_INSN_BYTES are looked
 * at) as if it sat at `rip`, so relative branch targets come out absolute.
 */
export function disassemble(bytes: Uint8Array, rip = 0n, bitness: 16 | 32 | 64 = 64): DecodedInsn {
  const input = bytes.slice(0, MAX_INSN_BYTES);
  const lib = loadIced();
  if (!lib) return { bytes: hexBytes(input), text: BAD_INSN };
  let decoder: InstanceType<Iced["Decoder"]> | undefined;
  let formatter: InstanceType<Iced["Formatter"]> | undefined;
  let insn: InstanceType<Iced["Instruction"]> | undefined;
  try {
    decoder = new lib.Decoder(bitness, input, lib.DecoderOptions.None);
    decoder.ip = BigInt.asUintN(64, rip);
    insn = decoder.decode();
    if (insn.isInvalid || insn.length <= 0 || insn.length > input.length)
      return { bytes: hexBytes(input), text: BAD_INSN };
    formatter = new lib.Formatter(lib.FormatterSyntax.Intel);
    formatter.memorySizeOptions = lib.MemorySizeOptions.Always;
    formatter.hexPrefix = "0x";
    formatter.hexSuffix = "";
    formatter.branchLeadingZeros = false;
    formatter.uppercaseHex = false;
    formatter.showBranchSize = false;
    return { bytes: hexBytes(input.subarray(0, insn.length)), text: formatter.format(insn) };
  } catch {
    return { bytes: hexBytes(input), text: BAD_INSN };
  } finally {
    insn?.free();
    formatter?.free();
    decoder?.free();
  }
}
