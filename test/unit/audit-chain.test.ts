import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  type AuditFile,
  describeBad,
  genesisHash,
  parseLine,
  sealRecord,
  splitLines,
  verifyChain,
} from "../../src/audit/chain.js";
import { AuditLog } from "../../src/audit/log.js";
import { readLines, syntheticRecord, tempDir } from "../support/audit.js";

const dir = tempDir();
let n = 0;

/** A closed log: audit-start, `events` event records, audit-close. Returns its lines. */
function makeLog(events = 4): { path: string; lines: string[] } {
  const path = join(dir, `log${++n}.jsonl`);
  const log = new AuditLog(path);
  for (let i = 1; i <= events; i++) log.append(syntheticRecord(i));
  log.close();
  return { path, lines: readLines(path) };
}

const asFile = (lines: string[], name = "A.jsonl", newline = true): AuditFile => ({
  name,
  data: Buffer.from(lines.join("\n") + (newline && lines.length ? "\n" : "")),
});

function verifyLines(lines: string[]) {
  return verifyChain([asFile(lines)]);
}

function assertBad(lines: string[], line: number, index: number | null, reason: RegExp) {
  const r = verifyLines(lines);
  assert.equal(r.ok, false, "verification should fail");
  assert.ok(r.bad);
  assert.equal(r.bad.file, "A.jsonl");
  assert.equal(r.bad.line, line, describeBad(r.bad));
  assert.equal(r.bad.index, index, describeBad(r.bad));
  assert.match(r.bad.reason, reason);
}

