/**
 * `guardvisor run --linux BZIMAGE [--initrd FILE] [--cmdline TEXT] [--system-map FILE]`:
 * boot a stock Linux kernel on one vCPU and print its console until it ends
 * (docs/linux-guests.md).
 */

import { readFileSync } from "node:fs";
import { configError, GuardvisorError } from "../errors.js";
import { Kvm } from "../kvm/kvm.js";
import { DEFAULT_LINUX_CMDLINE, labLinuxCmdline, MIB, validateLinuxMemMiB } from "../linux/boot-params.js";
import { type LinuxSealReport, LinuxVm } from "../linux/linux-vm.js";
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
  /** Seal the kernel's code and read-only data once user space runs (default policy: writes denied). */
  seal?: boolean;
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
  const systemMap = flags.systemMap
    ? parseSystemMap(readInput(flags.systemMap, "--system-map"), flags.systemMap)
    : undefined;
  if (systemMap) sayErr(`System.map: ${systemMap.symbols.length} symbols`);
  const cmdline = `${DEFAULT_LINUX_CMDLINE}${labLinuxCmdline()} ${flags.cmdline ?? ""}`.trim();
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
      seal: flags.seal === true,
      systemMap,
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
          ...(end.seal ? { seal: sealSummary(end.seal) } : {}),
        })}\n`,
      );
    } else {
      sayErr(`the Linux guest ended (${end.outcome}) after ${secs} s and ${end.exits} exits: ${end.detail}`);
      if (end.seal) sayErr(sealLine(end.seal));
    }
    const clean = (end.outcome === "reset" || (end.outcome === "exit" && end.code === 0)) && !end.panicked;
    return clean ? 0 : 1;
  } finally {
    await vm?.destroy();
    kvm.close();
  }
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** The seal's report as JSON: when it was armed, what it covers, each write that hit it. */
function sealSummary(s: LinuxSealReport): Record<string, unknown> {
  const a = s.armed;
  return {
    source: s.ranges.source,
    ranges: s.ranges.ranges.map((r) => ({ name: r.name, start: hex(r.start), end: hex(r.end) })),
    armed: a
      ? {
          afterMs: Math.round(a.elapsedMs),
          exits: a.exits,
          rip: hex(a.rip),
          protectedBytes: a.protectedBytes,
          readOnlyBytes: a.readOnlyBytes,
        }
      : null,
    events: s.events.map((e) => ({
      seq: e.seq,
      kind: e.kind,
      target: e.target,
      rip: hex(e.rip),
      ...(e.writer ? { writer: e.writer } : {}),
      verdict: e.verdict,
      rule: e.rule,
      ...(e.note ? { note: e.note } : {}),
    })),
  };
}

function sealLine(s: LinuxSealReport): string {
  const a = s.armed;
  if (!a) return "seal: never armed (the guest was not seen in ring 3)";
  const denied = s.events.filter((e) => e.verdict === "deny").length;
  return (
    `seal: armed after ${(a.elapsedMs / 1000).toFixed(1)} s at exit ${a.exits}, ${a.protectedBytes} bytes of ` +
    `${s.ranges.ranges.map((r) => r.name).join(" and ")}; ${s.events.length} write(s) hit it, ${denied} denied`
  );
}
