/**
 * `guardvisor audit verify|show`: check and read audit logs (docs/audit.md).
 *
 * Exit codes: 0 the log verified (show: it was printed); 1 verification
 * failed: a record was changed, removed, reordered or duplicated, or the end
 * of the log is missing; 2 bad usage or an unreadable file.
 */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { type AuditFile, describeBad, type VerifyReport, verifyChain } from "../audit/chain.js";
import { rotatedFiles } from "../audit/log.js";
import { renderTable } from "../audit/show.js";
import { GuardvisorError } from "../errors.js";

export const AUDIT_EXIT = { OK: 0, VERIFY_FAILED: 1, USAGE: 2 } as const;

const AUDIT_EXIT_HELP = `
Exit codes:
  0   the log verified (show: the log was printed, whatever its chain status)
  1   verification failed: a record was changed, removed, reordered or duplicated,
      or the end of the log is missing
  2   bad usage or input: an unreadable file, a bad option value`;

function readAuditFile(path: string): AuditFile {
  try {
    return { name: path, data: readFileSync(path) };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT" ? "no such file" : err.code === "EISDIR" ? "is a directory" : err.message;
    throw new GuardvisorError("IO", `cannot read audit log ${path}: ${why}`);
  }
}

/** The files to read: as given, or with --rotated, FILE's rotated predecessors (oldest first) and FILE. */
function auditFiles(paths: string[], rotated: boolean | undefined): AuditFile[] {
  if (!rotated) return paths.map(readAuditFile);
  if (paths.length !== 1) throw new GuardvisorError("CONFIG_INVALID", "--rotated: give exactly one FILE");
  const path = paths[0]!;
  const found = rotatedFiles(path);
  return (found.at(-1) === path ? found : [...found, path]).map(readAuditFile);
}

function verifyText(r: VerifyReport): string {
  const lines: string[] = [];
  if (r.files.length > 1) {
    for (const f of r.files) {
      const part = f.part === null ? "" : `, part ${f.part}`;
      const range = f.firstIndex === null ? "no records verified" : `index ${f.firstIndex}–${f.lastIndex}`;
      lines.push(`${f.file}: ${f.records} records, ${range}${part}`);
    }
  }
  if (r.ok) {
    const from = r.start?.kind === "genesis" ? "from its start" : `from index ${r.firstIndex} (an earlier part)`;
    const to =
      r.end === "closed" ? "to its close" : r.end === "rotated" ? "to a rotation" : "to its last record (open)";
    lines.push(`ok: ${r.records} records, index ${r.firstIndex}–${r.lastIndex}, chain ${r.chain}, ${from} ${to}`);
  } else {
    lines.push(`FAILED: first bad record: ${describeBad(r.bad!)}`);
    if (r.records > 0) lines.push(`the ${r.records} records before it verified (index ${r.firstIndex}–${r.lastIndex})`);
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  if (r.head) lines.push(`head: ${r.head}${r.ok ? "" : " (the last record that verified)"}`);
  return `${lines.join("\n")}\n`;
}

interface VerifyFlags {
  rotated?: boolean;
  allowOpen?: boolean;
  complete?: boolean;
  anchor?: string;
  json?: boolean;
}

/**
 * Add `audit verify` and `audit show` to `program`. `setExit` receives each
 * command's exit code; without it a non-zero code ends the process at once.
 */
export function registerAuditCommands(program: Command, setExit?: (code: number) => void): void {
  const exit =
    setExit ??
    ((code: number) => {
      if (code !== 0) process.exit(code);
    });
  const audit = program
    .command("audit")
    .description("check and read tamper-evident audit logs (run --audit FILE)")
    .addHelpText("after", AUDIT_EXIT_HELP);

  audit
    .command("verify")
    .description("check a log's hash chain; name the first changed, removed, reordered or duplicated record")
    .argument("<files...>", "the log, or the files of a rotated log oldest first (FILE.2 FILE.1 FILE)")
    .option("--rotated", "read FILE's rotated files too (FILE.N … FILE.1, then FILE)")
    .option("--allow-open", "accept a log without a close record (one still being written)")
    .option("--complete", "require the whole chain: its start record through a close record")
    .option("--anchor <hash>", "require the record with this hash (a head saved elsewhere earlier) to be in the chain")
    .option("--json", "print the result as one JSON object")
    .addHelpText("after", AUDIT_EXIT_HELP)
    .action((paths: string[], flags: VerifyFlags) => {
      if (flags.anchor !== undefined && !/^[0-9a-fA-F]{64}$/.test(flags.anchor)) {
        throw new GuardvisorError("CONFIG_INVALID", "--anchor: must be 64 hex digits (a SHA-256)");
      }
      const files = auditFiles(paths, flags.rotated);
      const r = verifyChain(files, { allowOpen: flags.allowOpen, complete: flags.complete, anchor: flags.anchor });
      process.stdout.write(flags.json ? `${JSON.stringify(r)}\n` : verifyText(r));
      exit(r.ok ? AUDIT_EXIT.OK : AUDIT_EXIT.VERIFY_FAILED);
    });

  audit
    .command("show")
    .description("print a log as a readable table, with its chain status")
    .argument("<files...>", "the log, or the files of a rotated log oldest first")
    .option("--rotated", "read FILE's rotated files too (FILE.N … FILE.1, then FILE)")
    .addHelpText("after", AUDIT_EXIT_HELP)
    .action((paths: string[], flags: { rotated?: boolean }) => {
      const files = auditFiles(paths, flags.rotated);
      const color = process.stdout.isTTY === true && !process.env.NO_COLOR;
      process.stdout.write(renderTable(files, { color }));
      exit(AUDIT_EXIT.OK);
    });

  for (const c of [audit, ...audit.commands]) c.exitOverride();
}
