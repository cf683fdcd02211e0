import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { evaluate } from "../../src/decide/evaluate.js";
import { compilePolicy, DEFAULT_POLICY } from "../../src/decide/policy.js";
import { decodeRuleTable } from "../../src/decide/rule-table.js";
import { emptyContext } from "../../src/model/context.js";
import { compilePolicyFile } from "../../src/policy/compile-file.js";
import { cli } from "../support/cli.js";
import { DELTA, FIXTURES, GV_KERNEL, SHIPPED, SYMBOLS, testKernelBytes } from "./policy-fixtures.js";

/** One line on stderr, prefixed, no stack trace. */
function assertOneLineError(stderr: string, pattern: RegExp): void {
  const lines = stderr.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, 1, `stderr: ${stderr}`);
  assert.match(lines[0]!, /^guardvisor: error: /);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(stderr, /\n\s+at /);
}

describe("guardvisor policy (CLI)", () => {
  let dir = "";
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "gv-policy-cli-"));
    writeFileSync(join(dir, "kernel.elf"), testKernelBytes());
    writeFileSync(join(dir, "kernel-no-patch.elf"), testKernelBytes({ withLegitPatch: false }));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("check: an unknown top-level key exits 2 with one line naming it", () => {
    const file = join(FIXTURES, "bad", "frobnicate.yaml");
    const r = cli(["policy", "check", file]);
    assert.equal(r.status, 2);
    assert.equal(r.stdout, "");
    assertOneLineError(r.stderr, /frobnicate\.yaml:3:1: frobnicate: unknown field/);
    // Even in a file that has nothing else.
    const bare = join(dir, "bare.yaml");
    writeFileSync(bare, "frobnicate: 1\n");
    const b = cli(["policy", "check", bare]);
    assert.equal(b.status, 2);
    assertOneLineError(b.stderr, /bare\.yaml:1:1: frobnicate: unknown field/);
  });

  it("check: a good file exits 0; with --kernel it is resolved too", () => {
    const ok = cli(["policy", "check", join(SHIPPED, "legit-patch.yaml")]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(
      ok.stdout,
      /legit-patch\.yaml: ok: policy legit-patch, mode enforce, 2 rules, 1 exception, 1 region\n$/,
    );
    const missing = cli([
      "policy",
      "check",
      join(SHIPPED, "legit-patch.yaml"),
      "--kernel",
      join(dir, "kernel-no-patch.elf"),
    ]);
    assert.equal(missing.status, 2);
    assertOneLineError(
      missing.stderr,
      /legit-patch\.yaml:\d+:\d+: exceptions\[0\]\.originator: no symbol gv_legit_patch in kernel .*kernel-no-patch\.elf$/,
    );
  });

  it("compile -o writes the rule table; loading it gives the compiled rules back", () => {
    const out = join(dir, "legit.gvrt");
    const kernel = join(dir, "kernel.elf");
    const r = cli(["policy", "compile", join(SHIPPED, "legit-patch.yaml"), "--kernel", kernel, "-o", out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stdout,
      /legit\.gvrt: policy legit-patch \(mode enforce, 4 rules\), \d+ bytes, hash 0x[0-9a-f]{8}\n$/,
    );
    const table = new Uint8Array(readFileSync(out));
    const expected = compilePolicyFile(join(SHIPPED, "legit-patch.yaml"), kernel);
    assert.deepEqual(table, expected.compiled.table);
    const back = decodeRuleTable(table);
    assert.deepEqual(back.rules, expected.compiled.rules);
    // The loaded table still carries the allowlist.
    const loaded = { ...expected.compiled, rules: back.rules, defaults: back.defaults };
    const w = emptyContext("protected-write");
    w.regionId = 1;
    w.gpa = SYMBOLS.gv_patch_target.value + 1 - DELTA;
    w.data = Uint8Array.of(2, 0, 0, 0);
    w.regs.rip = BigInt(SYMBOLS.gv_legit_patch.value + 8);
    assert.equal(evaluate(loaded, w).verdict, "allow");
    w.regs.rip = BigInt(SYMBOLS.kmain.value);
    assert.equal(evaluate(loaded, w).verdict, "deny");
    // The routine itself may not write outside its patch site.
    w.regs.rip = BigInt(SYMBOLS.gv_legit_patch.value + 8);
    w.gpa = SYMBOLS.gv_check_credentials.value - DELTA;
    assert.equal(evaluate(loaded, w).verdict, "deny");
  });

  it("compile defaults to the built gv-kernel", (t) => {
    if (!existsSync(GV_KERNEL)) {
      t.skip("guest/out/gv-kernel.elf is not built");
      return;
    }
    const out = join(dir, "default.gvrt");
    const r = cli(["policy", "compile", join(SHIPPED, "default.yaml"), "-o", out]);
    assert.equal(r.status, 0, r.stderr);
    const regions = compilePolicyFile(join(SHIPPED, "default.yaml")).regions;
    assert.deepEqual(new Uint8Array(readFileSync(out)), compilePolicy(DEFAULT_POLICY, regions).table);
  });

  it("compile: bad usage and unreadable files exit 2 with one line", () => {
    const noOut = cli(["policy", "compile", join(SHIPPED, "default.yaml")]);
    assert.equal(noOut.status, 2);
    assertOneLineError(noOut.stderr, /required option '-o, --output <out>'/);
    const missing = cli(["policy", "compile", join(dir, "nope.yaml"), "-o", join(dir, "x")]);
    assert.equal(missing.status, 2);
    assertOneLineError(missing.stderr, /cannot read policy .*nope\.yaml: no such file$/);
  });
});
