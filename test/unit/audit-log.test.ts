import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { type AuditFile, describeBad, verifyChain } from "../../src/audit/chain.js";
import { AuditLog, rotatedFiles } from "../../src/audit/log.js";
import { auditRecord, NO_INSN } from "../../src/audit/record.js";
import { GuardvisorError } from "../../src/errors.js";
import {
  type EventRecordView,
  fakeVm,
  readLines,
  syntheticEvent,
  syntheticRecord,
  tempDir,
  writeLines,
} from "../support/audit.js";

const dir = tempDir();
let n = 0;
const fresh = () => join(dir, `log${++n}.jsonl`);
const load = (paths: string[]): AuditFile[] => paths.map((p) => ({ name: p, data: readFileSync(p) }));
const verify = (paths: string[], opts = {}) => verifyChain(load(paths), opts);
const okMsg = (r: ReturnType<typeof verify>) => (r.bad ? describeBad(r.bad) : "");

describe("audit: records", () => {
  it("an event record holds the decision and the full context, with the instruction disassembled", () => {
    const r = syntheticRecord(3) as unknown as EventRecordView;
    assert.equal(r.time, "2025-01-02T03:04:05.003Z");
    assert.equal(r.vm, "guest0");
    assert.equal(r.vcpu, 0);
    assert.equal(r.seq, 3);
    assert.equal(r.kind, "protected-write");
    assert.equal(r.verdict, "deny");
    assert.equal(r.reason, "write to protected kernel code");
    assert.equal(r.rule, "protect-kernel-text");
    assert.equal(r.decidedBy, "vmm");
    assert.equal(r.latencyUs, 15.3);
    assert.equal(r.region, ".text");
    assert.equal(r.target, "gv_check_credentials+0x3");
    assert.equal(r.rip, "gv_fn+0x10");
    assert.deepEqual(r.insn, { bytes: "488910", text: "mov qword ptr [rax],rdx" });
    assert.equal(r.context.gpa, "0x100003");
    assert.equal(r.context.data, "90909090");
    assert.equal(r.context.regs.rax, "0x100003");
    assert.equal(r.context.regs.rdx, "0x9090909090909090");
    assert.equal(r.context.cr2, "0x0");
    assert.equal(r.context.cr3, "0x2000");
    assert.equal(r.context.insn, "4889109090");
  });

  it("garbage or missing instruction bytes do not break a record", () => {
    const bad = auditRecord(
      syntheticEvent(1, Uint8Array.of(0xff, 0xff)),
      fakeVm,
      "guest0",
    ) as unknown as EventRecordView;
    assert.deepEqual(bad.insn, { bytes: "ffff", text: "(bad)" });
    const none = auditRecord(syntheticEvent(1, new Uint8Array(0)), fakeVm, "guest0") as unknown as EventRecordView;
    assert.deepEqual(none.insn, { bytes: "", text: NO_INSN });
  });
});

