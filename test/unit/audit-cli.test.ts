import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AuditLog, rotatedFiles } from "../../src/audit/log.js";
import { readLines, syntheticRecord, tempDir, writeLines } from "../support/audit.js";
import { cli } from "../support/cli.js";

const dir = tempDir();
let n = 0;

function makeLog(events = 3, opts = {}): string {
  const path = join(dir, `cli${++n}.jsonl`);
  const log = new AuditLog(path, opts);
  for (let i = 1; i <= events; i++) log.append(syntheticRecord(i));
  log.close();
  return path;
}

describe("audit: CLI", () => {
  it("audit verify: exit 0 on a good log, with the record count and head", () => {
    const path = makeLog();
    const r = cli(["audit", "verify", path]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^ok: 5 records, index 1–5, chain [0-9a-f]{32}, from its start to its close$/m);
    assert.match(r.stdout, /^head: [0-9a-f]{64}$/m);
    assert.equal(r.stderr, "");
  });

  it("audit verify: exit 1 naming the first bad record after one character changed in the first record", () => {
    const path = makeLog();
    const lines = readLines(path);
    lines[0] = lines[0]!.replace('"part":0', '"part":1');
    writeLines(path, lines);
    const r = cli(["audit", "verify", path]);
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(
      r.stdout,
      new RegExp(`^FAILED: first bad record: ${path.replace(/[.]/g, "\\.")} line 1 \\(index 1\\): hash mismatch`, "m"),
    );
  });

  it("audit verify: deleted, reordered and duplicated lines", () => {
    const cases: [string, (l: string[]) => void, RegExp][] = [
      ["deleted", (l) => l.splice(2, 1), /line 3 \(index 4\): expected index 3, found 4/],
      ["reordered", (l) => l.splice(1, 2, l[2]!, l[1]!), /line 2 \(index 3\): expected index 2, found 3/],
      ["duplicated", (l) => l.splice(2, 0, l[1]!), /line 3 \(index 2\): duplicate of .* line 2/],
      ["tail cut", (l) => l.splice(-1, 1), /line 5 \(expected index 5\): no close record after index 4/],
    ];
    for (const [what, edit, want] of cases) {
      const path = makeLog();
      const lines = readLines(path);
      edit(lines);
      writeLines(path, lines);
      const r = cli(["audit", "verify", path]);
      assert.equal(r.status, 1, `${what}: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, want, what);
    }
  });

  it("audit verify --json, --allow-open, --anchor, and several files", () => {
    const path = makeLog(30, { maxBytes: 8192 });
    const files = rotatedFiles(path);
    assert.ok(files.length >= 2);
    const j = cli(["audit", "verify", "--json", ...files]);
    assert.equal(j.status, 0, j.stderr);
    const report = JSON.parse(j.stdout);
    assert.equal(report.ok, true);
    assert.equal(report.files.length, files.length);
    assert.equal(cli(["audit", "verify", "--anchor", report.head, ...files]).status, 0);
    const rotated = cli(["audit", "verify", "--rotated", "--complete", path]);
    assert.equal(rotated.status, 0, rotated.stdout);
    for (const f of files) assert.ok(rotated.stdout.includes(`${f}: `), `${f} listed`);
    assert.equal(
      cli(["audit", "verify", "--complete", path]).status,
      1,
      "the newest file alone is not the whole chain",
    );
    assert.match(cli(["audit", "show", "--rotated", path]).stdout, /chain: ok, records 1–\d+, closed/);
    const wrong = cli(["audit", "verify", "--anchor", "0".repeat(64), ...files]);
    assert.equal(wrong.status, 1);
    assert.match(wrong.stdout, /no record has the anchor hash/);
    const open = makeLog(1);
    writeLines(open, readLines(open).slice(0, -1));
    assert.equal(cli(["audit", "verify", open]).status, 1);
    const allowed = cli(["audit", "verify", "--allow-open", open]);
    assert.equal(allowed.status, 0, allowed.stdout);
    assert.match(allowed.stdout, /note: no close record after index 2/);
  });

  it("audit verify: bad input exits 2 with a one-line error", () => {
    const missing = cli(["audit", "verify", join(dir, "nope.jsonl")]);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /^guardvisor: error: cannot read audit log .*nope\.jsonl: no such file\n$/);
    assert.equal(cli(["audit", "verify", "--rotated", makeLog(), makeLog()]).status, 2);
    const anchor = cli(["audit", "verify", "--anchor", "xyz", makeLog()]);
    assert.equal(anchor.status, 2);
    assert.match(anchor.stderr, /^guardvisor: error: --anchor: must be 64 hex digits/);
    const noArgs = cli(["audit", "verify"]);
    assert.equal(noArgs.status, 2);
    assert.match(noArgs.stderr, /^guardvisor: error: missing required argument/);
    assert.equal(cli(["audit", "verify", "--help"]).status, 0);
    assert.equal(cli(["audit"]).status, 2);
  });

  it("audit show: an aligned plain-text table with the chain status", () => {
    const path = makeLog(2);
    const log = new AuditLog(path);
    log.append({ kind: "hm-restart", vm: "hm", reason: "no heartbeat\u001b[31m" });
    log.close();
    const r = cli(["audit", "show", path]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(!r.stdout.includes("\u001b"), "no colour or raw control characters when not a TTY");
    const lines = r.stdout.split("\n");
    assert.match(lines[0]!, /^#\s+time\s+vm\s+seq\s+kind\s+where\s+verdict\s+decided by\s+latency\s+instruction$/);
    assert.match(lines[1]!, /^-+( +-+)+$/);
    const row = lines.find((l) => l.includes("protected-write"))!;
    assert.match(
      row,
      /^2 +2025-01-02 03:04:05\.001 +guest0 +1 +protected-write +\.text gv_check_credentials\+0x1 +deny +vmm +13\.3 us +mov qword ptr \[rax\],rdx$/,
    );
    assert.ok(
      lines.some((l) => /hm-restart +no heartbeat\\x1b\[31m /.test(l)),
      "reason shown, escape escaped",
    );
    // Columns line up: "kind" starts at the same place in every row.
    const col = lines[0]!.indexOf("kind");
    for (const l of lines.slice(2).filter((l) => /audit-|protected-write|hm-restart/.test(l))) {
      assert.match(l.slice(col), /^(audit-|protected-write|hm-restart)/, l);
    }
    assert.match(r.stdout, /\nchain: ok, records 1–7, closed; head [0-9a-f]{64}\n$/);
  });

  it("audit show: a broken chain is shown, with where it breaks", () => {
    const path = makeLog(2);
    const lines = readLines(path);
    lines[2] = lines[2]!.replace('"verdict":"deny"', '"verdict":"allow"');
    lines.splice(3, 0, "not json");
    writeLines(path, lines);
    const r = cli(["audit", "show", path]);
    assert.equal(r.status, 0);
    assert.match(r.stdout, /\(.* line 4: not a JSON record\)/);
    assert.match(r.stdout, /\nchain: BROKEN at .* line 3 \(index 3\): hash mismatch/);
  });
});
