/**
 * The Guardvisor guest boot ABI and the records shared with guest code.
 * This file is the single source of truth: guest C code includes the header
 * generated from it (build/gen/gv_abi.h). See docs/guest-abi.md.
 */
import { defineStruct } from "./layout.js";

/** Named integer constants exported to C as `#define GV_<NAME> <value>`. */
export const ABI_CONSTANTS = {
  BOOT_MAGIC: 0x31425647, // "GVB1"
  BOOT_VERSION: 1,

  // Guest-physical boot area written by the VMM before entry; kernels must not load here.
  BOOT_AREA_START: 0x1000,
  BOOT_AREA_END: 0x10000,
  BOOT_PML4: 0x1000,
  BOOT_PDPT: 0x2000,
  BOOT_PD: 0x3000, // four page directories: 0x3000..0x6fff, up to 4 GiB
  BOOT_PT_LOW: 0x7000, // 4 KiB page table for the first 2 MiB (page 0 not present)
  BOOT_INFO: 0x8000,
  BOOT_CMDLINE: 0x8800,
  BOOT_CMDLINE_MAX: 0x800,
  BOOT_GDT: 0x9000,
  BOOT_STACK_TOP: 0x10000,

  // Boot-time GDT selectors (the kernel may install its own GDT with the same layout).
  SEL_KERNEL_CODE: 0x08,
  SEL_KERNEL_DATA: 0x10,

  // Roles.
  ROLE_GUEST: 0,
  ROLE_HM: 1,

  // I/O ports.
  PORT_COM1: 0x3f8,
  PORT_DEBUG_EXIT: 0xf4, // out32: the guest's exit code; the VM stops
  PORT_HYPERCALL: 0xf6, // out32: EAX = hypercall number, args RDI, RSI, RCX; result in RAX

  // Hypercall numbers (EAX at an `out` to PORT_HYPERCALL).
  HC_NOP: 0,
  HC_SEAL: 1,
  HC_REPORT_EXCEPTION: 2,
  HC_HEARTBEAT: 3,
  HC_EXCEPTION_VERDICT: 4,
  HC_DOORBELL: 0x10,

  // HC_SEAL arguments (RDI, a bit set): one-way; sealed objects are protected from then on.
  SEAL_MSRS: 1, // syscall/sysenter MSRs and EFER: writes become msr-write events
  SEAL_IDT: 2, // the IDTR (base, limit) as it is now: a change is an integrity event
  SEAL_CR: 4, // CR0.WP and CR4.SMEP/SMAP as they are now: clearing one is an integrity event
  SEAL_GDT: 8, // the GDTR (base, limit) as it is now: a change is an integrity event
  SEAL_PAGING: 16, // CR3 and the page-table entries translating protected memory, as they are now

  // Integrity events name the object in the context record's `vector` field.
  INTEGRITY_CR0: 0,
  INTEGRITY_CR4: 4,
  INTEGRITY_IDTR: 16,
  INTEGRITY_GDTR: 17,
  /** A page-table write that would change how protected memory is translated. */
  INTEGRITY_PAGING: 18,
  /** CR3 no longer points at the sealed page tables. */
  INTEGRITY_CR3: 19,

  // HC_REPORT_EXCEPTION arguments: RDI = vector, RSI = faulting RIP, RCX = what the guest did.
  GUEST_ACTION_HANDLED: 0,
  GUEST_ACTION_TASK_KILLED: 1,
  GUEST_ACTION_PANIC: 2,

  // HC_EXCEPTION_VERDICT: RDI = vector, RSI = faulting RIP; RAX = what the VMM's verdict asks of the guest.
  EXC_OWN_RULE: 0, // handle it by the guest's own rule
  EXC_END_TASK: 1, // end the faulting task (kill-task), even when the fault is in kernel mode

  // Hypercall results.
  HC_OK: 0,
  HC_EINVAL: 0xffffffff,
  HC_EPERM: 0xfffffffe,

  // Context-record magic/version.
  CTX_MAGIC: 0x31585443, // "CTX1"
  CTX_VERSION: 2,

  // Inter-domain communication (IDC) region, mapped into the health VM.
  IDC_MAGIC: 0x43495647, // "GVIC"
  IDC_VERSION: 2,
  IDC_HEADER_SIZE: 0x1000,
  IDC_SLOTS: 16, // request/response slots per guest
  IDC_MAX_GUESTS: 16,
  IDC_REQ_WITHDRAWN: 1, // request flag: settled by the VMM; skip it without answering
  IDC_CHECK_WORD: 0x5a5a5a5a, // mixed into a response's check word (gv_idc_response.check)
  HM_STATE_BOOTING: 0,
  HM_STATE_READY: 1,

  // Fault injection into the health VM (tests and demos).
  INJECT_NONE: 0,
  INJECT_CRASH: 1,
  INJECT_HANG: 2,
  INJECT_GARBAGE: 3,
  INJECT_SLOW: 4,
  /** Write hostile values over every guest's ring counters, then crash. */
  INJECT_SCRIBBLE: 5,

  // Compiled rule table.
  RULES_MAGIC: 0x54525647, // "GVRT"
  RULES_VERSION: 4,
  RULES_MAX: 128,
  RULE_MATCH_MSR: 1, // rule flag: match msr_index == msr
  RULE_MATCH_GPA: 2, // rule flag: match writes lying wholly in [gpa_from, gpa_to)
  RULE_MATCH_VALUE: 4, // rule flag: match writes of at most 8 bytes whose value (little-endian) is `value`
  RULE_DEFAULT: 0xffffffff, // rule index reported when no rule matched
} as const;

