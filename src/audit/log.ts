/**
 * The audit log writer: appends hash-chained JSON Lines records (chain.ts),
 * continues the chain of an existing log, and rotates by size.
 *
 * One writer per file: two processes appending to the same log break its
 * chain (and `audit verify` says where).
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { hostname } from "node:os";
import { GuardvisorError } from "../errors.js";
import {
  AUDIT_FORMAT,
  type ChainRecord,
  genesisHash,
  isBookkeeping,
  parseLine,
  RESERVED_KEYS,
  sealRecord,
  splitLines,
} from "./chain.js";

export interface AuditLogOptions {
  /** Rotate when the file would grow past this many bytes (at least 4096). Unset: never rotate. */
  maxBytes?: number;
  /** Rotated files to keep (`FILE.1` newest … `FILE.<keep>` oldest); default 5. 0 keeps none. */
  keep?: number;
}

export const DEFAULT_KEEP = 5;
export const MIN_MAX_BYTES = 4096;
/** The longest last line the writer reads back when it continues a log. */
const MAX_TAIL = 1 << 20;

function ioError(path: string, what: string, e: unknown): GuardvisorError {
  const err = e as NodeJS.ErrnoException;
  return new GuardvisorError("IO", `cannot ${what} audit log ${path}: ${err.code ?? err.message ?? String(e)}`, {
    cause: e,
  });
}

function damaged(path: string, why: string): GuardvisorError {
  return new GuardvisorError(
    "IO",
    `audit log ${path} ${why}; check it with 'guardvisor audit verify ${path}', then move it away or use another file`,
  );
}

/** The file's first and last lines as chained records; null when the file is missing or empty. */
function readEnds(path: string): { first: ChainRecord; last: ChainRecord } | null {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw ioError(path, "read", e);
  }
  try {
    const size = fstatSync(fd).size;
    if (size === 0) return null;
    const read = (pos: number, len: number) => {
      const b = Buffer.alloc(len);
      const n = readSync(fd, b, 0, len, pos);
      return b.subarray(0, n);
    };
    const headLen = Math.min(size, MAX_TAIL);
    const head = splitLines(read(0, headLen));
    const tailLen = Math.min(size, MAX_TAIL);
    const tailBuf = read(size - tailLen, tailLen);
    if (tailBuf[tailBuf.length - 1] !== 0x0a) throw damaged(path, "ends with an incomplete line");
    const tail = splitLines(tailBuf.subarray(0, tailBuf.length - 1));
    const lastLine = tail.lines[tail.lines.length - 1]!;
    if (tail.lines.length < 2 && size > tailLen) throw damaged(path, "ends with a line too long to be a record");
    if (head.lines.length === 0 || (head.lines.length === 1 && head.partial)) {
      throw damaged(path, "begins with a line too long to be a record");
    }
    const first = parseLine(head.lines[0]!);
    const last = parseLine(lastLine);
    if (!first.ok || !first.record.hashOk) throw damaged(path, "does not begin with a valid audit record");
    if (!last.ok || !last.record.hashOk) throw damaged(path, "does not end with a valid audit record");
    if (first.record.chain !== last.record.chain) throw damaged(path, "begins and ends in different chains");
    return { first: first.record, last: last.record };
  } finally {
    closeSync(fd);
  }
}

/** Shift `path` to `path.1`, `path.1` to `path.2`, …; the oldest beyond `keep` is removed. */
function shiftFiles(path: string, keep: number): void {
  try {
    if (keep === 0) {
      rmSync(path, { force: true });
      return;
    }
    rmSync(`${path}.${keep}`, { force: true });
    for (let i = keep - 1; i >= 1; i--) {
      if (existsSync(`${path}.${i}`)) renameSync(`${path}.${i}`, `${path}.${i + 1}`);
    }
    renameSync(path, `${path}.1`);
  } catch (e) {
    throw ioError(path, "rotate", e);
  }
}

export class AuditLog {
  readonly maxBytes: number | undefined;
  readonly keep: number;
  /** The chain id (32 hex digits). */
  readonly chain: string;
  private fd = -1;
  private lastIndex = 0;
  private lastHash = "";
  private part = 0;
  private bytes = 0;
  /** Records in the current file. */
  private fileRecords = 0;
  private appended = 0;
  private closed = false;
  private broken: string | undefined;