describe("audit: hash chain", () => {
  it("a written log verifies from its start to its close", () => {
    const { lines } = makeLog(4);
    assert.equal(lines.length, 6);
    const r = verifyLines(lines);
    assert.equal(r.ok, true, r.bad ? describeBad(r.bad) : "");
    assert.equal(r.records, 6);
    assert.deepEqual([r.firstIndex, r.lastIndex], [1, 6]);
    assert.deepEqual(r.start, { kind: "genesis" });
    assert.equal(r.end, "closed");
    assert.match(r.head ?? "", /^[0-9a-f]{64}$/);
    const kinds = lines.map((l) => JSON.parse(l).kind);
    assert.deepEqual(kinds, [
      "audit-start",
      "protected-write",
      "protected-write",
      "protected-write",
      "protected-write",
      "audit-close",
    ]);
  });

  it("every line links to the one before, and the first to the chain's genesis", () => {
    const { lines } = makeLog(2);
    const recs = lines.map((l) => JSON.parse(l));
    assert.equal(recs[0].prevHash, genesisHash(recs[0].chain));
    for (let i = 1; i < recs.length; i++) {
      assert.equal(recs[i].index, i + 1);
      assert.equal(recs[i].prevHash, recs[i - 1].hash);
      assert.equal(recs[i].chain, recs[0].chain);
    }
    assert.equal(recs.at(-1).records, 2, "the close record counts the events");
    // hash is the last member and covers the rest of the line's bytes.
    const p = parseLine(Buffer.from(lines[1]!));
    assert.ok(p.ok && p.record.hashOk);
    assert.match(
      lines[1]!,
      /^\{"chain":"[0-9a-f]{32}","index":2,"prevHash":"[0-9a-f]{64}",.*,"hash":"[0-9a-f]{64}"\}$/,
    );
  });

  it("sealRecord is deterministic and parseLine recomputes the same hash", () => {
    const link = { chain: "ab".repeat(16), index: 7, prevHash: "cd".repeat(32) };
    const a = sealRecord(link, { kind: "hm-restart", vm: "hm", note: "é ✓ \u2028" });
    const b = sealRecord(link, { kind: "hm-restart", vm: "hm", note: "é ✓ \u2028" });
    assert.deepEqual(a, b);
    const p = parseLine(Buffer.from(a.line));
    assert.ok(p.ok);
    assert.equal(p.record.hash, a.hash);
    assert.equal(p.record.hashOk, true);
  });

  it("one character changed in the first record: fails naming line 1, index 1", () => {
    const { lines } = makeLog();
    const edited = [...lines];
    edited[0] = edited[0]!.replace('"kind":"audit-start"', '"kind":"audit-starT"');
    assertBad(edited, 1, 1, /hash mismatch/);
  });

  it("one character changed in an event: fails naming that record", () => {
    const { lines } = makeLog();
    const edited = [...lines];
    assert.match(edited[2]!, /"verdict":"deny"/);
    edited[2] = edited[2]!.replace('"verdict":"deny"', '"verdict":"deNy"');
    assertBad(edited, 3, 3, /hash mismatch: the record was changed/);
    // a digit of a register, and of the hash itself
    const reg = [...lines];
    reg[2] = reg[2]!.replace('"rdx":"0x9090909090909090"', '"rdx":"0x9090909090909091"');
    assertBad(reg, 3, 3, /hash mismatch/);
    const h = [...lines];
    const hx = JSON.parse(h[3]!).hash as string;
    h[3] = h[3]!.replace(hx, (hx[0] === "0" ? "1" : "0") + hx.slice(1));
    assertBad(h, 4, 4, /hash mismatch/);
  });

  it("a change that breaks the JSON is named too", () => {
    const { lines } = makeLog();
    const edited = [...lines];
    edited[1] = edited[1]!.replace('"vm":"guest0"', '"vm":"guest0');
    assertBad(edited, 2, null, /malformed: not valid JSON/);
    assert.match(describeBad(verifyLines(edited).bad!), /^A\.jsonl line 2 \(expected index 2\): malformed/);
  });

  it("whitespace edits are changes: inside a line, at its end, and blank lines", () => {
    const { lines } = makeLog();
    const spaced = [...lines];
    spaced[2] = spaced[2]!.replace('"vm":"guest0"', '"vm": "guest0"');
    assertBad(spaced, 3, 3, /hash mismatch/);
    const trailing = [...lines];
    trailing[2] = `${trailing[2]} `;
    assertBad(trailing, 3, null, /malformed/);
    const crlf = [...lines];
    crlf[2] = `${crlf[2]}\r`;
    assertBad(crlf, 3, null, /malformed/);
    const blank = [...lines];
    blank.splice(2, 0, "");
    assertBad(blank, 3, null, /empty line/);
  });

  it("a deleted line is named: the record after the gap", () => {
    const { lines } = makeLog();
    const del = [...lines];
    del.splice(2, 1); // remove index 3
    assertBad(del, 3, 4, /expected index 3, found 4: the record with index 3 is missing/);
    const two = [...lines];
    two.splice(1, 2);
    assertBad(two, 2, 4, /indexes 2–3 are missing/);
  });

  it("deleting the first line is caught", () => {
    const { lines } = makeLog();
    assertBad(lines.slice(1), 1, 2, /does not start a chain or a chain part: the records before it were removed/);
  });

  it("reordered lines are named at the first line out of place", () => {
    const { lines } = makeLog();
    const swapped = [...lines];
    [swapped[2], swapped[3]] = [swapped[3]!, swapped[2]!];
    assertBad(swapped, 3, 4, /expected index 3, found 4/);
    const back = [...lines];
    back.push(back.splice(1, 1)[0]!); // index 2 moved to the end
    assertBad(back, 2, 3, /expected index 2, found 3/);
  });

  it("a duplicated line is named as a duplicate", () => {
    const { lines } = makeLog();
    const dup = [...lines];
    dup.splice(3, 0, dup[2]!);
    assertBad(dup, 4, 3, /duplicate of A\.jsonl line 3 \(index 3\)/);
    const far = [...lines];
    far.splice(4, 0, far[1]!);
    assertBad(far, 5, 2, /duplicate of A\.jsonl line 2/);
  });

  it("renumbering a record without re-hashing is caught; re-linking a forged record breaks the next", () => {
    const { lines } = makeLog();
    const del = [...lines];
    del.splice(2, 1);
    // Recompute the edited record's own hash: its prevHash still names the removed one.
    const o = JSON.parse(del[2]!);
    delete o.hash;
    o.index = 3;
    const forged = sealRecord({ chain: o.chain, index: 3, prevHash: o.prevHash }, stripLink(o));
    del[2] = forged.line;
    assertBad(del, 3, 3, /prevHash does not match the hash of the record before it \(A\.jsonl line 2\)/);
  });

  it("a record from another log is named", () => {
    const a = makeLog(2).lines;
    const b = makeLog(2).lines;
    const mixed = [...a];
    mixed[2] = b[2]!;
    assertBad(mixed, 3, 3, /belongs to chain [0-9a-f]{32}, not [0-9a-f]{32}/);
  });

  it("a cut-off tail: no close record, or half a line", () => {
    const { lines } = makeLog();
    const r = verifyLines(lines.slice(0, -2));
    assert.equal(r.ok, false);
    assert.equal(r.bad?.line, 5);
    assert.equal(r.bad?.index, null);
    assert.equal(r.bad?.expectedIndex, 5);
    assert.match(r.bad?.reason ?? "", /no close record after index 4: the end of the log is missing/);
    assert.equal(r.records, 4, "what is there still verified");
    const open = verifyChain([asFile(lines.slice(0, -2))], { allowOpen: true });
    assert.equal(open.ok, true);
    assert.equal(open.end, "open");
    assert.match(open.notes.join(" "), /no close record after index 4/);
    const half = [...lines.slice(0, -1), lines.at(-1)!.slice(0, 40)];
    const h = verifyChain([asFile(half, "A.jsonl", false)]);
    assert.equal(h.ok, false);
    assert.equal(h.bad?.line, 6);
    assert.match(h.bad?.reason ?? "", /incomplete last line/);
  });

  it("an empty file, or anything but a log, fails without throwing", () => {
    assert.match(verifyChain([{ name: "A.jsonl", data: Buffer.alloc(0) }]).bad?.reason ?? "", /empty file/);
    for (const junk of ["hello\n", "{}\n", "[1,2]\n", '{"hash":"x"}\n', "\0\xff\n".repeat(3)]) {
      const r = verifyChain([{ name: "A.jsonl", data: Buffer.from(junk, "latin1") }]);
      assert.equal(r.ok, false);
      assert.equal(r.bad?.line, 1);
    }
  });

  it("anything after the close record other than a reopen is caught", () => {
    const { lines } = makeLog(1);
    const extra = sealRecord(
      { chain: JSON.parse(lines[0]!).chain, index: 4, prevHash: JSON.parse(lines[2]!).hash },
      { kind: "protected-write", time: "2025-01-01T00:00:00.000Z" },
    );
    assertBad([...lines, extra.line], 4, 4, /follows the close record at A\.jsonl line 3; only audit-reopen may/);
  });

  it("--anchor: a record hash saved earlier must still be in the chain", () => {
    const path = join(dir, "anchored.jsonl");
    const log = new AuditLog(path);
    log.append(syntheticRecord(1));
    log.close();
    const anchor = log.head;
    const more = new AuditLog(path);
    more.append(syntheticRecord(2));
    more.close();
    const lines = readLines(path);
    const r = verifyChain([asFile(lines)], { anchor: anchor.toUpperCase() });
    assert.equal(r.ok, true, r.bad ? describeBad(r.bad) : "");
    assert.deepEqual(r.anchor, { file: "A.jsonl", line: 3, index: 3 });
    assert.match(r.notes.join("\n"), /anchor is the record at A\.jsonl line 3 \(index 3\)/);
    // A rewrite of the whole log from the first record on verifies by itself, but loses the anchor.
    const rewritten = rehashFrom(lines, 1, (o) => {
      if (o.seq === 1) o.verdict = "allow";
    });
    assert.equal(verifyChain([asFile(rewritten)]).ok, true, "a full rewrite is a valid chain");
    const caught = verifyChain([asFile(rewritten)], { anchor });
    assert.equal(caught.ok, false);
    assert.match(caught.bad?.reason ?? "", /no record has the anchor hash/);
  });

  it("any one byte changed anywhere is caught at its own line, and verify never throws", () => {
    const { lines } = makeLog(3);
    const data = Buffer.from(lines.map((l) => `${l}\n`).join(""));
    const lineOf = (pos: number) => data.subarray(0, pos).toString("latin1").split("\n").length;
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let i = 0; i < 400; i++) {
      const pos = rand(data.length);
      if (data[pos] === 0x0a) continue;
      const copy = Buffer.from(data);
      let byte = rand(256);
      while (byte === data[pos] || byte === 0x0a) byte = (byte + 1) % 256;
      copy[pos] = byte;
      const r = verifyChain([{ name: "A.jsonl", data: copy }]);
      assert.equal(r.ok, false, `byte ${pos} changed to ${byte}`);
      assert.equal(r.bad?.line, lineOf(pos), `byte ${pos}: ${r.bad ? describeBad(r.bad) : ""}`);
    }
  });

  it("deeply nested or huge junk lines do not throw", () => {
    const deep = `${"[".repeat(200_000)}${"]".repeat(200_000)}\n`;
    const r = verifyChain([{ name: "A.jsonl", data: Buffer.from(deep) }]);
    assert.equal(r.ok, false);
    const fake = `{"a":${"[".repeat(100_000)}${"]".repeat(100_000)},"hash":"${"0".repeat(64)}"}\n`;
    assert.equal(verifyChain([{ name: "A.jsonl", data: Buffer.from(fake) }]).ok, false);
  });

  it("splitLines keeps a final line without newline as partial", () => {
    assert.deepEqual(
      splitLines(Buffer.from("a\nb")).lines.map((l) => l.toString()),
      ["a", "b"],
    );
    assert.equal(splitLines(Buffer.from("a\nb")).partial, true);
    assert.equal(splitLines(Buffer.from("a\n")).partial, false);
  });

  it("the files on disk round-trip", () => {
    const { path } = makeLog(3);
    const r = verifyChain([{ name: path, data: readFileSync(path) }]);
    assert.equal(r.ok, true);
    writeFileSync(path, readFileSync(path, "utf8").replace("guest0", "guest1"));
    const bad = verifyChain([{ name: path, data: readFileSync(path) }]);
    assert.equal(bad.ok, false);
    assert.equal(bad.bad?.line, 2);
  });
});

function stripLink(o: Record<string, unknown>): Record<string, unknown> {
  const { chain: _c, index: _i, prevHash: _p, hash: _h, ...rest } = o;
  return rest;
}

/** Edit records from line `from` (1-based) on and recompute every hash after it: a rewrite by someone who can write the file. */
function rehashFrom(lines: string[], from: number, edit: (o: Record<string, unknown>) => void): string[] {
  const out = lines.slice(0, from - 1);
  let prev = from > 1 ? (JSON.parse(out.at(-1)!).hash as string) : undefined;
  for (const l of lines.slice(from - 1)) {
    const o = JSON.parse(l) as Record<string, unknown>;
    edit(o);
    const link = { chain: o.chain as string, index: o.index as number, prevHash: prev ?? (o.prevHash as string) };
    const sealed = sealRecord(link, stripLink(o));
    out.push(sealed.line);
    prev = sealed.hash;
  }
  return out;
}