/** Event kinds in a context record. Stable numbers: they appear in the rule table. */
export const EVENT_KINDS = {
  "protected-write": 1,
  "msr-write": 2,
  "cpu-exception": 3,
  crash: 4,
  hang: 5,
  integrity: 6,
} as const;
export type EventKind = keyof typeof EVENT_KINDS;

/** Verdicts (DESIGN.md, Verdicts). Stable numbers: they cross the IDC channel. */
export const VERDICTS = {
  allow: 1,
  deny: 2,
  "deny-fault": 3,
  log: 4,
  "kill-task": 5,
  pause: 6,
  restart: 7,
  halt: 8,
} as const;
export type Verdict = keyof typeof VERDICTS;

const VERDICT_BY_NUMBER = new Map<number, Verdict>(Object.entries(VERDICTS).map(([k, v]) => [v, k as Verdict]));

/** The verdict a number names, or undefined for a number that names none (it may come from a guest). */
export function verdictOf(n: number): Verdict | undefined {
  return VERDICT_BY_NUMBER.get(n);
}

export const BOOT_INFO = defineStruct(
  "gv_boot_info",
  "Boot information; RDI holds its guest-physical address at entry.",
  [
    { name: "magic", type: "u32", doc: "GV_BOOT_MAGIC" },
    { name: "version", type: "u32", doc: "GV_BOOT_VERSION" },
    { name: "mem_size", type: "u64", doc: "bytes of guest RAM, identity-mapped from 0" },
    { name: "cmdline_gpa", type: "u64", doc: "NUL-terminated command line" },
    { name: "cmdline_len", type: "u32", doc: "length without the NUL" },
    { name: "role", type: "u32", doc: "GV_ROLE_GUEST or GV_ROLE_HM" },
    { name: "pml4_gpa", type: "u64", doc: "the boot page tables (CR3)" },
    { name: "pt_low_gpa", type: "u64", doc: "the 4 KiB page table mapping the first 2 MiB" },
    { name: "idc_gpa", type: "u64", doc: "IDC region, 0 when absent" },
    { name: "idc_size", type: "u64" },
    { name: "vm_id", type: "u32" },
    { name: "flags", type: "u32" },
  ],
);

/**
 * The exception context record: everything the VMM captured about one event,
 * the first time it happened. Deciders (in the VMM and in the health VM) read it.
 */
