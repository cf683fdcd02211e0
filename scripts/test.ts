/**
 * `npm test`: the host tests here, then the KVM tests where KVM is: on this
 * host when /dev/kvm opens, otherwise inside the lab (guardvisor lab). The
 * KVM tests are test/kvm/ and the health VM half of test/health/ (whose
 * hosted-engine half runs with the host tests: GV_TEST_ENGINES). One closing
 * line adds both up; KVM tests that could not run are counted as skipped
 * (one per test file), and with GV_REQUIRE_KVM=1 (CI) they fail the run.
 *
 *   node dist/scripts/test.js [host|kvm|all] [FILE…]   (FILE: dist/test/…/x.test.js)
 */
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, relative } from "node:path";
import { isGuardvisorError } from "../src/errors.js";
import { packageRoot } from "../src/kvm/native.js";
import { kvmUsable } from "../src/lab/fallback.js";
import { findLabInputs } from "../src/lab/inputs.js";
import { runInLab } from "../src/lab/machine.js";
import { hostKvmIsPvm } from "../src/linux/cpuid.js";

interface Totals {
  tests: number;
  pass: number;
  fail: number;
  skipped: number;
  cancelled: number;
  todo: number;
}
/**
 * KVM tests that need hardware virtualisation (a stock Linux kernel's ring 0):
 * where /dev/kvm is PVM they run in the lab instead (docs/linux-guests.md).
 */
const NEEDS_HW_VIRT = ["kvm/linux-boot.test.js", "kvm/linux-seal.test.js", "kvm/linux-attacks.test.js"];

const ZERO: Totals = { tests: 0, pass: 0, fail: 0, skipped: 0, cancelled: 0, todo: 0 };

const root = packageRoot();
const distTest = join(root, "dist", "test");
/** Where each group's totals are written (GV_TEST_RESULTS, default build/test-results). */
const resultsDir = process.env.GV_TEST_RESULTS || join(root, "build", "test-results");

function testFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...testFiles(p));
    else if (e.name.endsWith(".test.js")) out.push(p);
  }
  return out.sort();
}

function nodeTestArgs(files: string[], summary: string): string[] {
  return [
    "--test",
    "--test-concurrency=1",
    "--test-reporter=spec",
    "--test-reporter-destination=stdout",
    `--test-reporter=${join(distTest, "support", "count-reporter.js")}`,
    `--test-reporter-destination=${summary}`,
    ...files.map((f) => relative(root, f)),
  ];
}

function readTotals(path: string): Totals | undefined {
  try {
    return { ...ZERO, ...(JSON.parse(readFileSync(path, "utf8")) as Partial<Totals>) };
  } catch {
    return undefined;
  }
}

function runHere(files: string[], summary: string, env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, nodeTestArgs(files, summary), { cwd: root, stdio: "inherit", env });
    c.on("exit", (code) => resolve(code ?? 1));
  });
}

const add = (a: Totals, b: Totals): Totals => ({
  tests: a.tests + b.tests,
  pass: a.pass + b.pass,
  fail: a.fail + b.fail,
  skipped: a.skipped + b.skipped,
  cancelled: a.cancelled + b.cancelled,
  todo: a.todo + b.todo,
});

