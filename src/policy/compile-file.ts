/**
 * A policy file compiled against a kernel image: what `guardvisor policy
 * compile` writes and what a run loads.
 */
import { writeFileSync } from "node:fs";
import { type CompiledPolicy, compilePolicy, type Policy } from "../decide/policy.js";
import { parseElf } from "../elf/elf.js";
import { defaultKernelPath, readKernelFile } from "../elf/kernel-file.js";
import { GuardvisorError } from "../errors.js";
import { makeRegions, type ProtectedRegion } from "../model/regions.js";
import { loadPolicyFile, type PolicyFile } from "./load.js";
import { type PolicyKernel, policyKernel, resolvePolicy } from "./resolve.js";

export interface CompiledPolicyFile {
  file: PolicyFile;
  kernelPath: string;
  /** The kernel's protected regions with the ids a VM built from it uses. */
  regions: ProtectedRegion[];
  policy: Policy;
  compiled: CompiledPolicy;
}

/**
 * Reads and parses a kernel image for resolving policies against.
 * @throws GuardvisorError IO when it cannot be read, ELF_INVALID when it is not a valid image.
 */
export function readPolicyKernel(path: string): PolicyKernel {
  return policyKernel(parseElf(readKernelFile(path)), path);
}

/** Resolves and compiles an already loaded policy file against a kernel. */
export function compilePolicyForKernel(file: PolicyFile, kernel: PolicyKernel): Omit<CompiledPolicyFile, "kernelPath"> {
  const policy = resolvePolicy(file, kernel);
  const regions = makeRegions(kernel.regions, Number.MAX_SAFE_INTEGER);
  return { file, regions, policy, compiled: compilePolicy(policy, regions) };
}

/**
 * Loads a policy file and compiles it against a kernel (by default the built
 * gv-kernel).
 * @throws GuardvisorError CONFIG_INVALID, IO or ELF_INVALID.
 */
export function compilePolicyFile(policyPath: string, kernelPath: string = defaultKernelPath()): CompiledPolicyFile {
  const file = loadPolicyFile(policyPath);
  const kernel = readPolicyKernel(kernelPath);
  return { ...compilePolicyForKernel(file, kernel), kernelPath };
}

/** Writes a compiled rule table. @throws GuardvisorError IO. */
export function writeRuleTableFile(path: string, table: Uint8Array): void {
  try {
    writeFileSync(path, table);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new GuardvisorError("IO", `cannot write ${path}: ${err.code ?? err.message}`);
  }
}
