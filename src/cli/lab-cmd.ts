/**
 * `guardvisor lab`: the emulated x86-64 machine with KVM (QEMU, TCG with
 * SVM, Debian's kernel with kvm_amd) that runs Guardvisor's KVM paths on a
 * host without /dev/kvm. `lab setup` installs it, `lab check` shows what it
 * found, `lab -- CMD…` runs a command inside it.
 */
import type { Command } from "commander";
import { Option } from "commander";
import { GuardvisorError } from "../errors.js";
import { packageRoot } from "../kvm/native.js";
import { labInitramfs } from "../lab/initramfs.js";
import { findLabInputs, MIN_QEMU_MAJOR } from "../lab/inputs.js";
import { defaultTcgMode, labCacheDir, runInLab, TCG_MODES, type TcgMode } from "../lab/machine.js";
import { labSetup } from "../lab/setup.js";

import { intOption } from "./options.js";

const LAB_HELP = `
Examples:
  guardvisor lab setup                          install QEMU ${MIN_QEMU_MAJOR}, Debian's kernel and busybox (root)
  guardvisor lab check                          what the lab is made of, and a KVM probe inside it
  guardvisor lab -- npx guardvisor run --scenario all --json
  guardvisor lab --tcg single -- npm test

Options of lab -- CMD (before the --):
  --tcg multi|single   TCG threading (default: GV_LAB_TCG, else multi)
  --timeout SECONDS    stop the lab after this long

The command runs in the same working directory with this environment, plus
GV_LAB=1, TMPDIR=/dev/shm and GV_TIME_SCALE (how many times slower the lab
ran a calibration workload than this host; every default time limit scales by
it). Its stdout and stderr stream back and its exit code is the lab's.
SIGHUP is passed to the command.
Ctrl-C or --timeout stop the emulated machine. Everything runs 20-50x slower
than on a KVM host: use the lab for behaviour and ratios, never for absolute
times.

Exit codes: the command's own; 3 the lab cannot start (a package is missing);
70 the lab failed before the command ended (or timed out).`;

interface LabFlags {
  tcg?: TcgMode;
  timeout?: number;
}

export function registerLabCommands(program: Command, setExit: (code: number) => void, rawArgs: () => string[]) {
  const lab = program
    .command("lab")
    .description("the emulated machine with KVM, for hosts without /dev/kvm: setup, check, or -- CMD…")
    .addHelpText("after", LAB_HELP);

  lab
    .command("setup")
    .description("install what the lab needs from Debian's packages (as root)")
    .action(() => {
      const say = (m: string) => process.stderr.write(`lab: ${m}\n`);
      const inputs = labSetup(say);
      const ramfs = labInitramfs(inputs, labCacheDir());
      say(`initramfs ${ramfs.built ? "built" : "cached"}: ${ramfs.path}`);
      setExit(0);
    });

  lab
    .command("check")
    .description("print what the lab found, boot it, and probe KVM inside it (/dev/kvm, hardware breakpoints)")
    .option("--json", "print one JSON object")
    .addOption(tcgOption())
    .action(async (flags: LabFlags & { json?: boolean }) => setExit(await labCheck(flags)));

  lab
    .command("exec", { isDefault: true, hidden: true })
    .argument("[command...]", "the command to run in the lab (after --)")
    .addOption(tcgOption())
    .option("--timeout <seconds>", "stop the lab after this long", intOption("--timeout", 1))
    .action(async (command: string[], flags: LabFlags) => {
      if (command.length === 0 || !rawArgs().includes("--")) {
        throw new GuardvisorError("CONFIG_INVALID", "lab: give setup, check, or -- COMMAND [ARGS…]");
      }
      const r = await runInLab({
        command,
        tcg: flags.tcg,
        timeoutMs: flags.timeout ? flags.timeout * 1000 : undefined,
      });
      setExit(r.exitCode);
    });
}

function tcgOption(): Option {
  return new Option("--tcg <mode>", "TCG threading: multi (one host thread per emulated CPU) or single")
    .choices([...TCG_MODES])
    .default(defaultTcgMode());
}

/** The probe run inside the lab: a #DE from ring 3 must be captured by the VMM through its hardware breakpoint. */
const PROBE = [
  "test -c /dev/kvm && echo 'kvm: /dev/kvm present' || echo 'kvm: /dev/kvm MISSING'",
  'echo "kernel: $(uname -r)"',
  "node bin/guardvisor.js run --scenario div-zero --decider vmm --json --no-lab",
].join("; ");

async function labCheck(flags: LabFlags & { json?: boolean }): Promise<number> {
  const inputs = findLabInputs();
  const ramfs = labInitramfs(inputs, labCacheDir());
  const chunks: Buffer[] = [];
  const sink = { write: (d: Buffer | string) => chunks.push(Buffer.from(d)) } as unknown as NodeJS.WritableStream;
  const errs: Buffer[] = [];
  const errSink = { write: (d: Buffer | string) => errs.push(Buffer.from(d)) } as unknown as NodeJS.WritableStream;
  const r = await runInLab({
    command: ["sh", "-c", PROBE],
    cwd: packageRoot(),
    tcg: flags.tcg,
    stdout: sink,
    stderr: errSink,
  });
  const out = Buffer.concat(chunks).toString("utf8");
  const kvm = /kvm: \/dev\/kvm present/.test(out);
  const json = out.split("\n").find((l) => l.startsWith("{"));
  let breakpoints = false;
  let detail = "the probe run printed no summary";
  if (json) {
    const s = JSON.parse(json) as { events?: { kind: string; vector?: number; guest?: string }[] };
    const de = s.events?.find((e) => e.kind === "cpu-exception" && e.vector === 0);
    breakpoints = de !== undefined;
    detail = de
      ? `#DE captured at the exception entry before the guest handled it (guest: ${de.guest ?? "no report"})`
      : "no #DE captured: KVM_SET_GUEST_DEBUG hardware breakpoints did not fire";
  }
  const result = {
    qemu: { path: inputs.qemu, version: inputs.qemuVersion },
    kernel: { path: inputs.kernel, version: inputs.kernelVersion },
    busybox: inputs.busybox,
    initramfs: ramfs.path,
    tcg: r.tcg,
    bootMs: r.bootMs,
    timeScale: r.scale,
    devKvm: kvm,
    hardwareBreakpoints: breakpoints,
    ok: kvm && breakpoints && r.exitCode === 0,
  };
  if (flags.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else {
    const w = (s: string) => process.stdout.write(`${s}\n`);
    w(`qemu:        ${inputs.qemuVersion} (${inputs.qemu}), TCG thread=${r.tcg}`);
    w(`kernel:      ${inputs.kernelVersion} (${inputs.kernel})`);
    w(`busybox:     ${inputs.busybox}`);
    w(`initramfs:   ${ramfs.path}`);
    w(`boot:        ${(r.bootMs / 1000).toFixed(1)} s to the command`);
    w(`time scale:  ${r.scale} (GV_TIME_SCALE inside the lab)`);
    w(`/dev/kvm:    ${kvm ? "present" : "MISSING"}`);
    w(`hw breakpoints: ${breakpoints ? "fire" : "DO NOT FIRE"}: ${detail}`);
    if (!result.ok) w(Buffer.concat(errs).toString("utf8").trim().split("\n").slice(-5).join("\n"));
    w(result.ok ? "lab: ok" : "lab: NOT usable");
  }
  return result.ok ? 0 : 1;
}