async function main(argv: string[]): Promise<number> {
  const which = (["host", "kvm", "all"] as const).find((w) => argv.includes(w)) ?? "all";
  const picked = argv.filter((a) => a.endsWith(".js")).map((a) => join(root, a));
  const all = picked.length > 0 ? picked : testFiles(distTest);
  const under = (f: string, d: string) => relative(distTest, f).startsWith(`${d}/`);
  const hostFiles = which === "kvm" ? [] : all.filter((f) => !under(f, "kvm"));
  const kvmFiles = which === "host" ? [] : all.filter((f) => under(f, "kvm") || under(f, "health"));
  const { GV_REQUIRE_KVM: _required, ...hostEnv } = process.env;
  const kvmEnv = { ...process.env, GV_REQUIRE_KVM: "1", GV_TEST_ENGINES: "vm" };
  mkdirSync(resultsDir, { recursive: true });
  for (const f of ["host.json", "kvm.json", "kvm-hw.json"]) rmSync(join(resultsDir, f), { force: true });

  let total = { ...ZERO };
  let ok = true;
  const lines: string[] = [];
  const part = (name: string, code: number, t: Totals | undefined) => {
    if (!t) {
      ok = false;
      lines.push(`${name}: the test runner printed no totals (exit ${code})`);
      return;
    }
    if (code !== 0) ok = false;
    total = add(total, t);
    lines.push(`${name}: ${t.pass} passed, ${t.fail} failed, ${t.skipped} skipped (${t.tests} tests)`);
  };

  if (hostFiles.length > 0) {
    const summary = join(resultsDir, "host.json");
    part(
      `host (${hostFiles.length} files)`,
      await runHere(hostFiles, summary, { ...hostEnv, GV_TEST_ENGINES: "hosted" }),
      readTotals(summary),
    );
  }
  /** Run `files` in the lab, or count them as not run (a failure under GV_REQUIRE_KVM=1). */
  const inLab = async (files: string[], summary: string, name: string, why: string) => {
    let missing: string | undefined;
    try {
      findLabInputs();
    } catch (e) {
      if (!isGuardvisorError(e)) throw e;
      missing = e.message;
    }
    if (missing === undefined) {
      process.stdout.write(`\n== ${why}: ${files.length} KVM test file(s) run in the lab (emulated KVM)\n`);
      const r = await runInLab({
        command: [process.execPath, ...nodeTestArgs(files, summary)],
        cwd: root,
        env: kvmEnv,
      });
      part(
        `${name}, in the lab: TCG ${r.tcg}, time scale ${r.scale}, boot ${(r.bootMs / 1000).toFixed(1)} s)`,
        r.exitCode,
        readTotals(summary),
      );
      return;
    }
    process.stdout.write(`\n!!!!! KVM TESTS SKIPPED: ${why} and no lab: ${missing}. These tests did NOT run. !!!!!\n`);
    total = add(total, { ...ZERO, tests: files.length, skipped: files.length });
    lines.push(`${name}: ${files.length} test files NOT RUN (counted as ${files.length} skipped)`);
    if (process.env.GV_REQUIRE_KVM === "1") {
      ok = false;
      lines.push("GV_REQUIRE_KVM=1: the KVM tests had to run");
    }
  };
  if (kvmFiles.length > 0) {
    const name = `KVM (${kvmFiles.length} files`;
    if (kvmUsable()) {
      // A PVM /dev/kvm cannot run what needs hardware virtualisation: those files go to the lab.
      const labOnly = hostKvmIsPvm() ? kvmFiles.filter((f) => NEEDS_HW_VIRT.includes(relative(distTest, f))) : [];
      const here = kvmFiles.filter((f) => !labOnly.includes(f));
      const summary = join(resultsDir, "kvm.json");
      // No file to run here (all of them go to the lab): `node --test` with no file would run every test it finds.
      if (here.length > 0) {
        part(
          `KVM (${here.length} files, /dev/kvm on this host)`,
          await runHere(here, summary, kvmEnv),
          readTotals(summary),
        );
      }
      if (labOnly.length > 0) {
        await inLab(labOnly, join(resultsDir, "kvm-hw.json"), `KVM (${labOnly.length} files`, "this host's KVM is PVM");
      }
    } else {
      await inLab(kvmFiles, join(resultsDir, "kvm.json"), name, "no /dev/kvm here");
    }
  }
  process.stdout.write(`\n${lines.join("\n")}\n`);
  process.stdout.write(`tests: ${total.pass} passed, ${total.fail} failed, ${total.skipped} skipped\n`);
  return ok && total.fail === 0 && total.cancelled === 0 ? 0 : 1;
}

process.exitCode = await main(process.argv.slice(2));
