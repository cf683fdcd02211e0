/** Command-line options that are checked before anything runs (no KVM needed). */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ABI_CONSTANTS as C } from "../../src/abi/guest-abi.js";
import { parseInject } from "../../src/cli/main.js";
import { LINUX_SCENARIOS } from "../../src/linux/test-guest.js";
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

describe("run --linux options (checked before a boot, and before any move into the lab)", () => {
  const kernel = "/nonexistent/vmlinuz";

  it("an unknown Linux scenario: one line naming --scenario and the known ones", () => {
    const r = cli(["run", "--linux", kernel, "--scenario", "text-patch"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--scenario: with --linux, one of linux-benign, .*linux-hang; got "text-patch"/);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  });

  it("a negative or fractional --hang-timeout with --linux: one line naming it", () => {
    for (const v of ["-1", "1.5"]) {
      const r = cli(["run", "--linux", kernel, "--hang-timeout", v]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /--hang-timeout/);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  });

  it("two scenarios with --linux: one per run", () => {
    const r = cli(["run", "--linux", kernel, "--scenario", "linux-benign", "--scenario", "linux-oops"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /one Linux scenario per run/);
  });

  it("--policy without --seal or --scenario: it governs the seal", () => {
    const r = cli(["run", "--linux", kernel, "--policy", "policies/linux-immutable.yaml"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--policy: with --linux, it governs the seal/);
  });

  it("a bad policy file is its own clear error, before any boot", () => {
    const r = cli(["run", "--linux", kernel, "--seal", "--policy", "test/fixtures/policies/bad/frobnicate.yaml"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /frobnicate\.yaml:3:1: frobnicate: unknown field/);
  });

  it("--kernel and --linux together: one of them", () => {
    const r = cli(["run", "--linux", kernel, "--kernel", "guest/out/gv-kernel.elf"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--linux: give it instead of --kernel/);
  });
});

describe("scenarios", () => {
  it("lists gv-kernel's scenarios and the stock Linux ones, each with what it shows", () => {
    const r = cli(["scenarios", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const all = JSON.parse(r.stdout) as { name: string; description: string; guest: string }[];
    const linux = all.filter((s) => s.guest === "linux").map((s) => s.name);
    assert.deepEqual(linux, [...LINUX_SCENARIOS]);
    assert.ok(all.some((s) => s.guest === "gv-kernel" && s.name === "text-patch"));
    for (const s of all) assert.ok(s.description.length > 10, s.name);
  });
});
