/**
 * The audit log's hash chain: how one record is sealed into a line, and how a
 * sequence of lines (one or more files) is verified. See docs/audit.md.
 *
 * A line is the compact JSON of the record with `chain`, `index` and
 * `prevHash` first and `hash` last:
 *
 *   {"chain":C,"index":N,"prevHash":P, ...fields... ,"hash":H}
 *
 * H is the SHA-256 (hex) of the line's exact bytes with the `,"hash":H` member
 * cut out, i.e. of `{"chain":C,...fields...}`; P is the H of the record before
 * (or, for the first record of a chain, the genesis hash of C). Verification
 * works on bytes, never on re-serialized JSON, so every byte of a line is
 * covered: whitespace, key order and escapes included.
 */
import { createHash } from "node:crypto";

export const AUDIT_FORMAT = "guardvisor-audit/1";

/** Record kinds the writer adds itself; an event may not use the `audit-` prefix. */
export const BOOKKEEPING_KINDS = [
  "audit-start",
  "audit-reopen",
  "audit-rotate",
  "audit-continue",
  "audit-close",
] as const;
export type BookkeepingKind = (typeof BOOKKEEPING_KINDS)[number];

/** Members the chain owns; a record given to the writer may not have them. */
export const RESERVED_KEYS = ["chain", "index", "prevHash", "hash"] as const;

const HEX64 = /^[0-9a-f]{64}$/;
const CHAIN_ID = /^[0-9a-f]{32}$/;
const HASH_MEMBER = Buffer.from(',"hash":"');
/** `,"hash":"` + 64 hex digits + `"}` */
const SUFFIX_LEN = HASH_MEMBER.length + 64 + 2;

export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** prevHash of the first record of chain `chain`. */
export function genesisHash(chain: string): string {
  return sha256Hex(`${AUDIT_FORMAT} genesis ${chain}`);
}

/** Control characters escaped: records hold guest- and ELF-supplied text that must not reach a terminal raw. */
export function printable(s: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to find them
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

export function isBookkeeping(kind: string): boolean {
  return kind.startsWith("audit-");
}

export interface SealedLine {
  /** The line without its newline. */
  line: string;
  hash: string;
}

/**
 * Seal one record into its line. Throws a TypeError when the record cannot be
 * serialized as JSON (BigInt, cycles).
 */
export function sealRecord(
  link: { chain: string; index: number; prevHash: string },
  record: Record<string, unknown>,
): SealedLine {
  const body = JSON.stringify({ chain: link.chain, index: link.index, prevHash: link.prevHash, ...record });
  const hash = sha256Hex(Buffer.from(body, "utf8"));
  return { line: `${body.slice(0, -1)},"hash":"${hash}"}`, hash };
}

/** One line that has the shape of a chained record. */
export interface ChainRecord {
  chain: string;
  index: number;
  prevHash: string;
  hash: string;
  kind: string;
  /** The whole parsed object, chain members included. */
  fields: Record<string, unknown>;
  /** Whether `hash` is the SHA-256 of the line's bytes without it. */
  hashOk: boolean;
}

export type ParsedLine = { ok: true; record: ChainRecord } | { ok: false; reason: string };

/** Check a line's shape and recompute its hash. `line` has no newline. Never throws. */
export function parseLine(line: Uint8Array): ParsedLine {
  const buf = Buffer.from(line.buffer, line.byteOffset, line.length);
  if (buf.length === 0) return { ok: false, reason: "empty line" };
  const at = buf.length - SUFFIX_LEN;
  if (
    at < 1 ||
    buf[0] !== 0x7b ||
    !buf.subarray(at, at + HASH_MEMBER.length).equals(HASH_MEMBER) ||
    buf[buf.length - 2] !== 0x22 ||
    buf[buf.length - 1] !== 0x7d
  ) {
    return { ok: false, reason: 'malformed: not a JSON object ending with a "hash" member' };
  }
  const stated = buf.subarray(at + HASH_MEMBER.length, at + HASH_MEMBER.length + 64).toString("latin1");
  if (!HEX64.test(stated)) return { ok: false, reason: "malformed: the hash is not 64 lowercase hex digits" };
  let obj: unknown;
  try {
    obj = JSON.parse(buf.toString("utf8"));
  } catch (e) {
    return { ok: false, reason: `malformed: not valid JSON (${(e as Error).message})` };
  }
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    return { ok: false, reason: "malformed: not a JSON object" };
  }
  const o = obj as Record<string, unknown>;
  if (typeof o.chain !== "string" || !CHAIN_ID.test(o.chain))
    return { ok: false, reason: "malformed: no valid chain id" };
  if (typeof o.index !== "number" || !Number.isSafeInteger(o.index) || o.index < 1)
    return { ok: false, reason: "malformed: no valid index" };
  if (typeof o.prevHash !== "string" || !HEX64.test(o.prevHash))
    return { ok: false, reason: "malformed: no valid prevHash" };
  if (o.hash !== stated) return { ok: false, reason: 'malformed: more than one "hash" member' };
  if (typeof o.kind !== "string" || o.kind === "") return { ok: false, reason: "malformed: no kind" };
  const body = Buffer.concat([buf.subarray(0, at), Buffer.from("}")]);
  return {
    ok: true,
    record: {
      chain: o.chain,
      index: o.index,
      prevHash: o.prevHash,
      hash: stated,
      kind: o.kind,
      fields: o,
      hashOk: sha256Hex(body) === stated,
    },
  };
}

