/**
 * Test support: the two places the health-management engine runs. The health
 * VM needs /dev/kvm (its tests skip loudly without it); the hosted engine
 * process runs anywhere.
 */
import { readFileSync } from "node:fs";
import { defaultKernelPath } from "../../src/elf/kernel-file.js";
import { type EngineBackend, ProcessEngineBackend, VmEngineBackend } from "../../src/health/backends.js";
import { Kvm } from "../../src/kvm/kvm.js";
import { HM_MEM_MIB } from "../../src/run/options.js";
import { skipWithoutKvm } from "./kvm.js";

export interface EngineKind {
  name: string;
  skip: string | false;
  /** A backend and what to close after the health manager has stopped. */
  make(): { backend: EngineBackend; close(): void };
}

const ALL_ENGINES: EngineKind[] = [
  {
    name: "hosted engine process",
    skip: false,
    make: () => ({ backend: new ProcessEngineBackend(), close: () => {} }),
  },
  {
    name: "health VM on KVM",
    skip: skipWithoutKvm,
    make: () => {
      const kvm = Kvm.open();
      const kernel = readFileSync(defaultKernelPath());
      return {
        backend: new VmEngineBackend(kvm, kernel, defaultKernelPath(), HM_MEM_MIB),
        close: () => kvm.close(),
      };
    },
  },
];

/**
 * GV_TEST_ENGINES=hosted|vm picks one (npm test runs the hosted engine on
 * this host and the health VM where KVM is: here or in the lab); unset, both.
 */
export const ENGINE_FILTER = process.env.GV_TEST_ENGINES;

export const ENGINES: EngineKind[] = ALL_ENGINES.filter(
  (e) =>
    ENGINE_FILTER === undefined || ENGINE_FILTER === "" || (ENGINE_FILTER === "vm") === (e.name === "health VM on KVM"),
);

/** The hosted engine (for tests that need an engine but test no engine behaviour). */
export const HOSTED_ENGINE: EngineKind = ALL_ENGINES[0]!;
