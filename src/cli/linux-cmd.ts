/**
 * `guardvisor run --linux BZIMAGE [--initrd FILE] [--cmdline TEXT] [--system-map FILE]`:
 * boot a stock Linux kernel on one vCPU and print its console until it ends
 * (docs/linux-guests.md).
 */

import { readFileSync } from "node:fs";
import { configError, GuardvisorError } from "../errors.js";
import { Kvm } from "../kvm/kvm.js";
import { insideLab } from "../lab/fallback.js";
import { DEFAULT_LINUX_CMDLINE, MIB, validateLinuxMemMiB } from "../linux/boot-params.js";
import { LinuxVm } from "../linux/linux-vm.js";
import { parseSystemMap } from "../linux/system-map.js";
import { scaled } from "../time-scale.js";

export const DEFAULT_LINUX_MEM_MIB = 256;
/** Default --timeout for a Linux guest (a stock kernel on a slow host takes minutes). */
export const DEFAULT_LINUX_TIMEOUT_S = 600;

export interface LinuxRunFlags {
  linux: string;
  initrd?: string;
  cmdline?: string;
  systemMap?: string;
  /** MiB; undefined: DEFAULT_LINUX_MEM_MIB. */
  mem?: number;
  /** Seconds; undefined: DEFAULT_LINUX_TIMEOUT_S (times the time scale). */
  timeout?: number;
  json?: boolean;
}

function readInput(path: string, field: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new GuardvisorError("IO", `${field}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
}

/** Boot, stream the console to stdout, and return the process exit code (0: the guest reset or exited with 0). */
export async function runLinuxCommand(flags: LinuxRunFlags, sayErr: (m: string) => void): Promise<number> {
  const memMiB = flags.mem ?? DEFAULT_LINUX_MEM_MIB;
  validateLinuxMemMiB(memMiB);
  if (flags.timeout !== undefined && (!Number.isInteger(flags.timeout) || flags.timeout <= 0)) {
    throw configError("--timeout", "must be a positive number of seconds");
  }
  const kernel = readInput(flags.linux, "--linux");
  const initrd = flags.initrd ? readInput(flags.initrd, "--initrd") : undefined;
  if (flags.systemMap) {
    const map = parseSystemMap(readInput(flags.systemMap, "--system-map"), flags.systemMap);
    sayErr(`System.map: ${map.symbols.length} symbols`);
  }
  // In the lab the guest's local APIC timer never fires (docs/linux-guests.md): the kernel keeps the PIT.
  const lab = insideLab() ? " nolapic" : "";
  const cmdline = `${DEFAULT_LINUX_CMDLINE}${lab} ${flags.cmdline ?? ""}`.trim();
  const timeoutMs = flags.timeout !== undefined ? flags.timeout * 1000 : scaled(DEFAULT_LINUX_TIMEOUT_S * 1000);
  const kvm = Kvm.open();
  let vm: LinuxVm | undefined;
  try {
    vm = await LinuxVm.build(kvm, {
      kernel,
      kernelName: flags.linux,
      initrd,
      cmdline,
      memSize: memMiB * MIB,
      onSerial: (line) => {
        if (!flags.json) process.stdout.write(`${line}\n`);
      },
    });
    const end = await vm.runToEnd(timeoutMs);
    const secs = (end.elapsedMs / 1000).toFixed(1);
    if (flags.json) {
      process.stdout.write(
        `${JSON.stringify({
          outcome: end.outcome,
          code: end.code,
          detail: end.detail,
          elapsedMs: Math.round(end.elapsedMs),
          exits: end.exits,
          panicked: end.panicked,
          counters: end.counters,
          console: end.console,
        })}\n`,
      );
    } else {
      sayErr(`the Linux guest ended (${end.outcome}) after ${secs} s and ${end.exits} exits: ${end.detail}`);
    }
    const clean = (end.outcome === "reset" || (end.outcome === "exit" && end.code === 0)) && !end.panicked;
    return clean ? 0 : 1;
  } finally {
    await vm?.destroy();
    kvm.close();
  }
}
