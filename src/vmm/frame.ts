/**
 * Decoding the exception frame at the guest's common exception entry, read
 * when the hardware breakpoint there fires (before the guest's handler runs).
 *
 * Convention (docs/guest-abi.md, "Exception capture"): at the entry,
 *   [rsp]      vector        pushed by the vector's stub
 *   [rsp+8]    error code    pushed by the CPU, or 0 pushed by the stub
 *   [rsp+16]   rip, cs, rflags, rsp, ss   the CPU's interrupt frame
 * Every byte of it is guest-controlled: the frame is read through the guest's
 * page tables with bounds checks, and a frame that is unmapped, crosses the
 * end of RAM or holds impossible values is reported as hostile, not trusted.
 */
import type { GuestMemory } from "../kvm/guest-memory.js";
import { isCanonical, readVirtual } from "./paging.js";

export const FRAME_BYTES = 7 * 8;

/** Vectors for which the CPU pushes an error code. */
export function hasCpuErrorCode(vector: number): boolean {
  return (
    vector === 8 || (vector >= 10 && vector <= 14) || vector === 17 || vector === 21 || vector === 29 || vector === 30
  );
}

export interface ExceptionFrame {
  vector: number;
  errorCode: bigint;
  rip: bigint;
  cs: number;
  rflags: bigint;
  rsp: bigint;
  ss: number;
  /** Privilege level the exception came from (CS RPL). */
  cpl: number;
}

export type FrameResult = { ok: true; frame: ExceptionFrame } | { ok: false; why: string };

/** Read and check the frame at guest-virtual `rsp` through the tables at `cr3`. */
export function decodeExceptionFrame(mem: GuestMemory, cr3: bigint, rsp: bigint): FrameResult {
  if (!isCanonical(rsp)) return { ok: false, why: `stack pointer 0x${rsp.toString(16)} is not canonical` };
  if ((rsp & 7n) !== 0n) return { ok: false, why: `stack pointer 0x${rsp.toString(16)} is not 8-byte aligned` };
  const bytes = readVirtual(mem, cr3, rsp, FRAME_BYTES);
  if (bytes.length < FRAME_BYTES) {
    return {
      ok: false,
      why: `exception frame at 0x${rsp.toString(16)} is not readable (${bytes.length} of ${FRAME_BYTES} bytes in guest RAM)`,
    };
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const q = (i: number) => v.getBigUint64(8 * i, true);
  const vector = q(0);
  const frame: ExceptionFrame = {
    vector: Number(vector & 0xffn),
    errorCode: q(1),
    rip: q(2),
    cs: Number(q(3) & 0xffffn),
    rflags: q(4),
    rsp: q(5),
    ss: Number(q(6) & 0xffffn),
    cpl: Number(q(3) & 3n),
  };
  if (vector > 255n) return { ok: false, why: `vector ${vector} out of range` };
  if (!isCanonical(frame.rip)) return { ok: false, why: `faulting RIP 0x${frame.rip.toString(16)} is not canonical` };
  if (q(3) > 0xffffn) return { ok: false, why: `CS slot 0x${q(3).toString(16)} is not a selector` };
  if (!hasCpuErrorCode(frame.vector) && frame.errorCode !== 0n) {
    return {
      ok: false,
      why: `vector ${frame.vector} has no error code but the frame holds 0x${frame.errorCode.toString(16)}`,
    };
  }
  return { ok: true, frame };
}
