/**
 * The exception context record: built by the VMM the first time an event
 * happens, encoded in the shared binary layout (src/abi/guest-abi.ts) that
 * deciders and the audit log use. It lives in the model layer (src/model/),
 * the types every layer above the KVM objects shares, so deciders, the IDC
 * channel and the audit log need not reach into the VMM for it.
 */
import { ABI_CONSTANTS, CONTEXT_RECORD, EVENT_KINDS, type EventKind, REG_NAMES } from "../abi/guest-abi.js";
import { ByteSlab } from "../byte-slab.js";
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

/** No bytes: shared by every record until it is given its own (a zero-length array holds nothing to change). */
const NO_BYTES = Object.freeze(new Uint8Array(0)) as Uint8Array;

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
    data: NO_BYTES,
    regs: regs ?? zeroRegs(),
    cr0: 0n,
    cr2: 0n,
    cr3: 0n,
    cr4: 0n,
    efer: 0n,
    insn: NO_BYTES,
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

/**
 * The record is built in one 8-aligned scratch buffer through typed views
 * (a record is encoded on every event: DataView calls and BigInt.asUintN per
 * field were a tenth of a verdict's software path), then copied out.
 */
const SCRATCH = new ArrayBuffer(CONTEXT_RECORD.size);
const SCRATCH_U8 = new Uint8Array(SCRATCH);
const SCRATCH_U32 = new Uint32Array(SCRATCH);
const SCRATCH_U64 = new BigUint64Array(SCRATCH);
if (new Uint8Array(Uint32Array.of(1).buffer)[0] !== 1) {
  throw new GuardvisorError("INTERNAL", "the context record's typed views need a little-endian host");
}
const U64_FIELDS = new Set([
  "seq",
  "error_code",
  "msr_value",
  "gpa",
  "region_offset",
  "regs",
  "cr0",
  "cr2",
  "cr3",
  "cr4",
  "efer",
]);
for (const [name, at] of Object.entries(OFF)) {
  const align = U64_FIELDS.has(name) ? 8 : name === "data" || name === "insn" ? 1 : 4;
  if (at % align !== 0) throw new GuardvisorError("INTERNAL", `context record field ${name} is not ${align}-aligned`);
}
/** Field indexes in the scratch's u32 (W) and u64 (Q) views. */
const W = Object.fromEntries(Object.entries(OFF).map(([k, v]) => [k, v / 4])) as Record<keyof typeof OFF, number>;
const Q = Object.fromEntries(Object.entries(OFF).map(([k, v]) => [k, v / 8])) as Record<keyof typeof OFF, number>;
const SPELLED_OUT = "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags";
if (REG_NAMES.join(" ") !== SPELLED_OUT) {
  throw new GuardvisorError("INTERNAL", "encodeContext spells out REG_NAMES in another order than the ABI's");
}
/** Where fresh records come from (encodeContext without `out`). */
const RECORDS = new ByteSlab();

/** Encode into `out` (at `at`), or into a fresh buffer of CONTEXT_RECORD.size bytes. */
export function encodeContext(c: ContextRecord, out?: Uint8Array, at = 0): Uint8Array {
  const buf = out ?? RECORDS.take(CONTEXT_RECORD.size);
  if (at < 0 || at + CONTEXT_RECORD.size > buf.length) {
    throw new GuardvisorError("INTERNAL", "context record does not fit the buffer");
  }
  if (c.data.length > 8 || c.insn.length > 16) throw new GuardvisorError("INTERNAL", "context record field too long");
  const accessLen = c.accessLen ?? c.data.length;
  if (!Number.isInteger(accessLen) || accessLen < c.data.length || accessLen > 0xffffffff) {
    throw new GuardvisorError("INTERNAL", "context record: access length out of range");
  }
  const u32 = SCRATCH_U32;
  const u64 = SCRATCH_U64;
  SCRATCH_U8.fill(0);
  u32[W.magic] = ABI_CONSTANTS.CTX_MAGIC;
  u32[W.version] = ABI_CONSTANTS.CTX_VERSION;
  u64[Q.seq] = BigInt(c.seq);
  u32[W.kind] = EVENT_KINDS[c.kind];
  u32[W.vm_id] = c.vmId;
  u32[W.vcpu] = c.vcpu;
  u32[W.cpl] = c.cpl;
  u32[W.region_id] = c.regionId;
  u32[W.vector] = c.vector;
  // A BigUint64Array element takes a BigInt modulo 2^64, as BigInt.asUintN(64, …) would.
  u64[Q.error_code] = c.errorCode;
  u32[W.msr_index] = c.msrIndex;
  u32[W.access_len] = accessLen;
  u64[Q.msr_value] = c.msrValue;
  u64[Q.gpa] = BigInt(c.gpa);
  u64[Q.region_offset] = BigInt(c.regionOffset);
  SCRATCH_U8.set(c.data, OFF.data);
  const r = c.regs;
  const g = Q.regs;
  // REG_NAMES order, spelled out (checked when the module loads): a keyed loop costs twice as much.
  u64[g] = r.rax;
  u64[g + 1] = r.rbx;
  u64[g + 2] = r.rcx;
  u64[g + 3] = r.rdx;
  u64[g + 4] = r.rsi;
  u64[g + 5] = r.rdi;
  u64[g + 6] = r.rsp;
  u64[g + 7] = r.rbp;
  u64[g + 8] = r.r8;
  u64[g + 9] = r.r9;
  u64[g + 10] = r.r10;
  u64[g + 11] = r.r11;
  u64[g + 12] = r.r12;
  u64[g + 13] = r.r13;
  u64[g + 14] = r.r14;
  u64[g + 15] = r.r15;
  u64[g + 16] = r.rip;
  u64[g + 17] = r.rflags;
  u64[Q.cr0] = c.cr0;
  u64[Q.cr2] = c.cr2;
  u64[Q.cr3] = c.cr3;
  u64[Q.cr4] = c.cr4;
  u64[Q.efer] = c.efer;
  SCRATCH_U8.set(c.insn, OFF.insn);
  u32[W.insn_len] = c.insn.length;
  u32[W.flags] = c.flags;
  u32[W.object] = c.object;
  buf.set(SCRATCH_U8, at);
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
