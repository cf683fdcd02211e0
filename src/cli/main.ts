/**
 * The guardvisor command line.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { DECIDERS, type DeciderName } from "../decide/decider.js";
import { GuardvisorError, isGuardvisorError } from "../errors.js";
import { DEFAULT_MEM_MIB, DEFAULT_TIMEOUT_MS, type RunReport, runGuest, type SummaryEvent } from "../runner.js";
import { SCENARIOS } from "../scenarios.js";
import { registerPolicyCommands } from "./policy-cmd.js";

/** Process exit codes (also in --help and the README). */
export const EXIT = {
  OK: 0,
  RUN_FAILED: 1,
  USAGE: 2,
  KVM_UNAVAILABLE: 3,
  INTERNAL: 70,
} as const;

const EXIT_HELP = `
Exit codes:
  0   the run completed (and, for a scenario, every expectation held)
  1   the guest did not complete, or a scenario expectation failed
  2   bad usage or input: unknown scenario, unreadable or invalid kernel, bad option value
  3   KVM is unavailable (/dev/kvm missing, not accessible, or lacking a capability)
  70  internal error`;

function intOption(name: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${name} must be a whole number`);
    return Number(v);
  };
}

interface RunFlags {
  scenario?: string;
  kernel?: string;
  decider: DeciderName;
  json?: boolean;
  audit?: string;
  mem: number;
  timeout: number;
  cmdline?: string;
  serial?: boolean;
}

function formatEvent(e: SummaryEvent): string {
  const where = [e.region, e.symbol].filter(Boolean).join(" ");
  return `  #${e.seq} ${e.kind} ${where} -> ${e.verdict} (by ${e.decidedBy}, ${e.latencyUs.toFixed(1)} us)`;
}

function printReadable(r: RunReport): void {
  const s = r.summary;
  const out = process.stdout;
  out.write(`scenario ${s.scenario}, decider ${s.decider}\n`);
  out.write(`events: ${s.events.length}\n`);
  for (const e of s.events) out.write(`${formatEvent(e)}\n`);
  const code = s.guest.exitCode === null ? "" : ` (exit code ${s.guest.exitCode})`;
  out.write(`guest: ${s.guest.outcome}${code}: ${r.detail}\n`);
  out.write(
    `integrity: ${s.integrity.intact ? "intact" : `CHANGED (${r.changedRegions.join(", ")})`}, ${s.integrity.protectedBytes} protected bytes\n`,
  );
  if (r.result) {
    const pairs = Object.entries(r.result)
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
    out.write(`result: ${pairs}\n`);
  }
  if (s.scenario !== "custom") {
    out.write(
      r.problems.length === 0 ? "check: pass\n" : `check: FAIL\n${r.problems.map((p) => `  - ${p}\n`).join("")}`,
    );
  }
}

async function runCommand(flags: RunFlags): Promise<number> {
  if (!flags.scenario === !flags.kernel) {
    throw new GuardvisorError("CONFIG_INVALID", "give exactly one of --scenario NAME or --kernel ELF");
  }
  const report = await runGuest({
    scenario: flags.scenario,
    kernelPath: flags.kernel,
    cmdline: flags.cmdline,
    decider: flags.decider,
    memMiB: flags.mem,
    timeoutMs: flags.timeout * 1000,
    auditPath: flags.audit,
    onSerial: flags.serial ? (line) => process.stderr.write(`guest0| ${line}\n`) : undefined,
  });
  if (flags.json) process.stdout.write(`${JSON.stringify(report.summary)}\n`);
  else printReadable(report);
  const ok = report.summary.guest.outcome === "completed" && report.problems.length === 0;
  if (!ok && flags.json && report.problems.length > 0) {
    process.stderr.write(`guardvisor: scenario check failed: ${report.problems.join("; ")}\n`);
  }
  return ok ? EXIT.OK : EXIT.RUN_FAILED;
}