/** Split file contents into lines; `partial` is set when the last line has no newline. */
export function splitLines(data: Uint8Array): { lines: Buffer[]; partial: boolean } {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
  const lines: Buffer[] = [];
  let start = 0;
  for (;;) {
    const nl = buf.indexOf(0x0a, start);
    if (nl < 0) break;
    lines.push(buf.subarray(start, nl));
    start = nl + 1;
  }
  const partial = start < buf.length;
  if (partial) lines.push(buf.subarray(start));
  return { lines, partial };
}

export interface AuditFile {
  /** How reports name the file. */
  name: string;
  data: Uint8Array;
}

export interface BadRecord {
  file: string;
  /** 1-based line number in `file`. */
  line: number;
  /** The record's index when it could be read, else null. */
  index: number | null;
  /** The index the chain expected there, when known. */
  expectedIndex: number | null;
  reason: string;
}

export interface FileReport {
  file: string;
  records: number;
  firstIndex: number | null;
  lastIndex: number | null;
  /** The file's part number in its chain (0 for the file the chain started in), when its first record says. */
  part: number | null;
  /** Kind of the file's last record. */
  lastKind: string | null;
}

export interface VerifyOptions {
  /** Accept a log that does not end with a close or rotate record (a log still being written). */
  allowOpen?: boolean;
  /**
   * The hash of a record saved elsewhere earlier (e.g. the head printed after
   * a run): the chain must contain that record.
   */
  anchor?: string;
  /** Require the whole chain: from its start record to a close record. */
  complete?: boolean;
}

export interface VerifyReport {
  ok: boolean;
  /** The first bad record, when !ok. */
  bad: BadRecord | null;
  chain: string | null;
  /** Records that verified (all of them when ok). */
  records: number;
  firstIndex: number | null;
  lastIndex: number | null;
  /** The hash of the last record that verified. */
  head: string | null;
  /** Where the anchor record is, when an anchor was given and found. */
  anchor: { file: string; line: number; index: number } | null;
  /** Where the chain starts in these files: at its genesis, or continuing a part not given. */
  start: { kind: "genesis" } | { kind: "continued"; fromIndex: number; prevHash: string } | null;
  /** How the verified records end. */
  end: "closed" | "rotated" | "open" | null;
  files: FileReport[];
  /** Facts a reader should know that are not failures. */
  notes: string[];
}

interface Prev {
  rec: ChainRecord;
  file: string;
  line: number;
}

const at = (p: Prev) => `${p.file} line ${p.line}`;

/**
 * Verify files as one chain, in the order given (oldest first). Stops at the
 * first bad record. Never throws on any file contents.
 */
