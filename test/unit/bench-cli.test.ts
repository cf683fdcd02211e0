/** `guardvisor bench` where nothing can be measured: one line and the right exit code, never a crash. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cli } from "../support/cli.js";
import { kvmSkipReason } from "../support/kvm.js";

function oneLine(stderr: string): string {
  const lines = stderr.split("\n").filter(Boolean);
  assert.equal(lines.length, 1, stderr);
  assert.doesNotMatch(stderr, /\bat .*\.js:\d+/);
  return lines[0]!;
}

describe("guardvisor bench without KVM", () => {
  for (const args of [["--quick"], ["--json", "--quick"], ["--json"]]) {
    it(`bench ${args.join(" ")} --kvm <missing>: exit 3, "KVM is unavailable", nothing on stdout`, () => {
      const r = cli(["bench", ...args, "--kvm", "/nonexistent/kvm"]);
      assert.equal(r.status, 3, r.stderr);
      assert.equal(r.stdout, "");
      assert.equal(
        oneLine(r.stderr),
        "guardvisor: error: KVM is unavailable: /nonexistent/kvm does not exist: this host has no KVM",
      );
    });
  }

  it("bench --quick on this host's /dev/kvm: exit 3 with one line", { skip: kvmSkipReason() === undefined }, () => {
    const r = cli(["bench", "--quick"]);
    assert.equal(r.status, 3, r.stderr);
    assert.equal(r.stdout, "");
    assert.match(oneLine(r.stderr), /^guardvisor: error: KVM is unavailable: /);
  });

  it("bad usage: exit 2", () => {
    const r = cli(["bench", "--frobnicate"]);
    assert.equal(r.status, 2);
    assert.match(oneLine(r.stderr), /unknown option '--frobnicate'/);
    const both = cli(["bench", "--json", "--markdown", "--kvm", "/nonexistent/kvm"]);
    assert.equal(both.status, 2);
    assert.equal(oneLine(both.stderr), "guardvisor: error: give --json or --markdown, not both");
  });

  it("--help describes the options and exit codes", () => {
    const r = cli(["bench", "--help"]);
    assert.equal(r.status, 0);
    for (const s of ["--json", "--markdown", "--quick", "--kvm", "Exit codes:", "KVM is unavailable"])
      assert.ok(r.stdout.includes(s), s);
  });
});
