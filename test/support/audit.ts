/** Test support: audit logs made from synthetic events, in temporary directories. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { type AuditVmView, auditRecord } from "../../src/audit/record.js";
import { emptyContext, encodeContext } from "../../src/model/context.js";
import type { CapturedEvent } from "../../src/vmm/dispatcher.js";

/** A fresh directory, removed after the test file. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "gv-audit-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export const fakeVm: AuditVmView = {
  symbolizer: {
    format: (a: number) =>
      a >= 0x101000 && a < 0x101100 ? `gv_fn+0x${(a - 0x101000).toString(16)}` : `0x${a.toString(16)}`,
  },
  symbolizePhys: (gpa: number) => `gv_check_credentials+0x${(gpa - 0x100000).toString(16)}`,
  regionName: (id: number) => (id === 1 ? ".text" : undefined),
};

/** A protected-write event as the dispatcher reports it: `mov qword ptr [rax],rdx` at gv_fn+0x10. */
export function syntheticEvent(seq: number, insn = Uint8Array.of(0x48, 0x89, 0x10, 0x90, 0x90)): CapturedEvent {
  const c = emptyContext("protected-write");
  c.seq = seq;
  c.regionId = 1;
  c.gpa = 0x100000 + seq;
  c.regionOffset = seq;
  c.data = Uint8Array.of(0x90, 0x90, 0x90, 0x90);
  c.regs.rax = BigInt(0x100000 + seq);
  c.regs.rdx = 0x9090909090909090n;
  c.regs.rip = 0x101010n;
  c.cr0 = 0x80050033n;
  c.cr2 = 0n;
  c.cr3 = 0x2000n;
  c.cr4 = 0x620n;
  c.efer = 0xd00n; // LME | LMA | NXE
  c.insn = insn;
  c.flags = insn.length > 0 ? 1 : 0;
  return {
    seq,
    kind: "protected-write",
    vmId: 0,
    vcpu: 0,
    regionId: 1,
    gpa: c.gpa,
    rip: c.regs.rip,
    vector: 0,
    object: 0,
    msrIndex: 0,
    verdict: "deny",
    decidedBy: "vmm",
    rule: "protect-kernel-text",
    reason: "write to protected kernel code",
    latencyUs: 12.34 + seq,
    timeMs: Date.UTC(2025, 0, 2, 3, 4, 5) + seq,
    record: encodeContext(c),
  };
}

/** The members of an event record that tests look at. */
export interface EventRecordView {
  time: string;
  vm: string;
  vcpu: number;
  seq: number;
  kind: string;
  verdict: string;
  reason: string;
  rule: string;
  decidedBy: string;
  latencyUs: number;
  region: string | null;
  target: string | null;
  rip: string;
  insn: { bytes: string; text: string };
  context: { gpa: string; data: string; regs: Record<string, string>; cr2: string; cr3: string; insn: string };
}

export function syntheticRecord(seq: number): Record<string, unknown> {
  return auditRecord(syntheticEvent(seq), fakeVm, "guest0");
}

export function readLines(path: string): string[] {
  return readFileSync(path, "utf8").split("\n").slice(0, -1);
}

export function writeLines(path: string, lines: string[]): void {
  writeFileSync(path, lines.map((l) => `${l}\n`).join(""));
}
