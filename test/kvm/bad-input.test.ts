/**
 * Bad input gets a clear one-line error and a non-zero exit, never a stack
 * trace, a crash, or anything left running.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { defaultKernelPath } from "../../src/elf/kernel-file.js";
import { GuardvisorError } from "../../src/errors.js";
import { runGuest } from "../../src/run/run-guests.js";
import { cli } from "../support/cli.js";
import { skipWithoutKvm } from "../support/kvm.js";

const dir = mkdtempSync(join(tmpdir(), "gv-bad-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, bytes: Uint8Array | string): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

/** The gv-kernel image with its first PT_LOAD's p_paddr (and p_vaddr) replaced. */
function withFirstLoadAt(paddr: bigint): Uint8Array {
  const b = new Uint8Array(readFileSync(defaultKernelPath()));
  const v = new DataView(b.buffer);
  const phoff = Number(v.getBigUint64(32, true));
  const phentsize = v.getUint16(54, true);
  const phnum = v.getUint16(56, true);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (v.getUint32(at, true) === 1) {
      v.setBigUint64(at + 16, paddr, true);
      v.setBigUint64(at + 24, paddr, true);
      return b;
    }
  }
  throw new Error("no PT_LOAD");
}

function assertCleanError(args: string[], pattern: RegExp, status = 2) {
  const r = cli(args);
  assert.equal(r.status, status, `exit status for ${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0] ?? "", /^guardvisor: error: /);
  assert.match(lines[0] ?? "", pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
  assert.equal(r.stdout, "");
}

describe("bad input through the CLI", { skip: skipWithoutKvm }, () => {
  it("rejects a file that is not ELF", () => {
    assertCleanError(["run", "--kernel", "/etc/passwd"], /not an ELF/i);
  });

  it("rejects a missing kernel file", () => {
    assertCleanError(["run", "--kernel", join(dir, "nope.elf")], /cannot read kernel.*no such file/);
  });

  it("rejects an unknown scenario, naming it and the known ones", () => {
    assertCleanError(["run", "--scenario", "frobnicate"], /unknown scenario 'frobnicate'.*text-patch/);
  });

  it("rejects out-of-range memory sizes, naming --mem", () => {
    assertCleanError(["run", "--scenario", "benign", "--mem", "8192"], /--mem/);
    assertCleanError(["run", "--scenario", "benign", "--mem", "1"], /--mem/);
    const r = cli(["run", "--scenario", "benign", "--mem", "lots"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--mem must be a whole number/);
  });

  it("rejects truncated, garbage and non-x86-64 images", () => {
    const good = readFileSync(defaultKernelPath());
    assertCleanError(["run", "--kernel", file("trunc.elf", good.subarray(0, 100))], /ELF|past end|truncated/i);
    const garbage = new Uint8Array(4096);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 131 + 7) & 0xff;
    assertCleanError(["run", "--kernel", file("garbage.elf", garbage)], /not an ELF/i);
    const arm = new Uint8Array(good);
    new DataView(arm.buffer).setUint16(18, 183, true); // EM_AARCH64
    assertCleanError(["run", "--kernel", file("arm.elf", arm)], /machine|x86-64/i);
    assertCleanError(["run", "--kernel", "/bin/true"], /ET_DYN|executable|type/i);
  });

  it("rejects hostile layouts: outside RAM, in the boot area, at page 0", () => {
    assertCleanError(["run", "--kernel", file("far.elf", withFirstLoadAt(0x7ff00000n))], /outside guest RAM/);
    assertCleanError(["run", "--kernel", file("boot.elf", withFirstLoadAt(0x2000n))], /boot area|page 0/);
    assertCleanError(["run", "--kernel", file("zero.elf", withFirstLoadAt(0n))], /boot area|page 0/);
    assertCleanError(
      ["run", "--kernel", file("wrap.elf", withFirstLoadAt(0xfffffffffffff000n))],
      /p_vaddr 0xfffffffffffff000 exceeds 2\^53/,
    );
  });

  it("rejects giving both or neither of --scenario and --kernel", () => {
    assertCleanError(["run"], /exactly one of --scenario/);
    assertCleanError(["run", "--scenario", "benign", "--kernel", "/etc/passwd"], /exactly one of --scenario/);
  });
});

describe("bad input in-process leaves nothing behind", { skip: skipWithoutKvm }, () => {
  it("does not leak file descriptors or threads when a build fails", async () => {
    const fds = () => readdirSync("/proc/self/fd").length;
    const before = fds();
    const bad = file("hostile.elf", withFirstLoadAt(0x7ff00000n));
    for (let i = 0; i < 5; i++) {
      await assert.rejects(
        runGuest({ kernelPath: bad }),
        (e: unknown) => e instanceof GuardvisorError && e.code === "ELF_LAYOUT",
      );
    }
    await assert.rejects(runGuest({ scenario: "benign", memMiB: 5 }), /--mem/);
    assert.equal(fds(), before, "no file descriptor leaked");
    assert.equal(
      process.getActiveResourcesInfo().filter((r) => r === "Worker").length,
      0,
      "no vCPU worker left running",
    );
  });

  it("releases everything after successful runs too", async () => {
    const fds = () => readdirSync("/proc/self/fd").length;
    await runGuest({ scenario: "benign" }); // warm up lazy handles (addon, worker code)
    const before = fds();
    for (let i = 0; i < 3; i++) await runGuest({ scenario: "text-patch" });
    assert.equal(fds(), before, "no file descriptor leaked");
  });
});
