/**
 * Kernel image files: where the built gv-kernel lies, and reading one with a
 * clear error. The run and the policy compiler both read kernels through here.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { GuardvisorError } from "../errors.js";
import { packageRoot } from "../kvm/native.js";

/** The gv-kernel `npm run build` makes. */
export function defaultKernelPath(): string {
  return join(packageRoot(), "guest", "out", "gv-kernel.elf");
}

/** A kernel file's bytes. @throws GuardvisorError IO naming the file (and how to build the default one). */
export function readKernelFile(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT" ? "no such file" : (err.message ?? String(e));
    const hint = path === defaultKernelPath() ? " (build the guest with 'npm run build')" : "";
    throw new GuardvisorError("IO", `cannot read kernel ${path}: ${why}${hint}`);
  }
}
