/**
 * `guardvisor lab` end to end, from this host: a command runs in the
 * emulated machine with KVM, its output and exit code come back, and
 * Ctrl-C, timeouts and SIGHUP do what the help says, leaving no emulator
 * behind. Skipped (loudly) only where the lab cannot start and KVM is not
 * required; the demo through the lab is checked here too.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { isGuardvisorError } from "../../src/errors.js";
import { packageRoot } from "../../src/kvm/native.js";
import { kvmUsable } from "../../src/lab/fallback.js";
import { findLabInputs } from "../../src/lab/inputs.js";

function labSkipReason(): string | undefined {
  if (process.env.GV_LAB === "1") return "inside the lab already (it does not nest)";
  try {
    findLabInputs();
    return undefined;
  } catch (e) {
    if (!isGuardvisorError(e)) throw e;
    if (process.env.GV_REQUIRE_KVM === "1" && !kvmUsable()) throw e;
    process.stderr.write(`\n!!!!! LAB TESTS SKIPPED: ${e.message} !!!!!\n\n`);
    return `SKIPPED, the lab cannot start: ${e.message}`;
  }
}

const skip = labSkipReason() ?? false;
const bin = join(packageRoot(), "bin", "guardvisor.js");
// A cache of its own, so that the emulator of each test can be found by its command line.
const cache = mkdtempSync(join(tmpdir(), "gv-lab-cache-"));
const env: NodeJS.ProcessEnv = { ...process.env, GV_LAB_CACHE: cache, GV_TEST_MARKER: "it's $here" };

interface Done {
  code: number | null;
  stdout: string;
  stderr: string;
}

function start(args: string[]): { child: ChildProcess; done: Promise<Done>; out: () => string } {
  const child = spawn(process.execPath, [bin, ...args], { env, cwd: packageRoot() });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d) => {
    stdout += d;
  });
  child.stderr?.on("data", (d) => {
    stderr += d;
  });
  const done = new Promise<Done>((resolve) => child.on("exit", (code) => resolve({ code, stdout, stderr })));
  return { child, done, out: () => stdout };
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Emulators started for this test file's cache that are still alive. */
function emulatorsLeft(): string[] {
  const r = spawnSync("pgrep", ["-af", `gvlab.job=${cache}`], { encoding: "utf8" });
  return r.stdout.split("\n").filter((l) => l.includes("qemu-system"));
}

describe("guardvisor lab", { skip }, () => {
  after(() => rmSync(cache, { recursive: true, force: true }));

  it("runs a command in the same directory with KVM, streams stdout and stderr apart, returns its exit code", async () => {
    const script = [
      "pwd",
      "test -c /dev/kvm && echo kvm-present",
      'echo "lab=$GV_LAB marker=$GV_TEST_MARKER"',
      'echo "scale=$GV_TIME_SCALE"',
      'echo "to stderr" >&2',
      "exit 7",
    ].join("; ");
    const r = await start(["lab", "--", "sh", "-c", script]).done;
    assert.equal(r.code, 7, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines[0], packageRoot());
    assert.equal(lines[1], "kvm-present");
    assert.equal(lines[2], "lab=1 marker=it's $here");
    const scale = Number(/^scale=(.*)$/.exec(lines[3] ?? "")?.[1]);
    assert.ok(scale >= 1, `GV_TIME_SCALE=${lines[3]}`);
    assert.match(r.stderr, /to stderr/);
    assert.doesNotMatch(r.stdout, /to stderr/);
    assert.deepEqual(emulatorsLeft(), []);
  });

  it("--timeout stops the emulated machine: exit 70, one line, no emulator left", async () => {
    const r = await start(["lab", "--timeout", "3", "--", "sleep", "600"]).done;
    assert.equal(r.code, 70, r.stderr);
    assert.match(r.stderr, /^guardvisor: error: the lab was stopped after 3 s \(timeout\)\n$/);
    assert.deepEqual(emulatorsLeft(), []);
  });

  it("SIGHUP reaches the command; Ctrl-C stops the lab with no emulator left", async () => {
    const trap = 'trap "echo got-hup" HUP; echo ready; while :; do sleep 1; done';
    const run = start(["lab", "--", "sh", "-c", trap]);
    await until(() => run.out().includes("ready"), 600_000);
    run.child.kill("SIGHUP");
    await until(() => run.out().includes("got-hup"), 60_000);
    run.child.kill("SIGINT");
    const r = await run.done;
    assert.equal(r.code, 130, r.stderr);
    assert.deepEqual(emulatorsLeft(), []);
  });

  it("lab check --json: QEMU, kernel, /dev/kvm inside, hardware breakpoints firing, the time scale", async () => {
    const r = await start(["lab", "check", "--json"]).done;
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const j = JSON.parse(r.stdout) as Record<string, unknown> & { qemu: { version: string }; timeScale: number };
    assert.match(j.qemu.version, /^\d+\.\d+/);
    assert.ok(Number(j.qemu.version.split(".")[0]) >= 10);
    assert.equal(j.devKvm, true);
    assert.equal(j.hardwareBreakpoints, true);
    assert.equal(j.ok, true);
    assert.ok(j.timeScale >= 1);
  });

  it("npm start (the demo) on a host without /dev/kvm says it uses the lab and shows the denied writes", {
    skip: kvmUsable(),
  }, async () => {
    const r = await start(["demo"]).done;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^guardvisor: no \/dev\/kvm on this host: running in the lab/);
    assert.match(r.stdout, /protected-write \.text gv_check_credentials.* -> deny/);
    assert.match(r.stdout, /integrity: intact/);
  });
});
