/**
 * The exception context record: built by the VMM the first time an event
 * happens, encoded in the shared binary layout (src/abi/guest-abi.ts) that
 * deciders and the audit log use. It lives in the model layer (src/model/),
 * the types every layer above the KVM objects shares, so deciders, the IDC
 * channel and the audit log need not reach into the VMM for it.
 */
import {
  ABI_CONSTANTS,
  CONTEXT_RECORD,
  EVENT_KINDS,
  type EventKind,
  REG_NAMES,
  type RegName,
} from "../abi/guest-abi.js";
import { GuardvisorError } from "../errors.js";
import { cplOf, type Regs, type Sregs, zeroRegs } from "../kvm/structs.js";

export interface ContextRecord {
  seq: number;
  kind: EventKind;
  vmId: number;
  vcpu: number;
  cpl: number;
  regionId: number;
  /** The CPU exception vector (cpu-exception), else 0. */
  vector: number;
  /** The sealed object (INTEGRITY_*) an integrity event is about, else 0. */
  object: number;
  errorCode: bigint;
  msrIndex: number;
  msrValue: bigint;
  gpa: number;
  regionOffset: number;
  /** The bytes the guest tried to write: the piece KVM handed over (at most 8). */
  data: Uint8Array;
  /**
   * How many bytes the writing instruction writes from `gpa` on, when more
   * than `data` holds (a 16-byte vector store, FXSAVE, a REP string store);
   * absent: `data.length`.
   */
  accessLen?: number;
  regs: Regs;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
  /** Instruction bytes at RIP (at most 16; empty when unreadable). */
  insn: Uint8Array;
  flags: number;
}

/** A record of `kind` with every field zero (or `regs`, when the caller has them already). */
export function emptyContext(kind: EventKind, regs?: Regs): ContextRecord {
  return {
    seq: 0,
    kind,
    vmId: 0,
    vcpu: 0,
    cpl: 0,
    regionId: 0,
    vector: 0,
    object: 0,
    errorCode: 0n,
    msrIndex: 0,
    msrValue: 0n,
    gpa: 0,
    regionOffset: 0,
    data: new Uint8Array(0),
    regs: regs ?? zeroRegs(),
    cr0: 0n,
    cr2: 0n,
    cr3: 0n,
    cr4: 0n,
    efer: 0n,
    insn: new Uint8Array(0),
    flags: 0,
  };
}

/**
 * A record of `kind` captured from a vCPU: its registers, privilege level and
 * control registers, numbered `seq` for VM `vmId`, vCPU `vcpu`. The event's
 * own fields (gpa, data, vector, instruction bytes…) are the caller's.
 */
export function capturedContext(
  kind: EventKind,
  regs: Regs,
  sregs: Sregs,
  who: { seq: number; vmId: number; vcpu: number },
): ContextRecord {
  const ctx = emptyContext(kind, regs);
  ctx.seq = who.seq;
  ctx.vmId = who.vmId;
  ctx.vcpu = who.vcpu;
  ctx.cpl = cplOf(sregs);
  ctx.cr0 = sregs.cr0;
  ctx.cr2 = sregs.cr2;
  ctx.cr3 = sregs.cr3;
  ctx.cr4 = sregs.cr4;
  ctx.efer = sregs.efer;
  return ctx;
}

const KIND_BY_NUMBER = new Map<number, EventKind>(Object.entries(EVENT_KINDS).map(([k, v]) => [v, k as EventKind]));

const O = (name: string) => CONTEXT_RECORD.offset(name);

/** The record's field offsets, looked up once (a record is encoded on every event). */
const OFF = {
  access_len: O("access_len"),
  cpl: O("cpl"),
  cr0: O("cr0"),
  cr2: O("cr2"),
  cr3: O("cr3"),
  cr4: O("cr4"),
  data: O("data"),
  efer: O("efer"),
  error_code: O("error_code"),
  flags: O("flags"),
  gpa: O("gpa"),
  insn: O("insn"),
  insn_len: O("insn_len"),
  kind: O("kind"),
  magic: O("magic"),
  msr_index: O("msr_index"),
  msr_value: O("msr_value"),
  object: O("object"),
  region_id: O("region_id"),
  region_offset: O("region_offset"),
  regs: O("regs"),
  seq: O("seq"),
  vcpu: O("vcpu"),
  vector: O("vector"),
  version: O("version"),
  vm_id: O("vm_id"),
} as const;

