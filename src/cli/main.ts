/**
 * The guardvisor command line.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import { type ControlServer, startControlServer } from "../control/socket.js";
import { DECIDERS, type DeciderName } from "../decide/decider.js";
import { defaultKernelPath } from "../elf/kernel-file.js";
import { GuardvisorError, isGuardvisorError } from "../errors.js";
import { HM_DEFAULTS } from "../health/health-manager.js";
import type { InjectSpec } from "../idc/channel.js";
import { runInLabIfNoKvm } from "../lab/fallback.js";
import { LINUX_SCENARIO_DESCRIPTIONS, LINUX_SCENARIOS } from "../linux/test-guest.js";
import { guestName } from "../names.js";
import { readPolicyKernel } from "../policy/compile-file.js";
import { loadPolicyFile } from "../policy/load.js";
import { resolvePolicy } from "../policy/resolve.js";
import { checkRunOptions } from "../run/checks.js";
import {
  DEFAULT_DECIDER,
  DEFAULT_HANG_TIMEOUT_MS,
  DEFAULT_MEM_MIB,
  DEFAULT_TIMEOUT_MS,
  type MultiRunReport,
  type RunControl,
  type RunOptions,
  type RunReport,
  type SummaryEvent,
} from "../run/options.js";
import { runGuest, runGuests } from "../run/run-guests.js";
import { SCENARIOS, type Scenario } from "../scenarios.js";
import { registerAuditCommands } from "./audit-cmd.js";
import { registerBenchCommands } from "./bench-cmd.js";
import { registerControlCommands } from "./control-cmd.js";
import { registerLabCommands } from "./lab-cmd.js";
import {
  checkLinuxFlags,
  type LinuxRunFlags,
  linuxRowsForAll,
  printRows,
  runLinuxCommand,
  type ScenarioRow,
} from "./linux-cmd.js";
import { startRunObservers } from "./observe.js";
import { HM_TIMEOUT_OPTION, intOption } from "./options.js";
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
  3   KVM is unavailable (/dev/kvm missing, not accessible, or lacking a capability) and the lab cannot start
  70  internal error`;

const NO_LAB = [
  "--no-lab",
  "where /dev/kvm is missing, exit 3 instead of running in the lab (guardvisor lab --help)",
] as const;

const TIME_SCALE_HELP = `

Default time limits (--timeout, --hm-timeout, --hang-timeout) are multiplied
by GV_TIME_SCALE (1 on a KVM host; set by the lab, which runs 20-50x slower).`;

const INJECT_MODES = {
  crash: ABI_CONSTANTS.INJECT_CRASH,
  hang: ABI_CONSTANTS.INJECT_HANG,
  garbage: ABI_CONSTANTS.INJECT_GARBAGE,
  slow: ABI_CONSTANTS.INJECT_SLOW,
  scribble: ABI_CONSTANTS.INJECT_SCRIBBLE,
} as const;

/** `crash|hang|garbage|slow|scribble[@N]`: misbehave at the N-th request (default 1). */
export function parseInject(v: string): InjectSpec {
  const m = /^(crash|hang|garbage|slow|scribble)(?:@(\d{1,9}))?$/.exec(v);
  if (!m) throw new InvalidArgumentError("must be crash, hang, garbage, slow or scribble, optionally @N (N >= 1)");
  const at = m[2] === undefined ? 1 : Number(m[2]);
  if (at < 1) throw new InvalidArgumentError("N in @N counts requests from 1");
  const mode = INJECT_MODES[m[1] as keyof typeof INJECT_MODES];
  return { mode, at, slowUs: mode === ABI_CONSTANTS.INJECT_SLOW ? lateAnswerUs(HM_DEFAULTS.timeoutMs) : 0 };
}

/** How late "slow" answers: three times the deadline, so the VMM must fail safe. */
const lateAnswerUs = (deadlineMs: number) => deadlineMs * 3000;

