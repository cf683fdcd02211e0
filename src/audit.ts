/**
 * The audit log: JSON Lines, one record per event, with the evidence — the
 * decoded context record (registers, control registers, the bytes written,
 * instruction bytes) and the symbolized addresses.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { REG_NAMES } from "./abi/guest-abi.js";
import { GuardvisorError } from "./errors.js";
import { decodeContext } from "./vmm/context.js";
import type { CapturedEvent } from "./vmm/dispatcher.js";
import type { GuestVm } from "./vmm/guest-vm.js";

const hex = (v: bigint | number) => `0x${v.toString(16)}`;
const bytesHex = (b: Uint8Array) => Buffer.from(b).toString("hex");

export function auditRecord(e: CapturedEvent, vm: GuestVm, vmName: string): Record<string, unknown> {
  const c = decodeContext(e.record);
  const regs: Record<string, string> = {};
  for (const r of REG_NAMES) regs[r] = hex(c.regs[r]);
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
    target: e.kind === "protected-write" ? vm.symbolizePhys(e.gpa) : null,
    rip: vm.symbolizer.format(Number(c.regs.rip)),
    context: {
      cpl: c.cpl,
      gpa: hex(c.gpa),
      regionOffset: hex(c.regionOffset),
      data: bytesHex(c.data),
      vector: c.vector,
      errorCode: hex(c.errorCode),
      msr: c.msrIndex ? { index: hex(c.msrIndex), value: hex(c.msrValue) } : null,
      regs,
      cr0: hex(c.cr0),
      cr2: hex(c.cr2),
      cr3: hex(c.cr3),
      cr4: hex(c.cr4),
      efer: hex(c.efer),
      insn: bytesHex(c.insn),
    },
  };
}

export class AuditLog {
  private fd: number;
  records = 0;

  constructor(readonly path: string) {
    try {
      this.fd = openSync(path, "a");
    } catch (e) {
      throw new GuardvisorError("IO", `cannot open audit log ${path}: ${(e as Error).message}`);
    }
  }

  append(record: Record<string, unknown>): void {
    writeSync(this.fd, `${JSON.stringify(record)}\n`);
    this.records++;
  }

  close(): void {
    closeSync(this.fd);
  }
}
