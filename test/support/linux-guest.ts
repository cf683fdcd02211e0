/**
 * Test support: boot the Linux test guest (src/linux/test-guest.ts) with the
 * seal on, run it to its end, and report what the seal saw.
 * GV_LINUX_CONSOLE=1 streams the guest's console to stderr as it arrives.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import type { TestContext } from "node:test";
import type { Policy } from "../../src/decide/policy.js";
import { Kvm } from "../../src/kvm/kvm.js";
import { DEFAULT_LINUX_CMDLINE, labLinuxCmdline, MIB } from "../../src/linux/boot-params.js";
import { type LinuxRunResult, LinuxVm } from "../../src/linux/linux-vm.js";
import { buildLinuxTestGuest, parseResultLine } from "../../src/linux/test-guest.js";
import { scaled } from "../../src/time-scale.js";
import { cli } from "./cli.js";

/** One boot of the test guest may take this long on real KVM (ms, before the time scale). */
const BOOT_LIMIT_MS = Number(process.env.GV_LINUX_BOOT_TIMEOUT_S ?? 120) * 1000;
/** One boot of the test guest may take this long, times the time scale (a boot takes 15 to 45 s in the lab). */
export const LIMIT_MS = scaled(BOOT_LIMIT_MS);

/** The console line Linux prints in mark_rodata_ro(), just before it runs /init. */
const RODATA_RO = /Write protecting the kernel read-only data/;

export interface SealedRun {
  end: LinuxRunResult;
  result: Record<string, string> | undefined;
  /** Exit counts when mark_rodata_ro() and "Run /init" were printed (-1: never). */
  rodataRoExits: number;
  initExits: number;
  ranges: NonNullable<LinuxVm["sealed"]>["ranges"]["ranges"];
  /** SHA-256 of the sealed ranges at the end of the run. */
  hashesAtEnd: string[];
  tail: string;
}

/** The test guest's LinuxVm config for `scenario` (the kernel, the initramfs, the command line, 256 MiB). */
export function testGuestConfig(scenario: string) {
  const guest = buildLinuxTestGuest();
  return {
    kernel: readFileSync(guest.kernel),
    kernelName: guest.kernel,
    initrd: readFileSync(guest.initrd),
    cmdline: `${DEFAULT_LINUX_CMDLINE} gv.scenario=${scenario}${labLinuxCmdline()}`,
    memSize: 256 * MIB,
  };
}

/**
 * `guardvisor run --linux <the test kernel> ARGS --json`, as the README runs
 * it: the process's result and its JSON report (the last stdout line).
 */
export function runLinuxCli(
  args: readonly string[],
  boots = 1,
  /** The whole run's limit on real KVM (ms, times the time scale here); default a boot's limit per boot. */
  limitMs = boots * BOOT_LIMIT_MS + 60_000,
  // biome-ignore lint/suspicious/noExplicitAny: parsed JSON, checked field by field by the caller
): { r: ReturnType<typeof cli>; j: Record<string, any> } {
  const r = cli(["run", "--linux", buildLinuxTestGuest().kernel, ...args, "--json"], limitMs);
  let j = {};
  try {
    j = JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "{}");
  } catch {
    const how = r.signal
      ? `ended by ${r.signal}: past its limit of ${Math.round(scaled(limitMs) / 1000)} s`
      : `exit ${r.status}`;
    assert.fail(`run --linux ${args.join(" ")}: no JSON report (${how})\n${r.stderr.slice(-2000)}`);
  }
  return { r, j };
}

/** Boot the test guest with the seal on, run it to its end, and report what the seal saw. */
export async function bootSealed(t: TestContext, scenario: string, policy?: Policy): Promise<SealedRun> {
  const kvm = Kvm.open();
  let result: Record<string, string> | undefined;
  let rodataRoExits = -1;
  let initExits = -1;
  let vm: LinuxVm | undefined;
  try {
    vm = await LinuxVm.build(kvm, {
      ...testGuestConfig(scenario),
      seal: true,
      policy,
      onSerial: (line) => {
        const exits = vm?.exitCount() ?? 0;
        if (process.env.GV_LINUX_CONSOLE === "1") {
          process.stderr.write(`[${((vm?.elapsedMs() ?? 0) / 1000).toFixed(1)} s, ${exits} exits] ${line}\n`);
        }
        if (RODATA_RO.test(line) && rodataRoExits < 0) rodataRoExits = exits;
        if (line.includes("Run /init as init process") && initExits < 0) initExits = exits;
        result ??= parseResultLine(line);
      },
    });
    const ranges = vm.sealed?.ranges.ranges ?? [];
    const end = await vm.runToEnd(LIMIT_MS);
    const armed = end.seal?.armed;
    t.diagnostic(
      `${scenario}: run ended (${end.outcome}) after ${(end.elapsedMs / 1000).toFixed(1)} s and ${end.exits} exits; ` +
        `rodata write-protected at ${rodataRoExits} exits, /init at ${initExits} exits; ` +
        (armed
          ? `seal armed after ${(armed.elapsedMs / 1000).toFixed(2)} s at exit ${armed.exits} (RIP 0x${armed.rip.toString(16)}, ` +
            `${armed.protectedBytes} bytes protected, ${armed.readOnlyBytes} bytes of read-only pages, ` +
            `${armed.slots.length} slots, armed in ${(armed.armUs / 1000).toFixed(1)} ms); `
          : "seal never armed; ") +
        `counters ${JSON.stringify(end.counters)}`,
    );
    for (const e of (end.seal?.events ?? []).slice(0, 12)) {
      t.diagnostic(
        `${e.kind} #${e.seq}: ${e.target} from RIP 0x${e.rip.toString(16)} (${e.writer ?? "no symbol"}), ` +
          `${e.verdict} by ${e.rule}; ${e.note ?? ""}`,
      );
    }
    const oops = end.console.findIndex((l) => /kernel BUG|Oops|BUG:/.test(l));
    if (oops >= 0) t.diagnostic(`console from the first oops line:\n${end.console.slice(oops, oops + 12).join("\n")}`);
    return {
      end,
      result,
      rodataRoExits,
      initExits,
      ranges,
      hashesAtEnd: vm.sealedHashes(),
      tail: end.console.slice(-25).join("\n"),
    };
  } finally {
    await vm?.destroy();
    kvm.close();
  }
}

/** The checks every sealed run passes: armed in ring 3 after /init started, over the kernel's text. */
export function assertArmed(r: SealedRun): NonNullable<NonNullable<LinuxRunResult["seal"]>["armed"]> {
  const armed = r.end.seal?.armed;
  assert.ok(armed, "the seal was never armed: the guest was never seen in ring 3");
  // Armed at user space's first system call (the breakpoint on its entry), or by a kick finding ring 3.
  if (armed.trigger === "syscall") assert.equal(armed.cpl, 0);
  else assert.equal(armed.cpl, 3);
  assert.ok(r.rodataRoExits >= 0 && r.initExits >= r.rodataRoExits, "no mark_rodata_ro / Run /init lines");
  assert.ok(armed.exits >= r.initExits, `armed at exit ${armed.exits}, before /init (${r.initExits})`);
  const [text, rodata] = r.ranges;
  assert.ok(text && rodata);
  assert.equal(armed.protectedBytes, text.end - text.start + (rodata.end - rodata.start));
  assert.ok(armed.readOnlyBytes >= armed.protectedBytes);
  assert.ok(armed.slots.some((s) => s.readonly && s.gpa <= text.start && s.gpa + s.size >= text.end));
  return armed;
}