describe("audit: writer", () => {
  it("accepts records that are not CPU events, adds a time, and chains them all", () => {
    const path = fresh();
    const log = new AuditLog(path);
    log.append(syntheticRecord(1));
    log.append({ kind: "hm-restart", vm: "hm", reason: "health VM stopped answering", restarts: 1 });
    assert.equal(log.records, 2);
    assert.equal(log.index, 3);
    log.close();
    log.close();
    const lines = readLines(path).map((l) => JSON.parse(l));
    assert.equal(lines[2].kind, "hm-restart");
    assert.match(lines[2].time, /^\d{4}-\d\d-\d\dT/);
    assert.equal(lines[3].kind, "audit-close");
    assert.equal(lines[3].hash, log.head);
    const r = verify([path]);
    assert.equal(r.ok, true, okMsg(r));
    assert.equal(r.head, log.head);
  });

  it("rejects bookkeeping kinds, reserved members, unserializable values, and use after close", () => {
    const log = new AuditLog(fresh());
    assert.throws(() => log.append({ kind: "audit-close" }), GuardvisorError);
    assert.throws(() => log.append({ vm: "x" }), GuardvisorError);
    assert.throws(() => log.append({ kind: "x", hash: "0" }), /reserved/);
    assert.throws(() => log.append({ kind: "x", index: 9 }), /reserved/);
    assert.throws(() => log.append({ kind: "x", big: 1n }), /cannot be serialized/);
    log.close();
    assert.throws(() => log.append({ kind: "x" }), /closed/);
    assert.equal(verify([log.path]).ok, true);
  });

  it("a second writer continues the chain of a closed log", () => {
    const path = fresh();
    const a = new AuditLog(path);
    a.append(syntheticRecord(1));
    a.close();
    const b = new AuditLog(path);
    assert.equal(b.chain, a.chain);
    b.append(syntheticRecord(2));
    b.close();
    const kinds = readLines(path).map((l) => JSON.parse(l).kind);
    assert.deepEqual(kinds, [
      "audit-start",
      "protected-write",
      "audit-close",
      "audit-reopen",
      "protected-write",
      "audit-close",
    ]);
    const r = verify([path]);
    assert.equal(r.ok, true, okMsg(r));
    assert.deepEqual(r.notes, []);
    // Removing the first session's close record breaks the chain at the reopen.
    const lines = readLines(path);
    lines.splice(2, 1);
    writeLines(path, lines);
    assert.match(okMsg(verify([path])), /line 3 \(index 4\): expected index 3, found 4/);
  });

  it("continues after a writer that never closed, and says so", () => {
    const path = fresh();
    const a = new AuditLog(path);
    a.append(syntheticRecord(1));
    a.close();
    writeLines(path, readLines(path).slice(0, -1)); // as if killed before closing
    const b = new AuditLog(path);
    b.close();
    const last = readLines(path).map((l) => JSON.parse(l));
    assert.equal(last[2].kind, "audit-reopen");
    assert.equal(last[2].afterClose, false);
    const r = verify([path]);
    assert.equal(r.ok, true, okMsg(r));
    assert.match(r.notes.join("\n"), /did not close the log/);
  });

  it("refuses to extend a damaged log or a file that is not an audit log", () => {
    const cut = fresh();
    const a = new AuditLog(cut);
    a.close();
    writeFileSync(cut, readFileSync(cut, "utf8").slice(0, -10));
    assert.throws(() => new AuditLog(cut), /ends with an incomplete line.*audit verify/);
    const edited = fresh();
    new AuditLog(edited).close();
    writeFileSync(edited, readFileSync(edited, "utf8").replace("audit-close", "audit-closE"));
    assert.throws(() => new AuditLog(edited), /does not end with a valid audit record/);
    const other = fresh();
    writeFileSync(other, '{"time":"x","kind":"protected-write"}\n');
    assert.throws(() => new AuditLog(other), /valid audit record/);
  });

  it("validates its options", () => {
    assert.throws(() => new AuditLog(fresh(), { maxBytes: 100 }), /maxBytes/);
    assert.throws(() => new AuditLog(fresh(), { keep: -1 }), /keep/);
    assert.throws(() => new AuditLog(join(dir, "no", "such", "dir.jsonl")), /cannot open audit log/);
  });
});