async function demoCommand(): Promise<number> {
  const w = (s: string) => process.stdout.write(`${s}\n`);
  w("Guardvisor demo: a guest kernel module tries to patch kernel code.");
  w("Its .text is backed by read-only memory slots; every write attempt exits to");
  w("the VMM, which captures the context and asks the decider. The policy denies it.\n");
  const report = await runGuest({
    scenario: "text-patch",
    decider: "vmm",
    onSerial: (line) => w(`  guest| ${line}`),
  });
  w("");
  printReadable(report);
  return report.summary.guest.outcome === "completed" && report.problems.length === 0 ? EXIT.OK : EXIT.RUN_FAILED;
}

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command("guardvisor")
    .description("A KVM virtual machine monitor that keeps guest kernels healthy and untampered.")
    .version("0.1.0")
    .showHelpAfterError(false)
    .addHelpText("after", EXIT_HELP);

  program
    .command("run")
    .description("boot a guest kernel (a built-in scenario or your own ELF) and watch it to its end")
    .option("--scenario <name>", `a built-in gv-kernel scenario (${SCENARIOS.map((s) => s.name).join(", ")})`)
    .option("--kernel <elf>", "your own kernel: an ELF64 x86-64 image following docs/guest-abi.md")
    .addOption(new Option("--decider <name>", "who rules on events").choices([...DECIDERS]).default("vmm"))
    .option("--json", "print one JSON summary object on stdout when the run ends")
    .option("--audit <file>", "append one JSON line per event, with full context, to this file")
    .option("--mem <MiB>", "guest RAM in MiB (even, 4..4096)", intOption("--mem"), DEFAULT_MEM_MIB)
    .option("--timeout <seconds>", "stop the guest after this long", intOption("--timeout"), DEFAULT_TIMEOUT_MS / 1000)
    .option("--cmdline <text>", "extra kernel command-line text")
    .option("--serial", "echo the guest's serial output on stderr")
    .addHelpText("after", EXIT_HELP)
    .action(async (flags: RunFlags) => setExit(await runCommand(flags)));

  program
    .command("scenarios")
    .description("list the built-in scenarios")
    .option("--json", "print them as JSON")
    .action((flags: { json?: boolean }) => {
      if (flags.json) {
        process.stdout.write(
          `${JSON.stringify(SCENARIOS.map((s) => ({ name: s.name, description: s.description })))}\n`,
        );
      } else {
        const width = Math.max(...SCENARIOS.map((s) => s.name.length));
        for (const s of SCENARIOS) process.stdout.write(`${s.name.padEnd(width)}  ${s.description}\n`);
      }
      setExit(EXIT.OK);
    });

  program
    .command("demo")
    .description("a short demo: a kernel-code patch attack denied, the guest still healthy")
    .action(async () => setExit(await demoCommand()));

  registerPolicyCommands(program);
  return program;
}

function exitCodeFor(e: unknown): number {
  if (isGuardvisorError(e)) {
    switch (e.code) {
      case "KVM_UNAVAILABLE":
        return EXIT.KVM_UNAVAILABLE;
      case "INTERNAL":
      case "KVM_IOCTL":
        return EXIT.INTERNAL;
      default:
        return EXIT.USAGE;
    }
  }
  return EXIT.INTERNAL;
}

export async function main(argv: string[]): Promise<number> {
  let code: number = EXIT.OK;
  const program = buildProgram((c) => {
    code = c;
  });
  program.exitOverride();
  program.commands.forEach((c) => {
    c.exitOverride();
  });
  program.configureOutput({ outputError: (str, write) => write(`guardvisor: ${str.replace(/^error: /, "error: ")}`) });
  try {
    await program.parseAsync(argv);
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version are not errors; everything else is bad usage.
      return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`guardvisor: error: ${msg.split("\n")[0]}\n`);
    return exitCodeFor(e);
  }
}
