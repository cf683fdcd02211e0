/**
 * `guardvisor bench [--json] [--quick]`: every verdict path measured against
 * the bare KVM exit in one run (src/bench/, docs/performance.md).
 * `guardvisor bench --host`: the per-exit software alone, at native speed and
 * without KVM, against C baselines measured in the same run (src/bench/host.ts).
 *
 * Exit codes: 0 every measurement was taken (targets are reported, not
 * enforced); 1 a measurement could not be taken (a guest did not complete, a
 * verdict was fail-safe, a number is missing); 2 bad usage or a missing
 * build; 3 KVM is unavailable; 70 internal error. Errors are one line.
 */
import type { Command } from "commander";
import { formatHostMarkdown, formatHostReport, runHostBench } from "../bench/host.js";
import { buildBenchJson, formatBenchMarkdown, formatBenchReport } from "../bench/report.js";
import { runBench } from "../bench/run.js";
import { GuardvisorError, isGuardvisorError } from "../errors.js";
import { DEFAULT_KVM_PATH } from "../kvm/kvm.js";
import { HM_TIMEOUT_OPTION } from "./options.js";

const BENCH_EXIT_HELP = `
Exit codes:
  0   every measurement was taken (targets are reported, not enforced)
  1   a measurement could not be taken (a guest did not complete, a verdict was fail-safe)
  2   bad usage, or the kernel or baseline is not built
  3   KVM is unavailable (/dev/kvm missing, not accessible, or lacking a capability)
  70  internal error`;

interface BenchFlags {
  json?: boolean;
  markdown?: boolean;
  quick?: boolean;
  host?: boolean;
  kvm: string;
  hmTimeout: number;
}

async function benchCommand(flags: BenchFlags): Promise<number> {
  if (flags.json && flags.markdown) throw new GuardvisorError("CONFIG_INVALID", "give --json or --markdown, not both");
  const progress = flags.json ? undefined : (line: string) => process.stderr.write(`bench: ${line}\n`);
  try {
    if (flags.host) {
      const h = await runHostBench({ quick: flags.quick, onProgress: progress });
      process.stdout.write(
        flags.json ? `${JSON.stringify(h)}\n` : flags.markdown ? formatHostMarkdown(h) : formatHostReport(h),
      );
      return 0;
    }
    const m = await runBench({
      quick: flags.quick,
      kvmPath: flags.kvm,
      hmTimeoutMs: flags.hmTimeout,
      onProgress: progress,
    });
    const json = buildBenchJson(m);
    const out = flags.json
      ? `${JSON.stringify(json)}\n`
      : flags.markdown
        ? formatBenchMarkdown(json)
        : formatBenchReport(json);
    process.stdout.write(out);
    return 0;
  } catch (e) {
    // A measurement that could not be taken is a failed run (1); everything else keeps its usual exit code.
    if (isGuardvisorError(e) && e.code === "GUEST_FAULT") {
      process.stderr.write(`guardvisor: error: ${e.message.split("\n")[0]}\n`);
      return 1;
    }
    throw e;
  }
}

export function registerBenchCommands(program: Command, setExit: (code: number) => void = () => {}): void {
  program
    .command("bench")
    .description("measure every verdict path against a bare KVM exit, in one run (docs/performance.md)")
    .option("--json", "print one JSON object with every measurement on stdout")
    .option("--markdown", "print the results tables of docs/performance.md, filled in")
    .option("--quick", "shorter runs: the whole bench in under a minute")
    .option("--host", "no KVM: the per-exit software alone (dispatcher path, IDC round trip) against C baselines")
    .option("--kvm <path>", "the KVM device", DEFAULT_KVM_PATH)
    .option(...HM_TIMEOUT_OPTION)
    .addHelpText("after", BENCH_EXIT_HELP)
    .action(async (flags: BenchFlags) => setExit(await benchCommand(flags)));
}
