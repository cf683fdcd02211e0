import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { GuardvisorError } from "../../src/errors.js";
import { parsePolicyText } from "../../src/policy/load.js";
import { resolvePolicy } from "../../src/policy/resolve.js";
import { FIXTURES, testKernel } from "./policy-fixtures.js";

interface Expected {
  /** Where the error must come from: loading the file, or resolving it against the test kernel. */
  stage: "load" | "resolve";
  error: string;
  /** "prefix": the message starts with `error` (the rest is the JSON parser's own words). */
  match?: "prefix";
}

const dir = join(FIXTURES, "bad");
const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as Record<string, Expected>;
const files = readdirSync(dir).filter((f) => f !== "expected.json");
const kernel = testKernel();

function errorOf(f: () => unknown): GuardvisorError {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof GuardvisorError, `not a GuardvisorError: ${String(e)}`);
    return e;
  }
  assert.fail("no error");
}

describe("bad policy corpus", () => {
  it("has an expected error for every file, and enough files", () => {
    assert.deepEqual(files.sort(), Object.keys(expected).sort());
    assert.ok(files.length >= 12, `${files.length} bad policies`);
  });

  for (const name of files) {
    const want = expected[name]!;
    it(`${name} gives its expected error`, () => {
      const text = readFileSync(join(dir, name), "utf8");
      const e = errorOf(() => {
        const file = parsePolicyText(text, name);
        if (want.stage === "load") assert.fail(`${name} loaded; expected a load error`);
        resolvePolicy(file, kernel);
      });
      assert.equal(e.code, "CONFIG_INVALID");
      assert.doesNotMatch(e.message, /\n/);
      if (want.match === "prefix") assert.ok(e.message.startsWith(want.error), e.message);
      else assert.equal(e.message, want.error);
      assert.match(e.message, new RegExp(`^${name.replace(/\./g, "\\.")}:\\d+:\\d+: `));
    });
  }
});
