/**
 * One audit record for one captured event: the decision (verdict, reason,
 * rule, who decided, how long it took) and the evidence, taken from the
 * decoded context record: registers, control registers, the address and the
 * bytes the guest tried to write, the region, the symbolized RIP and target,
 * and the instruction at RIP, disassembled.
 */
import { CONTEXT_FLAGS, REG_NAMES } from "../abi/guest-abi.js";
import type { Symbolizer } from "../elf/symbolizer.js";
import { decodeContext } from "../model/context.js";
import type { CapturedEvent } from "../vmm/dispatcher.js";
import { bitnessOf, type DecodedInsn, disassemble, hexBytes } from "./disasm.js";

/** What auditRecord needs from a VM (a GuestVm has all of it). */
export interface AuditVmView {
  readonly symbolizer: Pick<Symbolizer, "format">;
  symbolizePhys(gpa: number): string;
  regionName(id: number): string | undefined;
}

const hex = (v: bigint | number) => `0x${v.toString(16)}`;

/** Text for an instruction that was not captured (RIP not readable). */
export const NO_INSN = "(unavailable)";

/** An event's addresses by name: looked up once, for the summary and the audit record alike. */
export interface EventNames {
  /** The target of a protected write (`symbol+0xoff`), else null. */
  target: string | null;
  /** The instruction's address. */
  rip: string;
}

export function nameEvent(e: Pick<CapturedEvent, "kind" | "gpa" | "rip">, vm: AuditVmView): EventNames {
  return {
    target: e.kind === "protected-write" ? vm.symbolizePhys(e.gpa) : null,
    rip: e.rip <= BigInt(Number.MAX_SAFE_INTEGER) ? vm.symbolizer.format(Number(e.rip)) : hex(e.rip),
  };
}

export function auditRecord(
  e: CapturedEvent,
  vm: AuditVmView,
  vmName: string,
  names: EventNames = nameEvent(e, vm),
): Record<string, unknown> {
  const c = decodeContext(e.record);
  const regs: Record<string, string> = {};
  for (const r of REG_NAMES) regs[r] = hex(c.regs[r]);
  const insn: DecodedInsn =
    c.flags & CONTEXT_FLAGS.INSN_VALID && c.insn.length > 0
      ? disassemble(c.insn, c.regs.rip, bitnessOf(c.cr0, c.efer))
      : { bytes: "", text: NO_INSN };
  return {
    time: new Date(e.timeMs).toISOString(),
    vm: vmName,
    vcpu: e.vcpu,
    seq: e.seq,
    kind: e.kind,
    verdict: e.verdict,
    reason: e.reason,
    rule: e.rule,
    decidedBy: e.decidedBy,
    latencyUs: Math.round(e.latencyUs * 10) / 10,
    region: vm.regionName(e.regionId) ?? null,
    target: names.target,
    rip: names.rip,
    insn,
    ...(e.note ? { note: e.note } : {}),
    context: {
      cpl: c.cpl,
      gpa: hex(c.gpa),
      regionOffset: hex(c.regionOffset),
      data: hexBytes(c.data),
      vector: c.vector,
      object: c.object,
      errorCode: hex(c.errorCode),
      msr: c.msrIndex ? { index: hex(c.msrIndex), value: hex(c.msrValue) } : null,
      regs,
      cr0: hex(c.cr0),
      cr2: hex(c.cr2),
      cr3: hex(c.cr3),
      cr4: hex(c.cr4),
      efer: hex(c.efer),
      insn: hexBytes(c.insn),
      flags: c.flags,
    },
  };
}