describe("audit: rotation by size", () => {
  function rotatedLog(events: number, keep = 10) {
    const path = fresh();
    const log = new AuditLog(path, { maxBytes: 8192, keep });
    for (let i = 1; i <= events; i++) log.append(syntheticRecord(i));
    log.close();
    return { path, log, files: rotatedFiles(path) };
  }

  it("splits the log into files under the size limit, and the chain runs across them", () => {
    const { path, files } = rotatedLog(40);
    assert.ok(files.length >= 3, `${files.length} files`);
    assert.equal(files.at(-1), path);
    assert.equal(files[0], `${path}.${files.length - 1}`);
    for (const f of files) assert.ok(statSync(f).size <= 8192 + 400, `${f} is ${statSync(f).size} bytes`);
    const r = verify(files);
    assert.equal(r.ok, true, okMsg(r));
    assert.equal(r.end, "closed");
    assert.deepEqual(r.start, { kind: "genesis" });
    assert.equal(
      r.files.reduce((s, f) => s + f.records, 0),
      r.records,
    );
    assert.deepEqual(
      r.files.map((f) => f.part),
      files.map((_, i) => i),
    );
    const events = files
      .flatMap((f) => readLines(f).map((l) => JSON.parse(l)))
      .filter((o) => o.kind === "protected-write");
    assert.deepEqual(
      events.map((e) => e.seq),
      Array.from({ length: 40 }, (_, i) => i + 1),
    );
    // Each file is bracketed: start/continue ... rotate/close.
    for (const f of files) {
      const kinds = readLines(f).map((l) => JSON.parse(l).kind);
      assert.match(kinds[0], /^audit-(start|continue)$/);
      assert.match(kinds.at(-1), /^audit-(rotate|close)$/);
    }
  });

  it("one rotated file verifies alone and says where its chain starts", () => {
    const { files } = rotatedLog(40);
    const middle = files[1]!;
    const r = verify([middle]);
    assert.equal(r.ok, true, okMsg(r));
    assert.equal(r.start?.kind, "continued");
    assert.equal(r.end, "rotated");
    assert.match(r.notes.join("\n"), /does not start in these files: .* continues it at index \d+ \(part 1\)/);
    assert.match(r.notes.join("\n"), /continues after index \d+ in a later part/);
    const newest = verify([files.at(-1)!]);
    assert.equal(newest.ok, true, okMsg(newest));
    assert.equal(newest.end, "closed");
    // --complete wants the whole chain: start through close.
    assert.equal(verify(files, { complete: true }).ok, true);
    assert.match(
      okMsg(verify([middle], { complete: true })),
      /line 1 \(index \d+\): the chain's start is not in these files/,
    );
    assert.match(
      okMsg(verify(files.slice(0, -1), { complete: true })),
      /\(expected index \d+\): the chain continues after index \d+ in a part that was not given/,
    );
  });

  it("a missing middle file, files out of order, or an edit in an old file are caught", () => {
    const { files } = rotatedLog(40);
    const gap = verify([files[0]!, files[2]!]);
    assert.equal(gap.ok, false);
    assert.equal(gap.bad?.file, files[2]);
    assert.equal(gap.bad?.line, 1);
    assert.match(gap.bad?.reason ?? "", /expected index \d+, found \d+/);
    const swapped = verify([files[1]!, files[0]!]);
    assert.equal(swapped.ok, false);
    assert.equal(swapped.bad?.file, files[0]);
    const lines = readLines(files[0]!);
    lines[3] = lines[3]!.replace('"verdict":"deny"', '"verdict":"allow"');
    writeLines(files[0]!, lines);
    const edited = verify(files);
    assert.equal(edited.bad?.file, files[0]);
    assert.equal(edited.bad?.line, 4);
    assert.equal(edited.bad?.index, 4);
    assert.match(edited.bad?.reason ?? "", /hash mismatch/);
  });

  it("a writer that reopens a file already over the limit rotates at its first record", () => {
    const path = fresh();
    const big = new AuditLog(path);
    for (let i = 1; i <= 12; i++) big.append(syntheticRecord(i));
    big.close();
    assert.ok(statSync(path).size > 8192);
    const log = new AuditLog(path, { maxBytes: 8192 });
    log.append(syntheticRecord(13));
    log.close();
    assert.deepEqual(rotatedFiles(path), [`${path}.1`, path]);
    assert.deepEqual(
      readLines(path).map((l) => JSON.parse(l).kind),
      ["audit-continue", "protected-write", "audit-close"],
    );
    const r = verify(rotatedFiles(path), { complete: true });
    assert.equal(r.ok, true, okMsg(r));
  });

  it("keeps only `keep` rotated files; what is left still verifies", () => {
    const { path, files } = rotatedLog(60, 2);
    assert.deepEqual(files, [`${path}.2`, `${path}.1`, path]);
    assert.equal(existsSync(`${path}.3`), false);
    const r = verify(files);
    assert.equal(r.ok, true, okMsg(r));
    assert.equal(r.start?.kind, "continued");
  });

  it("a new writer after a crash between rotating and starting the next file continues the chain", () => {
    const { path, files } = rotatedLog(40);
    // Keep only the oldest file, as FILE.1, ending with its rotate record; no FILE.
    for (const f of files.slice(1)) rmSync(f);
    const oldest = files[0]!;
    writeFileSync(`${path}.1`, readFileSync(oldest));
    if (oldest !== `${path}.1`) rmSync(oldest);
    const log = new AuditLog(path, { maxBytes: 8192 });
    log.append(syntheticRecord(99));
    log.close();
    const kinds = readLines(path).map((l) => JSON.parse(l).kind);
    assert.deepEqual(kinds.slice(0, 2), ["audit-continue", "audit-reopen"]);
    const r = verify([`${path}.1`, path]);
    assert.equal(r.ok, true, okMsg(r));
    assert.match(r.notes.join("\n"), /did not close the log/);
  });
});
