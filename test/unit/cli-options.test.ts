/** Command-line options that are checked before anything runs (no KVM needed). */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ABI_CONSTANTS as C } from "../../src/abi/guest-abi.js";
import { parseInject } from "../../src/cli/main.js";
import { cli } from "../support/cli.js";

describe("--inject-hm-fault", () => {
  it("parses a mode and an optional request number", () => {
    assert.deepEqual(parseInject("crash"), { mode: C.INJECT_CRASH, at: 1, slowUs: 0 });
    assert.deepEqual(parseInject("hang@3"), { mode: C.INJECT_HANG, at: 3, slowUs: 0 });
    assert.equal(parseInject("garbage@12").mode, C.INJECT_GARBAGE);
    const slow = parseInject("slow@2");
    assert.equal(slow.mode, C.INJECT_SLOW);
    assert.ok(slow.slowUs > 100_000, "late enough to miss the answer deadline");
  });

  for (const bad of ["boom", "crash@0", "crash@", "crash@-1", "@1", "CRASH", "crash@1x"]) {
    it(`rejects '${bad}' with a one-line usage error naming the option`, () => {
      const r = cli(["run", "--scenario", "text-patch", "--inject-hm-fault", bad]);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /--inject-hm-fault/);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.doesNotMatch(r.stderr, /\bat .*\.js:\d+/);
    });
  }

  it("needs the hm-vm decider", () => {
    const r = cli(["run", "--scenario", "text-patch", "--decider", "vmm", "--inject-hm-fault", "crash"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--inject-hm-fault: needs --decider hm-vm/);
  });

  it("rejects --guests out of range naming the option", () => {
    const r = cli(["run", "--scenario", "text-patch", "--guests", "17"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--guests/);
  });

  it("rejects a scenario count that does not match --guests", () => {
    const r = cli(["run", "--scenario", "benign", "--scenario", "text-patch", "--guests", "3"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--guests: 3 guests but 2 scenarios/);
  });
});

describe("--hm-timeout", () => {
  for (const [cmd, bad] of [
    ["run", "0"],
    ["run", "60001"],
    ["run", "1.5"],
    ["bench", "-3"],
    ["bench", "fast"],
  ] as const) {
    it(`${cmd}: rejects '${bad}' with a one-line usage error naming the option`, () => {
      const args = cmd === "run" ? ["run", "--scenario", "text-patch"] : ["bench", "--quick"];
      const r = cli([...args, `--hm-timeout=${bad}`]);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /--hm-timeout/);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    });
  }

  it("is in both commands' help, with its range and default", () => {
    for (const cmd of ["run", "bench"]) {
      const r = cli([cmd, "--help"]);
      assert.equal(r.status, 0);
      assert.match(r.stdout, /--hm-timeout <ms>[\s\S]*1\.\.60000[\s\S]*default: 100\)/);
    }
  });
});
