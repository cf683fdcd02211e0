import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { DEFAULT_POLICY } from "../../src/decide/policy.js";
import { GuardvisorError } from "../../src/errors.js";
import { loadPolicyFile, POLICY_MAX_BYTES, parsePolicyText } from "../../src/policy/load.js";
import { resolvePolicy } from "../../src/policy/resolve.js";
import { FIXTURES, SHIPPED, testKernel } from "./policy-fixtures.js";

const fails = (text: string, message: string | RegExp, name = "p.yaml") =>
  assert.throws(
    () => parsePolicyText(text, name),
    (e: unknown) =>
      e instanceof GuardvisorError &&
      e.code === "CONFIG_INVALID" &&
      (typeof message === "string" ? e.message === message : message.test(e.message)),
  );

describe("policy files: loading", () => {
  it("loads every shipped policy", () => {
    for (const f of ["default.yaml", "legit-patch.yaml", "audit-mode.yaml"]) {
      const p = loadPolicyFile(join(SHIPPED, f));
      assert.equal(p.spec.version, 1);
      assert.equal(p.name, f.replace(/\.yaml$/, ""));
    }
  });

  it("policies/default.yaml is the built-in default policy", () => {
    const p = resolvePolicy(loadPolicyFile(join(SHIPPED, "default.yaml")), testKernel());
    assert.deepEqual(p, DEFAULT_POLICY);
  });

  it("reads JSON with the same schema and positions", () => {
    const p = loadPolicyFile(join(FIXTURES, "good", "everything.json"));
    assert.equal(p.name, "everything-json");
    assert.deepEqual(p.spec.rules?.[1]?.vector, [13, 14]);
    fails('{"version": 1,\n  "mode": "loud"}', 'p.json:2:11: mode: "loud" is not one of enforce, audit', "p.json");
    fails(
      '{"version": 1, "mode": "audit", "mode": "enforce"}',
      'p.json:1:33: (syntax): duplicate key "mode"',
      "p.json",
    );
    // Valid JSON is never refused as a syntax error, even where YAML would differ.
    assert.equal(parsePolicyText('{\n\t"version": 1,\n\t"name": "tabs"\n}', "p.json").name, "tabs");
  });

  it("accepts one value where a list is allowed, and names case-insensitively", () => {
    const p = parsePolicyText(
      "version: 1\nrules:\n  - {name: a, event: cpu-exception, vector: '#gp', cpl: 3, action: log}\n" +
        "objects:\n  msrs: [{msr: ia32_lstar}]\n  pinned-cr: {cr4: smep}\n",
      "p.yaml",
    );
    assert.deepEqual(p.spec.rules?.[0]?.event, ["cpu-exception"]);
    assert.deepEqual(p.spec.rules?.[0]?.vector, [13]);
    assert.deepEqual(p.spec.rules?.[0]?.cpl, [3]);
    assert.equal(p.spec.objects?.msrs[0]?.msr, 0xc0000082);
    assert.equal(p.spec.objects?.msrs[0]?.action, "deny");
    assert.deepEqual(p.spec.objects?.["pinned-cr"]?.cr4, ["SMEP"]);
    assert.equal(p.spec.mode, "enforce");
  });

  it("names a file without a name after the file", () => {
    assert.equal(parsePolicyText("version: 1\n", "dir/strict.yaml").name, "strict");
    assert.equal(parsePolicyText("version: 1\nname: x\n", "dir/strict.yaml").name, "x");
  });

  it("points at the field: nested paths, a single value given for a list, the key of an unknown field", () => {
    fails(
      "version: 1\nrules:\n  - name: a\n    event: protected-writes\n    action: deny\n",
      'p.yaml:4:12: rules[0].event: "protected-writes" is not one of protected-write, msr-write, cpu-exception, crash, hang, integrity',
    );
    fails(
      "version: 1\nobjects:\n  idt:\n    seal: yes\n",
      'p.yaml:4:11: objects.idt.seal: expected a boolean, got "yes"',
    );
    fails("version: 1\nrules:\n  - action: deny\n", "p.yaml:3:5: rules[0].name: required field");
    fails(
      "version: 1\nregions:\n  r: {section: .text, colour: red}\n",
      /^p\.yaml:3:23: regions\.r\.colour: unknown field/,
    );
    fails("version: 1\nregions:\n  bad name: {section: .text}\n", /^p\.yaml:3:3: regions\["bad name"\]: /);
    fails("version: 1\nname: -x\n", /^p\.yaml:2:7: name: "-x" is not valid: a name is/);
    fails("version: 1\nrestart: {limit: 2.5}\n", "p.yaml:2:18: restart.limit: expected an integer, got 2.5");
  });

  it("reports the error that comes first in the file", () => {
    fails("version: 2\nfrobnicate: 1\nmode: x\n", "p.yaml:1:10: version: must be 1, got 2");
    fails("mode: x\nversion: 1\nfrobnicate: 1\n", 'p.yaml:1:7: mode: "x" is not one of enforce, audit');
    // A misspelt field is reported as unknown, not as the missing field it was meant to be.
    fails("verison: 1\n", /^p\.yaml:1:1: verison: unknown field/);
    fails("frobnicate: 1\n", /^p\.yaml:1:1: frobnicate: unknown field/);
    fails("version: 1\nrules:\n  - {name: a, actoin: deny}\n", /^p\.yaml:3:15: rules\[0\]\.actoin: unknown field/);
  });

  it("rejects files that are not a mapping, and odd YAML", () => {
    fails("- a\n- b\n", "p.yaml:1:1: (document): expected a mapping with version, rules, ...; got a list");
    fails("just text\n", /^p\.yaml:1:1: \(document\): expected a mapping .* got "just text"$/);
    fails("# only a comment\n", /^p\.yaml:1:1: \(document\): the file is empty/);
    fails("version: 1\nname: !custom x\n", /^p\.yaml:2:7: \(syntax\): Unresolved tag: !custom$/);
    fails("version: 1\n? [a, b]\n: 1\n", "p.yaml:2:3: (document): a mapping key must be a plain word");
    fails("version: 1\n__proto__: {polluted: true}\n", /^p\.yaml:2:1: __proto__: unknown field/);
    fails(
      "version: 1\nregions:\n  __proto__: {section: .text}\n",
      'p.yaml:3:3: regions.__proto__: "__proto__" is reserved',
    );
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it("follows aliases but refuses alias bombs and deep nesting", () => {
    const p = parsePolicyText(
      "version: 1\nrules:\n  - {name: a, event: &ev [crash, hang], action: restart}\n  - {name: b, event: *ev, action: halt}\n",
      "p.yaml",
    );
    assert.deepEqual(p.spec.rules?.[1]?.event, ["crash", "hang"]);
    const anchored = parsePolicyText("version: 1\ndescription: &d hello\nname: *d\n", "p.yaml");
    assert.equal(anchored.name, "hello");
    let bomb = "version: 1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
    for (let i = 1; i < 8; i++)
      bomb += `a${i}: &a${i} [${Array(10)
        .fill(`*a${i - 1}`)
        .join(", ")}]\n`;
    fails(bomb, /more than 100000 values/);
    fails(`version: 1\ndescription: ${"[".repeat(60)}${"]".repeat(60)}\n`, /nested more than 32 levels deep/);
  });

  it("refuses files over the size limit and names unreadable files", () => {
    const dir = mkdtempSync(join(tmpdir(), "gv-policy-"));
    try {
      const big = join(dir, "big.yaml");
      writeFileSync(big, `version: 1\ndescription: x\n${"#".repeat(POLICY_MAX_BYTES)}\n`);
      assert.throws(() => loadPolicyFile(big), /big\.yaml: the file is \d+ bytes, at most 1048576/);
      assert.throws(
        () => loadPolicyFile(join(dir, "missing.yaml")),
        (e: unknown) =>
          e instanceof GuardvisorError && e.code === "IO" && /missing\.yaml: no such file/.test(e.message),
      );
      assert.throws(
        () => loadPolicyFile(dir),
        (e: unknown) => e instanceof GuardvisorError && e.code === "IO",
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps the shipped policies' comments honest: default.yaml lists the fail-safe defaults", () => {
    const text = readFileSync(join(SHIPPED, "default.yaml"), "utf8");
    for (const [k, v] of Object.entries(DEFAULT_POLICY.defaults)) assert.match(text, new RegExp(`\\n  ${k}: ${v}\\n`));
  });
});