/** Encode into `out` (at `at`), or into a fresh buffer of CONTEXT_RECORD.size bytes. */
export function encodeContext(c: ContextRecord, out?: Uint8Array, at = 0): Uint8Array {
  const buf = out ?? new Uint8Array(CONTEXT_RECORD.size);
  if (at < 0 || at + CONTEXT_RECORD.size > buf.length) {
    throw new GuardvisorError("INTERNAL", "context record does not fit the buffer");
  }
  if (c.data.length > 8 || c.insn.length > 16) throw new GuardvisorError("INTERNAL", "context record field too long");
  const accessLen = c.accessLen ?? c.data.length;
  if (!Number.isInteger(accessLen) || accessLen < c.data.length || accessLen > 0xffffffff) {
    throw new GuardvisorError("INTERNAL", "context record: access length out of range");
  }
  buf.fill(0, at, at + CONTEXT_RECORD.size);
  const v = new DataView(buf.buffer, buf.byteOffset + at, CONTEXT_RECORD.size);
  v.setUint32(OFF.magic, ABI_CONSTANTS.CTX_MAGIC, true);
  v.setUint32(OFF.version, ABI_CONSTANTS.CTX_VERSION, true);
  v.setBigUint64(OFF.seq, BigInt(c.seq), true);
  v.setUint32(OFF.kind, EVENT_KINDS[c.kind], true);
  v.setUint32(OFF.vm_id, c.vmId, true);
  v.setUint32(OFF.vcpu, c.vcpu, true);
  v.setUint32(OFF.cpl, c.cpl, true);
  v.setUint32(OFF.region_id, c.regionId, true);
  v.setUint32(OFF.vector, c.vector, true);
  v.setBigUint64(OFF.error_code, BigInt.asUintN(64, c.errorCode), true);
  v.setUint32(OFF.msr_index, c.msrIndex, true);
  v.setUint32(OFF.access_len, accessLen, true);
  v.setBigUint64(OFF.msr_value, BigInt.asUintN(64, c.msrValue), true);
  v.setBigUint64(OFF.gpa, BigInt(c.gpa), true);
  v.setBigUint64(OFF.region_offset, BigInt(c.regionOffset), true);
  buf.set(c.data, at + OFF.data);
  for (let i = 0; i < REG_NAMES.length; i++) {
    v.setBigUint64(OFF.regs + 8 * i, BigInt.asUintN(64, c.regs[REG_NAMES[i] as RegName]), true);
  }
  v.setBigUint64(OFF.cr0, c.cr0, true);
  v.setBigUint64(OFF.cr2, c.cr2, true);
  v.setBigUint64(OFF.cr3, c.cr3, true);
  v.setBigUint64(OFF.cr4, c.cr4, true);
  v.setBigUint64(OFF.efer, c.efer, true);
  buf.set(c.insn, at + OFF.insn);
  v.setUint32(OFF.insn_len, c.insn.length, true);
  v.setUint32(OFF.flags, c.flags, true);
  v.setUint32(OFF.object, c.object, true);
  return buf;
}

/** Decode and validate a record (the bytes may come from an untrusted place). */
export function decodeContext(buf: Uint8Array, at = 0): ContextRecord {
  if (at < 0 || at + CONTEXT_RECORD.size > buf.length) {
    throw new GuardvisorError("GUEST_FAULT", "context record truncated");
  }
  const v = new DataView(buf.buffer, buf.byteOffset + at, CONTEXT_RECORD.size);
  if (v.getUint32(O("magic"), true) !== ABI_CONSTANTS.CTX_MAGIC)
    throw new GuardvisorError("GUEST_FAULT", "context record: bad magic");
  if (v.getUint32(O("version"), true) !== ABI_CONSTANTS.CTX_VERSION)
    throw new GuardvisorError("GUEST_FAULT", "context record: unsupported version");
  const kind = KIND_BY_NUMBER.get(v.getUint32(O("kind"), true));
  if (!kind) throw new GuardvisorError("GUEST_FAULT", "context record: unknown event kind");
  const accessLen = v.getUint32(O("access_len"), true);
  const insnLen = v.getUint32(O("insn_len"), true);
  if (insnLen > 16) throw new GuardvisorError("GUEST_FAULT", "context record: length out of range");
  const dataLen = Math.min(accessLen, 8);
  const big = (name: string) => v.getBigUint64(O(name), true);
  const safe = (name: string) => {
    const x = big(name);
    if (x > BigInt(Number.MAX_SAFE_INTEGER))
      throw new GuardvisorError("GUEST_FAULT", `context record: ${name} out of range`);
    return Number(x);
  };
  const regs = zeroRegs();
  REG_NAMES.forEach((r, i) => {
    regs[r] = v.getBigUint64(O("regs") + 8 * i, true);
  });
  const base = at;
  return {
    seq: safe("seq"),
    kind,
    vmId: v.getUint32(O("vm_id"), true),
    vcpu: v.getUint32(O("vcpu"), true),
    cpl: v.getUint32(O("cpl"), true),
    regionId: v.getUint32(O("region_id"), true),
    vector: v.getUint32(O("vector"), true),
    errorCode: big("error_code"),
    msrIndex: v.getUint32(O("msr_index"), true),
    msrValue: big("msr_value"),
    gpa: safe("gpa"),
    regionOffset: safe("region_offset"),
    data: buf.slice(base + O("data"), base + O("data") + dataLen),
    ...(accessLen > dataLen ? { accessLen } : {}),
    regs,
    cr0: big("cr0"),
    cr2: big("cr2"),
    cr3: big("cr3"),
    cr4: big("cr4"),
    efer: big("efer"),
    insn: buf.slice(base + O("insn"), base + O("insn") + insnLen),
    flags: v.getUint32(O("flags"), true),
    object: v.getUint32(O("object"), true),
  };
}