  constructor(
    readonly path: string,
    opts: AuditLogOptions = {},
  ) {
    if (opts.maxBytes !== undefined && (!Number.isSafeInteger(opts.maxBytes) || opts.maxBytes < MIN_MAX_BYTES)) {
      throw new GuardvisorError("CONFIG_INVALID", `audit maxBytes: must be a whole number >= ${MIN_MAX_BYTES}`);
    }
    if (opts.keep !== undefined && (!Number.isSafeInteger(opts.keep) || opts.keep < 0 || opts.keep > 1000)) {
      throw new GuardvisorError("CONFIG_INVALID", "audit keep: must be a whole number 0..1000");
    }
    this.maxBytes = opts.maxBytes;
    this.keep = opts.keep ?? DEFAULT_KEEP;

    const ends = readEnds(path);
    // A writer that crashed between rotating and starting the next file leaves `path.1` ending in a rotate record.
    const rotated = ends === null && existsSync(`${path}.1`) ? readEnds(`${path}.1`) : null;
    const from = ends ?? (rotated?.last.kind === "audit-rotate" ? rotated : null);
    if (from === null) {
      this.chain = randomBytes(16).toString("hex");
      this.open();
      this.writeRecord({ kind: "audit-start", ...this.writerInfo() }, genesisHash(this.chain));
      return;
    }
    this.chain = from.last.chain;
    this.lastIndex = from.last.index;
    this.lastHash = from.last.hash;
    const firstPart = from.first.fields.part;
    this.part = typeof firstPart === "number" && Number.isSafeInteger(firstPart) ? firstPart : 0;
    if (from.last.kind === "audit-rotate") {
      if (ends !== null) shiftFiles(path, this.keep);
      this.open();
      this.part++;
      this.writeRecord({ kind: "audit-continue", ...this.writerInfo() });
      // The writer that rotated never closed the log: say so, as after any crash.
      this.writeRecord({ kind: "audit-reopen", ...this.writerInfo(), afterClose: false });
    } else {
      this.open();
      this.writeRecord({ kind: "audit-reopen", ...this.writerInfo(), afterClose: from.last.kind === "audit-close" });
    }
  }

  /** Records appended through append() by this writer. */
  get records(): number {
    return this.appended;
  }

  /** The hash of the last record written: save it elsewhere to detect a rewritten log. */
  get head(): string {
    return this.lastHash;
  }

  /** The index of the last record written. */
  get index(): number {
    return this.lastIndex;
  }

  /**
   * Append one record: a CPU event (auditRecord) or any other event, e.g.
   * `{ kind: "hm-restart", vm: "health-vm", reason: "…" }`. It needs a `kind` that does
   * not begin with `audit-`, and no `chain`, `index`, `prevHash` or `hash`
   * member; `time` is added when missing.
   */
  append(record: Record<string, unknown>): void {
    if (this.closed) throw new GuardvisorError("INTERNAL", `audit log ${this.path} is closed`);
    if (typeof record.kind !== "string" || record.kind === "" || isBookkeeping(record.kind)) {
      throw new GuardvisorError("INTERNAL", `audit record kind ${JSON.stringify(record.kind)} is not allowed`);
    }
    for (const k of RESERVED_KEYS) {
      if (k in record) throw new GuardvisorError("INTERNAL", `audit record member ${k} is reserved`);
    }
    const rec = "time" in record ? record : { time: new Date().toISOString(), ...record };
    if (this.maxBytes !== undefined && this.fileRecords > 1) {
      const size = Buffer.byteLength(this.seal(rec, this.lastHash).line) + 1;
      if (this.bytes + size > this.maxBytes) this.rotate();
    }
    this.writeRecord(rec);
    this.appended++;
  }

  /** Write the close record and close the file. Safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.broken) {
        this.writeRecord({
          kind: "audit-close",
          time: new Date().toISOString(),
          part: this.part,
          records: this.appended,
        });
        fsyncSync(this.fd);
      }
    } finally {
      closeSync(this.fd);
    }
  }

  private writerInfo() {
    return {
      time: new Date().toISOString(),
      format: AUDIT_FORMAT,
      part: this.part,
      pid: process.pid,
      host: hostname(),
    };
  }

  private open(): void {
    try {
      this.fd = openSync(this.path, "a", 0o600);
      this.bytes = fstatSync(this.fd).size;
    } catch (e) {
      throw ioError(this.path, "open", e);
    }
    // An existing file already holds records: the next append may rotate it.
    this.fileRecords = this.bytes > 0 ? 1 : 0;
  }

  private seal(record: Record<string, unknown>, prevHash: string) {
    try {
      return sealRecord({ chain: this.chain, index: this.lastIndex + 1, prevHash }, record);
    } catch (e) {
      throw new GuardvisorError("INTERNAL", `audit record cannot be serialized: ${(e as Error).message}`);
    }
  }

  private writeRecord(record: Record<string, unknown>, prevHash = this.lastHash): void {
    if (this.broken) throw new GuardvisorError("IO", `audit log ${this.path} is unusable: ${this.broken}`);
    const sealed = this.seal(record, prevHash);
    const buf = Buffer.from(`${sealed.line}\n`, "utf8");
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
    } catch (e) {
      const err = ioError(this.path, "write", e);
      this.broken = err.message;
      throw err;
    }
    this.lastIndex++;
    this.lastHash = sealed.hash;
    this.bytes += buf.length;
    this.fileRecords++;
  }

  private rotate(): void {
    this.writeRecord({ kind: "audit-rotate", time: new Date().toISOString(), part: this.part, records: this.appended });
    try {
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
    }
    this.fd = -1;
    shiftFiles(this.path, this.keep);
    this.open();
    this.part++;
    this.writeRecord({ kind: "audit-continue", ...this.writerInfo() });
  }
}

/** The files of a rotated log, oldest first, as `audit verify` wants them. */
export function rotatedFiles(path: string, keep = 1000): string[] {
  const out: string[] = [];
  for (let i = 1; i <= keep && existsSync(`${path}.${i}`); i++) out.unshift(`${path}.${i}`);
  if (existsSync(path) && statSync(path).isFile()) out.push(path);
  return out;
}
