/**
 * `guardvisor policy check FILE` and `guardvisor policy compile FILE -o OUT`.
 * Errors are thrown as GuardvisorError; the caller prints them as one line.
 */
import type { Command } from "commander";
import { RULE_TABLE_HEADER } from "../abi/guest-abi.js";
import type { Policy } from "../decide/policy.js";
import { defaultKernelPath } from "../elf/kernel-file.js";
import {
  compilePolicyFile,
  compilePolicyForKernel,
  readPolicyKernel,
  writeRuleTableFile,
} from "../policy/compile-file.js";
import { loadPolicyFile } from "../policy/load.js";

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

function describe(p: Policy): string {
  const parts = [`mode ${p.mode ?? "enforce"}`, plural(p.rules.length, "rule")];
  if (p.objects?.msrs.length) parts.push(plural(p.objects.msrs.length, "MSR object"));
  if (p.restart) parts.push(`restart limit ${p.restart.limit}`);
  return parts.join(", ");
}

export function registerPolicyCommands(program: Command): void {
  const policy = program
    .command("policy")
    .description("check and compile policy files (YAML or JSON; see docs/policy.md)");

  policy
    .command("check")
    .description("check a policy file; with --kernel, also resolve its sections and symbols against that kernel")
    .argument("<file>", "the policy file")
    .option("--kernel <elf>", "resolve against this kernel image too")
    .action((path: string, flags: { kernel?: string }) => {
      const file = loadPolicyFile(path);
      const spec = file.spec;
      if (flags.kernel) {
        const { policy: p } = compilePolicyForKernel(file, readPolicyKernel(flags.kernel));
        process.stdout.write(`${path}: ok: policy ${p.name} against ${flags.kernel}: ${describe(p)}\n`);
        return;
      }
      const counts = [
        plural(spec.rules?.length ?? 0, "rule"),
        plural(spec.exceptions?.length ?? 0, "exception"),
        plural(Object.keys(spec.regions ?? {}).length, "region"),
      ];
      process.stdout.write(`${path}: ok: policy ${file.name}, mode ${spec.mode}, ${counts.join(", ")}\n`);
    });

  policy
    .command("compile")
    .description("compile a policy file against a kernel into the binary rule table both deciders load")
    .argument("<file>", "the policy file")
    .requiredOption("-o, --output <out>", "where to write the rule table")
    .option("--kernel <elf>", "the kernel whose sections and symbols the policy names", defaultKernelPath())
    .action((path: string, flags: { output: string; kernel: string }) => {
      const r = compilePolicyFile(path, flags.kernel);
      writeRuleTableFile(flags.output, r.compiled.table);
      const hash = new DataView(r.compiled.table.buffer).getUint32(RULE_TABLE_HEADER.offset("policy_hash"), true);
      process.stdout.write(
        `${flags.output}: policy ${r.policy.name} (${describe(r.policy)}), ${r.compiled.table.length} bytes, ` +
          `hash 0x${hash.toString(16).padStart(8, "0")}\n`,
      );
    });

  // Parse errors in these nested commands go through the caller's error handling too.
  for (const c of policy.commands) c.exitOverride();
}
