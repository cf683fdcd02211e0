/**
 * Test support: KVM tests run only where /dev/kvm is usable, and say so loudly
 * when they cannot.
 */
import { accessSync, constants, existsSync } from "node:fs";
import { hostKvmIsPvm } from "../../src/lab/fallback.js";

export function kvmSkipReason(): string | undefined {
  if (!existsSync("/dev/kvm")) return "/dev/kvm does not exist";
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch {
    return "/dev/kvm is not accessible";
  }
  return undefined;
}

const reason = kvmSkipReason();
if (reason && process.env.GV_REQUIRE_KVM === "1") {
  // CI and the lab: a KVM test that cannot run is a failure, never a skip.
  throw new Error(`GV_REQUIRE_KVM=1 but ${reason}`);
}
if (reason) {
  process.stderr.write(`\n!!!!! KVM TESTS SKIPPED: ${reason}. These tests did NOT run. !!!!!\n\n`);
}

/** Pass as the `skip` option of a KVM test: false when KVM works, else the reason. */
export const skipWithoutKvm: string | false = reason ? `SKIPPED, no KVM: ${reason}` : false;

/**
 * For KVM tests of a stock Linux guest: PVM (KVM without hardware
 * virtualisation) runs a stock kernel's ring 0 through its instruction
 * emulator, about a thousand times slower and missing instructions Linux
 * needs (docs/linux-guests.md). There they run only when asked
 * (GV_LINUX_ON_PVM=1); `npm test` runs them in the lab instead.
 */
export const skipWithoutHardwareVirt: string | false =
  skipWithoutKvm ||
  (hostKvmIsPvm() && process.env.GV_LINUX_ON_PVM !== "1"
    ? "SKIPPED on PVM: a stock kernel's ring 0 needs instructions PVM's emulator lacks (docs/linux-guests.md); run it in the lab, or set GV_LINUX_ON_PVM=1"
    : false);
if (skipWithoutHardwareVirt && !skipWithoutKvm) process.stderr.write(`\n!!!!! ${skipWithoutHardwareVirt} !!!!!\n\n`);