export function verifyChain(files: AuditFile[], opts: VerifyOptions = {}): VerifyReport {
  const report: VerifyReport = {
    ok: false,
    bad: null,
    chain: null,
    records: 0,
    firstIndex: null,
    lastIndex: null,
    head: null,
    anchor: null,
    start: null,
    end: null,
    files: [],
    notes: [],
  };
  let prev: Prev | null = null;
  /** Events since the writer's opening record; null when that record is not among these files. */
  let sessionEvents: number | null = null;
  const seen = new Map<string, Prev>();

  const fail = (file: string, line: number, index: number | null, reason: string): VerifyReport => {
    const expectedIndex = prev ? prev.rec.index + 1 : null;
    report.bad = { file, line, index, expectedIndex, reason };
    return report;
  };

  for (let fi = 0; fi < files.length; fi++) {
    const f = files[fi]!;
    const fr: FileReport = { file: f.name, records: 0, firstIndex: null, lastIndex: null, part: null, lastKind: null };
    report.files.push(fr);
    const { lines, partial } = splitLines(f.data);
    if (lines.length === 0) return fail(f.name, 1, null, "empty file: no records");
    for (let li = 0; li < lines.length; li++) {
      const lineNo = li + 1;
      if (partial && li === lines.length - 1) {
        return fail(f.name, lineNo, null, "incomplete last line (no newline at the end): the write was cut off");
      }
      const parsed = parseLine(lines[li]!);
      if (!parsed.ok) return fail(f.name, lineNo, null, parsed.reason);
      const r = parsed.record;
      if (!r.hashOk) return fail(f.name, lineNo, r.index, "hash mismatch: the record was changed after it was written");
      if (isBookkeeping(r.kind) && !(BOOKKEEPING_KINDS as readonly string[]).includes(r.kind)) {
        return fail(f.name, lineNo, r.index, `unknown record kind ${printable(r.kind)}`);
      }
      const fmt = r.fields.format;
      if (fmt !== undefined && fmt !== AUDIT_FORMAT) {
        return fail(f.name, lineNo, r.index, `unsupported format ${JSON.stringify(fmt)}, expected ${AUDIT_FORMAT}`);
      }
      const firstInFile = li === 0;
      if (prev === null) {
        // The first record given: a chain's start, or the start of a later part.
        if (r.kind === "audit-start") {
          if (r.index !== 1) return fail(f.name, lineNo, r.index, `a chain starts at index 1, not ${r.index}`);
          if (r.prevHash !== genesisHash(r.chain)) {
            return fail(f.name, lineNo, r.index, "prevHash is not the genesis hash of the chain");
          }
          report.start = { kind: "genesis" };
          sessionEvents = 0;
        } else if (r.kind === "audit-continue") {
          report.start = { kind: "continued", fromIndex: r.index - 1, prevHash: r.prevHash };
          report.notes.push(
            `the chain does not start in these files: ${f.name} continues it at index ${r.index}` +
              `${typeof r.fields.part === "number" ? ` (part ${r.fields.part})` : ""}, after a record with hash ${r.prevHash}`,
          );
        } else {
          return fail(
            f.name,
            lineNo,
            r.index,
            `the first record (kind ${printable(r.kind)}, index ${r.index}) does not start a chain or a chain part: the records before it were removed`,
          );
        }
        report.chain = r.chain;
        report.firstIndex = r.index;
      } else {
        const p: Prev = prev;
        const dup = seen.get(r.hash);
        if (dup) return fail(f.name, lineNo, r.index, `duplicate of ${at(dup)} (index ${dup.rec.index})`);
        if (r.chain !== p.rec.chain) {
          return fail(
            f.name,
            lineNo,
            r.index,
            `belongs to chain ${r.chain}, not ${p.rec.chain}: records from another log`,
          );
        }
        const want = p.rec.index + 1;
        if (r.index > want) {
          const gap = r.index - want;
          const which = gap === 1 ? `index ${want} is` : `indexes ${want}–${r.index - 1} are`;
          return fail(
            f.name,
            lineNo,
            r.index,
            `expected index ${want}, found ${r.index}: the record${gap === 1 ? "" : "s"} with ${which} missing here (removed or moved)`,
          );
        }
        if (r.index < want) {
          return fail(
            f.name,
            lineNo,
            r.index,
            `expected index ${want}, found ${r.index}: records are out of order or repeated`,
          );
        }
        if (r.prevHash !== p.rec.hash) {
          return fail(
            f.name,
            lineNo,
            r.index,
            `prevHash does not match the hash of the record before it (${at(p)}): a record was replaced`,
          );
        }
        // Structure: files are bracketed by start/continue ... rotate/close.
        if (firstInFile) {
          if (p.rec.kind !== "audit-rotate") {
            return fail(
              f.name,
              lineNo,
              r.index,
              `${p.file} does not end with a rotate record, so no file may follow it in this chain`,
            );
          }
          if (r.kind !== "audit-continue") {
            return fail(
              f.name,
              lineNo,
              r.index,
              `a file after a rotation must begin with audit-continue, not ${printable(r.kind)}`,
            );
          }
        } else {
          if (p.rec.kind === "audit-rotate") {
            return fail(f.name, lineNo, r.index, `a record follows the rotate record at ${at(p)} in the same file`);
          }
          if (r.kind === "audit-continue" || r.kind === "audit-start") {
            return fail(f.name, lineNo, r.index, `${r.kind} may only begin a file`);
          }
        }
        if (p.rec.kind === "audit-close" && r.kind !== "audit-reopen") {
          return fail(
            f.name,
            lineNo,
            r.index,
            `a ${printable(r.kind)} record follows the close record at ${at(p)}; only audit-reopen may`,
          );
        }
        if (r.kind === "audit-reopen" && p.rec.kind !== "audit-close") {
          report.notes.push(
            `the writer before index ${r.index} did not close the log (it was killed or crashed); reopened at ${f.name} line ${lineNo}`,
          );
        }
      }
      if (r.kind === "audit-reopen") sessionEvents = 0;
      else if (r.kind === "audit-close") {
        const stated = r.fields.records;
        if (sessionEvents !== null && stated !== sessionEvents) {
          return fail(
            f.name,
            lineNo,
            r.index,
            `the close record counts ${JSON.stringify(stated)} records since the log was opened, the chain has ${sessionEvents}`,
          );
        }
      } else if (!isBookkeeping(r.kind) && sessionEvents !== null) sessionEvents++;
      if (firstInFile && typeof r.fields.part === "number") fr.part = r.fields.part;
      fr.records++;
      fr.firstIndex ??= r.index;
      fr.lastIndex = r.index;
      fr.lastKind = r.kind;
      prev = { rec: r, file: f.name, line: lineNo };
      seen.set(r.hash, prev);
      report.records++;
      report.lastIndex = r.index;
      report.head = r.hash;
    }
    if (fi < files.length - 1 && prev?.rec.kind !== "audit-rotate") {
      const p = prev!;
      const next = files[fi + 1]!.name;
      report.bad = {
        file: next,
        line: 1,
        index: null,
        expectedIndex: p.rec.index + 1,
        reason: `${p.file} does not end with a rotate record (last: ${printable(p.rec.kind)}), so ${next} cannot follow it`,
      };
      return report;
    }
  }

  const last = prev!;
  if (opts.complete && report.start?.kind !== "genesis") {
    const f = report.files[0]!;
    report.bad = {
      file: f.file,
      line: 1,
      index: report.firstIndex,
      expectedIndex: null,
      reason: "the chain's start is not in these files (--complete): an older part is missing",
    };
    return report;
  }
  if (opts.complete && last.rec.kind === "audit-rotate") {
    report.bad = {
      file: last.file,
      line: last.line + 1,
      index: null,
      expectedIndex: last.rec.index + 1,
      reason: `the chain continues after index ${last.rec.index} in a part that was not given (--complete): a newer part is missing`,
    };
    return report;
  }
  if (last.rec.kind === "audit-close") report.end = "closed";
  else if (last.rec.kind === "audit-rotate") {
    report.end = "rotated";
    report.notes.push(
      `the chain continues after index ${last.rec.index} in a later part that was not given (the newer file)`,
    );
  } else if (opts.allowOpen) {
    report.end = "open";
    report.notes.push(
      `no close record after index ${last.rec.index}: accepted as a log still being written (--allow-open)`,
    );
  } else {
    report.bad = {
      file: last.file,
      line: last.line + 1,
      index: null,
      expectedIndex: last.rec.index + 1,
      reason:
        `no close record after index ${last.rec.index}: the end of the log is missing (cut off), ` +
        "or its writer is still running or was killed (--allow-open accepts a log still being written)",
    };
    return report;
  }
  if (opts.anchor !== undefined) {
    const a = seen.get(opts.anchor.toLowerCase());
    if (!a) {
      report.bad = {
        file: report.files[0]!.file,
        line: 1,
        index: report.firstIndex,
        expectedIndex: null,
        reason: `no record has the anchor hash ${opts.anchor}: the log was rewritten, or the records up to the anchor were removed`,
      };
      return report;
    }
    report.anchor = { file: a.file, line: a.line, index: a.rec.index };
    report.notes.push(
      `the anchor is the record at ${at(a)} (index ${a.rec.index}): it and every record before it are as they were when the anchor was taken`,
    );
  }
  report.ok = true;
  return report;
}

/** "A.jsonl line 3 (index 3): reason" */
export function describeBad(b: BadRecord): string {
  const idx =
    b.index !== null ? `index ${b.index}` : b.expectedIndex !== null ? `expected index ${b.expectedIndex}` : "no index";
  return `${b.file} line ${b.line} (${idx}): ${b.reason}`;
}
