/**
 * Where there is no /dev/kvm, commands that need KVM run themselves again
 * inside the lab, unless told not to (--no-lab) or already there.
 */
import { accessSync, constants, existsSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../kvm/native.js";
import { runInLab } from "./machine.js";
import { labReady, labSetup } from "./setup.js";

/** True when /dev/kvm (or `path`) exists and this user may open it. */
export function kvmUsable(path = "/dev/kvm"): boolean {
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** The host's KVM is PVM (KVM without hardware virtualisation; guest ring 0 goes through its emulator). */
export function hostKvmIsPvm(): boolean {
  return existsSync("/sys/module/kvm_pvm");
}

/** True inside the lab (the job script sets GV_LAB=1). */
export const insideLab = (): boolean => process.env.GV_LAB === "1";

/** The one line said before a command moves into the lab. */
export const LAB_NOTICE =
  "no /dev/kvm on this host: running in the lab (emulated KVM, 20-50x slower; --no-lab to refuse)";

export const PVM_LAB_NOTICE =
  "this host's KVM is PVM, which cannot run a stock kernel's ring 0: running in the lab (emulated KVM; --no-lab to refuse)";

/**
 * Run `guardvisor ARGS --no-lab` in the lab when this host has no KVM and
 * `allowed`: resolves with its exit code, or undefined to run here.
 */
export async function runInLabIfNoKvm(
  allowed: boolean,
  args: readonly string[],
  say: (m: string) => void,
  opts: { setup?: boolean; needsHardwareVirt?: boolean } = {},
): Promise<number | undefined> {
  if (!allowed || insideLab()) return undefined;
  // A PVM /dev/kvm cannot run a stock kernel's ring 0: such a guest goes to the lab too.
  const pvmOnly = opts.needsHardwareVirt === true && kvmUsable() && hostKvmIsPvm();
  if (kvmUsable() && !pvmOnly) return undefined;
  if (opts.setup && !labReady()) {
    say("no /dev/kvm on this host and the lab is not installed: setting it up (guardvisor lab setup)");
    labSetup((m) => say(`lab setup: ${m}`));
  }
  say(pvmOnly ? PVM_LAB_NOTICE : LAB_NOTICE);
  const bin = join(packageRoot(), "bin", "guardvisor.js");
  const r = await runInLab({ command: [process.execPath, bin, ...args, "--no-lab"] });
  return r.exitCode;
}