function parseEntry(v: string): string | bigint {
  if (/^0x[0-9a-f]{1,16}$/i.test(v)) return BigInt(v);
  if (/^[A-Za-z_.$][\w.$]{0,200}$/.test(v)) return v;
  throw new InvalidArgumentError("must be an ELF symbol name or a hexadecimal address (0x...)");
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

interface RunFlags {
  scenario?: string[];
  guests?: number;
  injectHmFault?: InjectSpec;
  kernel?: string;
  decider: DeciderName;
  json?: boolean;
  audit?: string;
  mem: number;
  timeout: number;
  cmdline?: string;
  serial?: boolean;
  policy?: string;
  exceptionEntry?: string | bigint;
  hangTimeout: number;
  hmTimeout: number;
  duration?: number;
  hmChaos?: boolean;
  metricsPort?: number;
  /** The control socket's path (guardvisor guests / resume). */
  control?: string;
  /** A stock Linux bzImage to boot instead of a gv-kernel guest (src/cli/linux-cmd.ts). */
  linux?: string;
  initrd?: string;
  systemMap?: string;
  /** With --linux: seal the kernel's code and read-only data after init. */
  seal?: boolean;
  /** false with --no-lab. */
  lab: boolean;
}

function formatEvent(e: SummaryEvent): string {
  const where = [e.region, e.symbol].filter(Boolean).join(" ");
  const times = (e.count ?? 1) > 1 ? ` x${e.count}` : "";
  return `  #${e.seq} ${e.kind} ${where}${times} -> ${e.verdict} (by ${e.decidedBy}, ${e.latencyUs.toFixed(1)} us)`;
}

function printReadable(r: RunReport, withHealthVm = true): void {
  const s = r.summary;
  const out = process.stdout;
  out.write(`scenario ${s.scenario}, decider ${s.decider}\n`);
  const total = s.events.reduce((n, e) => n + (e.count ?? 1), 0);
  out.write(`events: ${total}${total !== s.events.length ? ` (${s.events.length} distinct)` : ""}\n`);
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
  if (withHealthVm && s.decider === "hm-vm") printHealthVm(s.healthVm);
}

function printMulti(r: MultiRunReport): void {
  const out = process.stdout;
  out.write(`${r.guests.length} guests, decider ${r.summary.decider}\n`);
  r.guests.forEach((g, i) => {
    out.write(`\n== ${guestName(i)}: `);
    printReadable(g, false);
  });
  printHealthVm(r.summary.healthVm);
}

function printSoak(r: MultiRunReport): void {
  const s = r.summary.soak;
  if (!s) return;
  const out = process.stdout;
  const events = Object.entries(s.events)
    .map(([by, n]) => `${n} by ${by}`)
    .join(", ");
  out.write(`soak: ${s.durationS} s, ${r.guests.length} guests, ${s.rounds} scenario runs, ${s.roundsFailed} failed\n`);
  for (const p of s.problems) out.write(`  - ${p}\n`);
  out.write(`events: ${events || "none"}\n`);
  out.write(
    `requests: ${s.requests.published} published, ${s.requests.settled} settled, ${s.requests.published - s.requests.settled} not settled\n`,
  );
  out.write(`health VM: ${r.summary.healthVm.requests} requests answered, ${s.hmRestarts} restarts\n`);
  out.write(`integrity: ${s.intact ? "every region intact in every run" : "CHANGED"}\n`);
  out.write(`RSS: ${s.rssMiB.start} MiB after the first run, ${s.rssMiB.end} MiB at the end\n`);
}

function printHealthVm(h: RunReport["summary"]["healthVm"]): void {
  const out = process.stdout;
  out.write(`health VM: ${h.requests} requests answered, ${h.restarts} restarts\n`);
  for (const f of h.faults) out.write(`  - ${f.reason}: ${f.detail} (down ${f.downMs} ms)\n`);
}

function commonRunOptions(flags: RunFlags): RunOptions {
  const kernelPath = flags.kernel ?? defaultKernelPath();
  return {
    kernelPath: flags.kernel,
    cmdline: flags.cmdline,
    decider: flags.decider,
    memMiB: flags.mem,
    timeoutMs: flags.timeout * 1000,
    auditPath: flags.audit,
    injectHmFault:
      flags.injectHmFault?.mode === ABI_CONSTANTS.INJECT_SLOW
        ? { ...flags.injectHmFault, slowUs: lateAnswerUs(flags.hmTimeout) }
        : flags.injectHmFault,
    hangTimeoutMs: flags.hangTimeout,
    hmTimeoutMs: flags.hmTimeout,
    durationMs: flags.duration === undefined ? undefined : flags.duration * 1000,
    hmChaos: flags.hmChaos,
    exceptionEntry: flags.exceptionEntry,
    policy: flags.policy ? resolvePolicy(loadPolicyFile(flags.policy), readPolicyKernel(kernelPath)) : undefined,
  };
}

/** Errors that fail one scenario of `--scenario all` rather than the whole command. */
const SCENARIO_FAILURES: ReadonlySet<string> = new Set(["INTERNAL", "GUEST_FAULT", "KVM_IOCTL"]);

/** `--scenario all`: every built-in scenario in turn, one verdict each. */
async function runAll(flags: RunFlags): Promise<number> {
  const base = commonRunOptions(flags);
  const rows: ScenarioRow[] = [];
  const expectedOf = (sc: Scenario) => ({
    result: sc.result,
    events: sc.events,
    restarts: sc.restarts ?? 0,
    outcome: "completed",
  });
  for (const sc of SCENARIOS) {
    let r: RunReport;
    try {
      r = await runGuest({ ...base, scenario: sc.name });
    } catch (e) {
      // One scenario's VMM failure is that scenario's verdict; the others still run.
      if (!isGuardvisorError(e) || !SCENARIO_FAILURES.has(e.code)) throw e;
      rows.push({
        scenario: sc.name,
        expected: expectedOf(sc),
        observed: { error: `${e.code}: ${e.message}` },
        pass: false,
      });
      if (!flags.json) process.stdout.write(`FAIL  ${sc.name}: ${e.code}: ${e.message}\n`);
      continue;
    }
    const s = r.summary;
    const counts: Record<string, number> = {};
    for (const e of s.events) {
      const k = `${e.kind}${e.vector === undefined ? "" : `#${e.vector}`}:${e.verdict}`;
      counts[k] = (counts[k] ?? 0) + 1;
    }
    const pass = s.guest.outcome === "completed" && r.problems.length === 0;
    rows.push({
      scenario: sc.name,
      expected: expectedOf(sc),
      observed: {
        outcome: s.guest.outcome,
        restarts: s.guest.restarts,
        result: r.result ?? null,
        events: counts,
        decidedBy: [...new Set(s.events.map((e) => e.decidedBy))],
        intact: s.integrity.intact,
        problems: r.problems,
      },
      pass,
    });
    if (!flags.json) {
      process.stdout.write(`${pass ? "pass" : "FAIL"}  ${sc.name}${pass ? "" : `: ${r.problems.join("; ")}`}\n`);
    }
  }
  // Then the stock Linux scenarios (in the lab where this host cannot run a stock kernel).
  const linux = await linuxRowsForAll({ decider: flags.decider, lab: flags.lab }, sayErr);
  if (!flags.json) printRows(linux);
  rows.push(...linux);
  if (flags.json) process.stdout.write(`${JSON.stringify({ scenarios: rows })}\n`);
  return rows.every((r) => r.pass) ? EXIT.OK : EXIT.RUN_FAILED;
}

/** SIGHUP: read the --policy file again and switch running guests to it; a bad file changes nothing. */
function reloadOnSignal(flags: RunFlags, control: RunControl): void {
  const say = (m: string): void => {
    process.stderr.write(`guardvisor: ${m}\n`);
  };
  if (!flags.policy) {
    say("SIGHUP: no --policy file to reload");
    return;
  }
  try {
    const p = resolvePolicy(loadPolicyFile(flags.policy), readPolicyKernel(flags.kernel ?? defaultKernelPath()));
    const r = control.reloadPolicy?.(p);
    say(r ? `policy ${p.name} reloaded for ${r.guests} guest(s)` : "SIGHUP: no guest is running");
  } catch (e) {
    say(`policy reload failed, keeping the current policy: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** Everything about a run that can be checked without KVM: bad usage fails here, before the lab boots. */
function checkRunFlags(flags: RunFlags): void {
  if (!flags.scenario === !flags.kernel) {
    throw new GuardvisorError("CONFIG_INVALID", "give exactly one of --scenario NAME (repeatable) or --kernel ELF");
  }
  if (flags.injectHmFault && flags.decider !== "hm-vm") {
    throw new GuardvisorError("CONFIG_INVALID", "--inject-hm-fault: needs --decider hm-vm");
  }
  if (flags.hmChaos && flags.decider !== "hm-vm") {
    throw new GuardvisorError("CONFIG_INVALID", "--hm-chaos: needs --decider hm-vm");
  }
  if ((flags.duration !== undefined || flags.hmChaos) && flags.scenario?.includes("all")) {
    throw new GuardvisorError("CONFIG_INVALID", "--duration, --hm-chaos: give the scenarios to mix, not all");
  }
  if (flags.scenario?.includes("all")) {
    if (flags.scenario.length > 1 || flags.guests !== undefined) {
      throw new GuardvisorError("CONFIG_INVALID", "--scenario all: give it alone, without --guests");
    }
    if (flags.metricsPort !== undefined) {
      throw new GuardvisorError("CONFIG_INVALID", "--metrics-port: serves one run; not with --scenario all");
    }
    if (flags.control !== undefined) {
      throw new GuardvisorError("CONFIG_INVALID", "--control: serves one run; not with --scenario all");
    }
    checkRunOptions({ ...commonRunOptions(flags), scenario: SCENARIOS[0]!.name });
    return;
  }
  checkRunOptions({ ...commonRunOptions(flags), scenarios: flags.scenario, guests: flags.guests });
}

/** run --linux: the gv-kernel options do not apply; --mem and --timeout keep their meaning with Linux defaults. */
function linuxRunFlags(flags: RunFlags, cmd: Command): LinuxRunFlags {
  if (flags.kernel) throw new GuardvisorError("CONFIG_INVALID", "--linux: give it instead of --kernel");
  if ((flags.scenario?.length ?? 0) > 1) {
    throw new GuardvisorError("CONFIG_INVALID", "--scenario: one Linux scenario per run with --linux");
  }
  const given = (name: string) => cmd.getOptionValueSource(name) !== "default";
  return {
    linux: flags.linux as string,
    initrd: flags.initrd,
    cmdline: flags.cmdline,
    systemMap: flags.systemMap,
    seal: flags.seal,
    scenario: flags.scenario?.[0],
    policy: flags.policy,
    // A Linux guest's events are decided in the VMM unless --decider hm-vm is given.
    decider: given("decider") ? flags.decider : "vmm",
    mem: given("mem") ? flags.mem : undefined,
    timeout: given("timeout") ? flags.timeout : undefined,
    hangTimeout: given("hangTimeout") ? flags.hangTimeout : undefined,
    json: flags.json,
  };
}

async function runCommand(flags: RunFlags): Promise<number> {
  if (flags.scenario?.includes("all")) return runAll(flags);
  const control: RunControl = {};
  const onHup = () => reloadOnSignal(flags, control);
  process.on("SIGHUP", onHup);
  const observers = await startRunObservers({
    live: !flags.json && process.stdout.isTTY ? process.stdout : undefined,
    metricsPort: flags.metricsPort,
  });
  let report: MultiRunReport;
  let controlServer: ControlServer | undefined;
  try {
    if (flags.control) {
      controlServer = await startControlServer(flags.control, {
        guests: () => control.guests?.() ?? [],
        resume: (g) => control.resume?.(g) ?? false,
      });
    }
    report = await runGuests({
      ...commonRunOptions(flags),
      control,
      scenarios: flags.scenario,
      guests: flags.guests,
      onSerial: flags.serial ? (line, g) => observers.print(`${guestName(g)}| ${line}`, process.stderr) : undefined,
      onHmSerial: flags.serial ? (line) => observers.print(`hm| ${line}`, process.stderr) : undefined,
      onEvent: observers.onEvent,
      onRepeat: observers.onRepeat,
      onHmRestart: observers.onHmRestart,
      onGuestState: observers.onGuestState,
      onExits: observers.onExits,
    });
  } finally {
    process.off("SIGHUP", onHup);
    await observers.close();
    await controlServer?.close();
  }
  const soak = report.summary.soak;
  if (soak) {
    // A soak is judged on all its rounds, not on the last one's events (verdicts may be fail-safe).
    if (flags.json) process.stdout.write(`${JSON.stringify(report.summary)}\n`);
    else printSoak(report);
    const ok = soak.roundsFailed === 0 && soak.intact && soak.requests.published === soak.requests.settled;
    return ok ? EXIT.OK : EXIT.RUN_FAILED;
  }
  const single = report.guests.length === 1 ? report.guests[0] : undefined;
  if (flags.json) process.stdout.write(`${JSON.stringify(single ? single.summary : report.summary)}\n`);
  else if (single) printReadable(single);
  else printMulti(report);
  const problems = report.guests.flatMap((g, i) => g.problems.map((p) => (single ? p : `${guestName(i)}: ${p}`)));
  const ok = report.guests.every((g) => g.summary.guest.outcome === "completed") && problems.length === 0;
  if (!ok && flags.json && problems.length > 0) {
    process.stderr.write(`guardvisor: scenario check failed: ${problems.join("; ")}\n`);
  }
  return ok ? EXIT.OK : EXIT.RUN_FAILED;
}

async function demoCommand(): Promise<number> {
  const w = (s: string) => process.stdout.write(`${s}\n`);
  w("Guardvisor demo: a guest kernel module tries to patch kernel code.");
  w("Its .text is backed by read-only memory slots; every write attempt exits to");
  w("the VMM, which captures the context and sends it over the IDC channel to the");
  w("health-monitoring VM. Its engine evaluates the policy: the writes are denied.\n");
  const report = await runGuest({
    scenario: "text-patch",
    onSerial: (line) => w(`  guest| ${line}`),
  });
  w("");
  printReadable(report);
  return report.summary.guest.outcome === "completed" && report.problems.length === 0 ? EXIT.OK : EXIT.RUN_FAILED;
}

const sayErr = (m: string) => process.stderr.write(`guardvisor: ${m}\n`);

export function buildProgram(setExit: (code: number) => void, argv: readonly string[] = process.argv): Command {
  const args = argv.slice(2);
  const program = new Command("guardvisor")
    .description("A KVM virtual machine monitor that keeps guest kernels healthy and untampered.")
    .version("0.1.0")
    .showHelpAfterError(false)
    .addHelpText("after", EXIT_HELP);

  program
    .command("run")
    .description("boot a guest kernel (a built-in scenario or your own ELF) and watch it to its end")
    .option(
      "--scenario <name>",
      `a built-in gv-kernel scenario (${SCENARIOS.map((s) => s.name).join(", ")}); repeat it to give each guest its own; ` +
        `with --linux, one Linux scenario (${LINUX_SCENARIOS.join(", ")}) or all, run in the test initramfs with the seal on`,
      collect,
    )
    .option("--kernel <elf>", "your own kernel: an ELF64 x86-64 image following docs/guest-abi.md")
    .option("--linux <bzImage>", "boot a stock Linux kernel on one vCPU and print its console (docs/linux-guests.md)")
    .option("--initrd <file>", "with --linux: the initramfs (with --scenario: the test initramfs, built when missing)")
    .option(
      "--system-map <file>",
      "with --linux: the kernel's System.map (checked and loaded; default: the kernel's own kallsyms tables)",
    )
    .option(
      "--seal",
      "with --linux: seal the kernel's code and read-only data once user space runs, pin CR0.WP/SMEP/SMAP and the syscall MSRs, catch oopses and panics (writes denied; the kernel's own text_poke allowed)",
    )
    .option("--guests <n>", `guests sharing one health VM (1..${ABI_CONSTANTS.IDC_MAX_GUESTS})`, intOption("--guests"))
    .addOption(
      new Option(
        "--decider <name>",
        "who rules on events: the health VM, or the VMM itself (with --linux the default is vmm)",
      )
        .choices([...DECIDERS])
        .default(DEFAULT_DECIDER),
    )
    .option(
      "--inject-hm-fault <mode[@N]>",
      "make the health VM crash, hang, answer garbage, answer late, or scribble over the IDC ring counters and crash, at its N-th request (crash|hang|garbage|slow|scribble[@N])",
      parseInject,
    )
    .option(
      "--duration <seconds>",
      "soak: run the scenarios again and again (each guest taking them in turn) for this long; the summary counts every run",
      intOption("--duration"),
    )
    .option("--hm-chaos", "crash the health VM at a random request (1..20), again after every restart")
    .option("--json", "print one JSON summary object on stdout when the run ends")
    .option("--audit <file>", "append one JSON line per event, with full context, to this file")
    .option("--mem <MiB>", "guest RAM in MiB (even, 4..4096)", intOption("--mem"), DEFAULT_MEM_MIB)
    .option(
      "--timeout <seconds>",
      "stop the guest after this long",
      intOption("--timeout"),
      Math.ceil(DEFAULT_TIMEOUT_MS / 1000),
    )
    .option("--cmdline <text>", "extra kernel command-line text")
    .option("--serial", "echo the guest's serial output on stderr")
    .option(
      "--metrics-port <port>",
      "serve Prometheus metrics on http://127.0.0.1:PORT/metrics during the run (0: any free port)",
      intOption("--metrics-port"),
    )
    .option(
      "--control <socket>",
      "listen on this Unix socket for `guardvisor guests` and `guardvisor resume` (a guest a pause verdict parked waits for resume)",
    )
    .option(
      "--policy <file>",
      "the policy (YAML or JSON, docs/policy.md; SIGHUP reloads it without restarting guests); default: the built-in one",
    )
    .option(
      "--exception-entry <symbol|0xaddr>",
      "the guest's common exception entry, for first-time exception capture (default: the symbol gv_exception_entry)",
      parseEntry,
    )
    .option(
      "--hang-timeout <ms>",
      "a guest vCPU without an exit for this long is hung (with --linux: a sealed vCPU in ring 0 with interrupts off; 0: no watchdog)",
      intOption("--hang-timeout"),
      DEFAULT_HANG_TIMEOUT_MS,
    )
    .option(...HM_TIMEOUT_OPTION)
    .option(NO_LAB[0], NO_LAB[1])
    .addHelpText(
      "after",
      `\n--scenario all runs every built-in scenario in turn, the stock Linux ones included (in the lab where this host cannot run a stock kernel), and prints one verdict per scenario; with --linux BZIMAGE, only the Linux ones.${TIME_SCALE_HELP}${EXIT_HELP}`,
    )
    .action(async (flags: RunFlags, cmd: Command) => {
      if (flags.linux !== undefined) {
        const linuxFlags = linuxRunFlags(flags, cmd);
        checkLinuxFlags(linuxFlags);
        const lab = await runInLabIfNoKvm(flags.lab, args, sayErr, { needsHardwareVirt: true });
        setExit(lab ?? (await runLinuxCommand(linuxFlags, sayErr)));
        return;
      }
      if (flags.initrd !== undefined || flags.systemMap !== undefined || flags.seal) {
        throw new GuardvisorError("CONFIG_INVALID", "--initrd, --system-map, --seal: only with --linux");
      }
      checkRunFlags(flags);
      setExit((await runInLabIfNoKvm(flags.lab, args, sayErr)) ?? (await runCommand(flags)));
    });

  program
    .command("scenarios")
    .description("list the built-in scenarios")
    .option("--json", "print them as JSON")
    .action((flags: { json?: boolean }) => {
      // gv-kernel's scenarios, then the stock Linux ones (run --linux BZIMAGE --scenario NAME).
      const all = [
        ...SCENARIOS.map((s) => ({ name: s.name, description: s.description, guest: "gv-kernel" })),
        ...LINUX_SCENARIOS.map((n) => ({ name: n, description: LINUX_SCENARIO_DESCRIPTIONS[n], guest: "linux" })),
      ];
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(all)}\n`);
      } else {
        const width = Math.max(...all.map((s) => s.name.length));
        for (const s of all) {
          const how = s.guest === "linux" ? " (run --linux BZIMAGE --scenario)" : "";
          process.stdout.write(`${s.name.padEnd(width)}  ${s.description}${how}\n`);
        }
      }
      setExit(EXIT.OK);
    });

  program
    .command("demo")
    .description("a short demo: a kernel-code patch attack denied, the guest still healthy")
    .option(NO_LAB[0], NO_LAB[1])
    .option("--lab-setup", "where /dev/kvm is missing and the lab is not installed, install it first (root; npm start)")
    .action(async (flags: { lab: boolean; labSetup?: boolean }) =>
      setExit(
        (await runInLabIfNoKvm(
          flags.lab,
          args.filter((a) => a !== "--lab-setup"),
          sayErr,
          { setup: flags.labSetup },
        )) ?? (await demoCommand()),
      ),
    );

  registerAuditCommands(program, setExit);
  registerControlCommands(program, setExit);
  registerPolicyCommands(program);
  registerBenchCommands(program, setExit);
  registerLabCommands(program, setExit, () => args);
  return program;
}

function exitCodeFor(e: unknown): number {
  if (isGuardvisorError(e)) {
    switch (e.code) {
      case "KVM_UNAVAILABLE":
      case "LAB_UNAVAILABLE":
        return EXIT.KVM_UNAVAILABLE;
      case "LAB_FAILED":
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
  }, argv);
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
