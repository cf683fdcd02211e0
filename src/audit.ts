/**
 * The audit log: tamper-evident JSON Lines, one record per event, with the
 * evidence. The parts live in src/audit/ (docs/audit.md):
 * record.ts (what one event record holds), disasm.ts (the instruction at RIP),
 * chain.ts (the hash chain and its verification), log.ts (the writer, with
 * rotation), show.ts (the readable table).
 */
export {
  AUDIT_FORMAT,
  type AuditFile,
  type BadRecord,
  describeBad,
  genesisHash,
  parseLine,
  sealRecord,
  type VerifyOptions,
  type VerifyReport,
  verifyChain,
} from "./audit/chain.js";
export { BAD_INSN, type DecodedInsn, disassemble } from "./audit/disasm.js";
export { AuditLog, type AuditLogOptions, DEFAULT_KEEP, rotatedFiles } from "./audit/log.js";
export { type AuditVmView, auditRecord, type EventNames, NO_INSN, nameEvent } from "./audit/record.js";
export { renderTable } from "./audit/show.js";