export const CONTEXT_RECORD = defineStruct("gv_context", "Exception context record (one per event).", [
  { name: "magic", type: "u32" },
  { name: "version", type: "u32" },
  { name: "seq", type: "u64", doc: "per-VM event sequence number, from 1" },
  { name: "kind", type: "u32", doc: "GV_EVENT_*" },
  { name: "vm_id", type: "u32" },
  { name: "vcpu", type: "u32" },
  { name: "cpl", type: "u32", doc: "privilege level at the event" },
  { name: "region_id", type: "u32", doc: "protected region index + 1; 0 = none" },
  { name: "vector", type: "u32", doc: "CPU exception vector (cpu-exception), else 0" },
  { name: "error_code", type: "u64" },
  { name: "msr_index", type: "u32" },
  {
    name: "access_len",
    type: "u32",
    doc: "bytes the instruction writes from gpa on; `data` holds the first (at most 8)",
  },
  { name: "msr_value", type: "u64" },
  { name: "gpa", type: "u64", doc: "guest-physical address written" },
  { name: "region_offset", type: "u64", doc: "gpa minus the region start" },
  { name: "data", type: "u8", count: 8, doc: "the bytes of the piece KVM handed over (at most 8), zero after it" },
  { name: "regs", type: "u64", count: 18, doc: "rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags" },
  { name: "cr0", type: "u64" },
  { name: "cr2", type: "u64" },
  { name: "cr3", type: "u64" },
  { name: "cr4", type: "u64" },
  { name: "efer", type: "u64" },
  { name: "insn", type: "u8", count: 16, doc: "instruction bytes at RIP" },
  { name: "insn_len", type: "u32", doc: "valid bytes in `insn`" },
  { name: "flags", type: "u32", doc: "GV_CTXF_*" },
  { name: "object", type: "u32", doc: "the sealed object (GV_INTEGRITY_*) of an integrity event, else 0" },
]);

export const CONTEXT_FLAGS = {
  INSN_VALID: 1,
  SEALED: 2,
  /** The exception frame at the entry was unreadable or impossible (vector reads 255). */
  FRAME_INVALID: 4,
  /**
   * A protected write whose writing instruction was not found (rip is where the
   * guest resumes): no rule with a RIP range matches it.
   */
  WRITER_UNKNOWN: 8,
  /**
   * The writing instruction was found, but it is not sealed kernel code at its
   * own address: its virtual address is outside the protected ranges, or it
   * translates to another physical page (code mapped over a sanctioned
   * routine's address). No rule with a RIP range matches it either.
   */
  WRITER_UNTRUSTED: 16,
  /**
   * `data` holds only part of what the instruction writes (one piece of a
   * split store, or nothing KVM could hand over): no rule on the value written
   * matches it.
   */
  DATA_PARTIAL: 32,
} as const;

export const REG_NAMES = [
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
  "rip",
  "rflags",
] as const;
export type RegName = (typeof REG_NAMES)[number];

/** The IDC region header (offset 0 of the region). */
export const IDC_HEADER = defineStruct("gv_idc_header", "IDC region header, written by the VMM unless noted.", [
  { name: "magic", type: "u32", doc: "GV_IDC_MAGIC" },
  { name: "version", type: "u32" },
  { name: "nguests", type: "u32" },
  { name: "nslots", type: "u32", doc: "slots per ring (a power of two)" },
  { name: "guest_block_offset", type: "u32", doc: "from the region start" },
  { name: "guest_block_size", type: "u32" },
  { name: "inject_mode", type: "u32", doc: "GV_INJECT_*" },
  { name: "inject_at", type: "u32", doc: "misbehave at this request number (1-based)" },
  { name: "inject_slow_us", type: "u32", doc: "delay for GV_INJECT_SLOW" },
  { name: "tsc_khz", type: "u32", doc: "the guest TSC rate, for timing inside the health VM" },
  { name: "hm_state", type: "u32", doc: "written by the health VM: GV_HM_STATE_*" },
  { name: "hm_requests", type: "u64", doc: "written by the health VM: requests answered" },
  { name: "hm_current_guest", type: "u32", doc: "written by the health VM: guest being served" },
  { name: "hm_busy", type: "u32", doc: "written by the health VM: 1 while evaluating" },
  { name: "hm_current_seq", type: "u64", doc: "written by the health VM: request being evaluated" },
  { name: "hm_heartbeat", type: "u64", doc: "written by the health VM: bumped by its engine loop" },
]);

