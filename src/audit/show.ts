/**
 * `audit show`: an audit log as a readable, aligned table, with the chain's
 * verification status underneath. Lines that cannot be read are shown as
 * such rather than skipped.
 */
import { type AuditFile, describeBad, printable, splitLines, type VerifyReport, verifyChain } from "./chain.js";

export interface ShowOptions {
  /** ANSI colour for verdicts and the status line. */
  color?: boolean;
}

const COLUMNS = ["#", "time", "vm", "seq", "kind", "where", "verdict", "decided by", "latency", "instruction"] as const;

const RED = "\x1b[31m";
const GREEN = "\x1b[32m";
const YELLOW = "\x1b[33m";
const RESET = "\x1b[0m";

const str = (v: unknown): string => (v === undefined || v === null || v === "" ? "-" : printable(String(v)));

function timeText(v: unknown): string {
  if (typeof v !== "string") return "-";
  const t = printable(v);
  const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d(?:\.\d+)?)Z$/.exec(t);
  return m ? `${m[1]} ${m[2]}` : t;
}

function whereText(o: Record<string, unknown>): string {
  const kind = String(o.kind ?? "");
  if (kind.startsWith("audit-")) {
    const parts = [typeof o.chain === "string" ? `chain ${o.chain.slice(0, 12)}` : ""];
    if (typeof o.part === "number") parts.push(`part ${o.part}`);
    if (kind === "audit-close" || kind === "audit-rotate") parts.push(`${str(o.records)} records`);
    return parts.filter(Boolean).join(", ");
  }
  const sym = o.target ?? o.rip;
  const where = [o.region, sym].filter((x) => typeof x === "string" && x !== "").join(" ");
  // Records that are not CPU events (a health-VM restart, say) have a reason instead.
  return where || (typeof o.reason === "string" && o.reason !== "" ? o.reason : "-");
}

function verdictColor(v: string): string {
  if (v === "allow" || v === "log") return GREEN;
  if (v === "-") return "";
  return v === "deny" ? YELLOW : RED;
}

/** One row per line of each file. */
export function tableRows(files: AuditFile[]): string[][] {
  const rows: string[][] = [];
  for (const f of files) {
    const { lines } = splitLines(f.data);
    lines.forEach((line, i) => {
      let o: unknown;
      try {
        o = JSON.parse(line.toString("utf8"));
      } catch {
        o = undefined;
      }
      if (typeof o !== "object" || o === null || Array.isArray(o)) {
        rows.push(["?", `(${f.name} line ${i + 1}: not a JSON record)`, "", "", "", "", "", "", "", ""]);
        return;
      }
      const r = o as Record<string, unknown>;
      const insn = r.insn as { text?: unknown } | undefined;
      rows.push([
        str(r.index),
        timeText(r.time),
        str(r.vm),
        str(r.seq),
        str(r.kind),
        printable(whereText(r)),
        str(r.verdict),
        str(r.decidedBy),
        typeof r.latencyUs === "number" ? `${r.latencyUs.toFixed(1)} us` : "-",
        typeof insn === "object" && insn !== null ? str(insn.text) : "-",
      ]);
    });
  }
  return rows;
}

/** The chain status line under the table. */
export function statusLine(v: VerifyReport): string {
  if (!v.ok) return `chain: BROKEN at ${v.bad ? describeBad(v.bad) : "?"}`;
  const range = v.firstIndex === null ? "" : `records ${v.firstIndex}–${v.lastIndex}`;
  const start = v.start?.kind === "continued" ? ", continuing an earlier part" : "";
  const end = v.end === "closed" ? ", closed" : v.end === "rotated" ? ", continued in a later part" : ", still open";
  return `chain: ok, ${range}${start}${end}; head ${v.head}`;
}

export function renderTable(files: AuditFile[], opts: ShowOptions = {}): string {
  const rows = tableRows(files);
  const widths = COLUMNS.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i]!.length)));
  const numeric = new Set([0, 3, 8]);
  const fmt = (cells: readonly string[], colorOf?: (i: number, s: string) => string) =>
    cells
      .map((c, i) => {
        const padded = i === cells.length - 1 ? c : numeric.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!);
        const col = colorOf?.(i, c) ?? "";
        return col ? `${col}${padded}${RESET}` : padded;
      })
      .join("  ")
      .trimEnd();
  const out = [fmt(COLUMNS), fmt(widths.map((w) => "-".repeat(w)))];
  for (const r of rows) out.push(fmt(r, opts.color ? (i, s) => (i === 6 ? verdictColor(s) : "") : undefined));
  const v = verifyChain(files, { allowOpen: true });
  const status = statusLine(v);
  out.push("", opts.color ? `${v.ok ? GREEN : RED}${status}${RESET}` : status);
  return `${out.join("\n")}\n`;
}