/** Per-guest ring control, at the start of each guest block. */
export const IDC_GUEST_CTL = defineStruct("gv_idc_guest_ctl", "Per-guest IDC ring control.", [
  { name: "req_published", type: "u64", doc: "VMM: highest request seq published" },
  { name: "req_consumed", type: "u64", doc: "health VM: highest request seq taken" },
  { name: "resp_published", type: "u64", doc: "health VM: highest request seq answered" },
  { name: "req_offset", type: "u32", doc: "request slots, from the guest block start" },
  { name: "resp_offset", type: "u32", doc: "response slots, from the guest block start" },
  { name: "rules_offset", type: "u32", doc: "rule table, from the guest block start" },
  { name: "rules_size", type: "u32" },
  { name: "req_settled", type: "u64", doc: "VMM: every request up to here is settled (answered or failed safe)" },
  { name: "rules_seq", type: "u32", doc: "VMM: odd while it rewrites the rule table (a seqlock for hot reload)" },
  { name: "pad0", type: "u32" },
  { name: "pad", type: "u64", count: 1 },
]);

export const IDC_REQUEST = defineStruct("gv_idc_request", "A request slot: one event to decide.", [
  { name: "seq", type: "u64", doc: "request sequence number (per guest, from 1); written last" },
  { name: "guest", type: "u32" },
  { name: "flags", type: "u32" },
  { name: "ctx", type: CONTEXT_RECORD },
]);

export const IDC_RESPONSE = defineStruct("gv_idc_response", "A response slot: the verdict for one request.", [
  { name: "seq", type: "u64", doc: "the request answered; written last" },
  { name: "verdict", type: "u32", doc: "GV_VERDICT_*" },
  { name: "rule", type: "u32", doc: "matching rule index, or GV_RULE_DEFAULT" },
  { name: "policy_hash", type: "u32", doc: "policy_hash of the rule table the verdict came from" },
  { name: "check", type: "u32", doc: "seq ^ verdict ^ rule ^ policy_hash ^ GV_IDC_CHECK_WORD (low 32 bits)" },
]);

/** The compiled rule table both deciders load. */
export const RULE_TABLE_HEADER = defineStruct("gv_rule_table", "Compiled policy: header, then nrules rules.", [
  { name: "magic", type: "u32", doc: "GV_RULES_MAGIC" },
  { name: "version", type: "u32", doc: "GV_RULES_VERSION" },
  { name: "nrules", type: "u32" },
  { name: "policy_hash", type: "u32", doc: "identifies the policy the table was compiled from" },
  { name: "defaults", type: "u8", count: 8, doc: "verdict per event kind number when no rule matches" },
]);

export const RULE = defineStruct("gv_rule", "One compiled rule; the first match in order wins.", [
  { name: "kind_mask", type: "u32", doc: "bit (1 << GV_EVENT_*)" },
  { name: "vector_mask", type: "u32", doc: "bit per vector 0..31" },
  { name: "cpl_mask", type: "u32", doc: "bit per CPL 0..3" },
  {
    name: "flags",
    type: "u32",
    doc: "GV_RULE_MATCH_MSR | GV_RULE_MATCH_GPA | GV_RULE_MATCH_VALUE; other bits must be 0",
  },
  { name: "msr", type: "u32", doc: "with GV_RULE_MATCH_MSR: msr_index must equal it" },
  { name: "verdict", type: "u32" },
  { name: "object_mask", type: "u32", doc: "bit per integrity object (GV_INTEGRITY_*) 0..31" },
  { name: "reserved", type: "u32", doc: "0" },
  { name: "region_mask", type: "u64", doc: "bit per region id 1..63; 0 = any" },
  { name: "rip_from", type: "u64" },
  { name: "rip_to", type: "u64", doc: "exclusive" },
  {
    name: "gpa_from",
    type: "u64",
    doc: "with GV_RULE_MATCH_GPA: gpa_from <= gpa < gpa_to and access_len <= gpa_to - gpa",
  },
  { name: "gpa_to", type: "u64", doc: "exclusive; both 0 without GV_RULE_MATCH_GPA" },
  {
    name: "value",
    type: "u64",
    doc: "with GV_RULE_MATCH_VALUE: access_len <= 8 and the bytes written, little-endian, equal it; else 0",
  },
]);

export const SHARED_STRUCTS = [
  BOOT_INFO,
  CONTEXT_RECORD,
  IDC_HEADER,
  IDC_GUEST_CTL,
  IDC_REQUEST,
  IDC_RESPONSE,
  RULE_TABLE_HEADER,
  RULE,
] as const;
