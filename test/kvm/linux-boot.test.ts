/**
 * A stock Debian kernel (bzImage) boots to user space on one vCPU: the test
 * initramfs's /init prints its result line on the serial console and resets
 * the machine, which ends the run. Boot time to the result line and the exit
 * count are reported as test diagnostics.
 *
 * The guest is built by src/linux/test-guest.ts (build/linux/, never
 * committed). Limit: GV_LINUX_BOOT_TIMEOUT_S (default 120 s), times the time scale.
 * GV_LINUX_CONSOLE=1 streams the guest's console to stderr as it arrives.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Kvm } from "../../src/kvm/kvm.js";
import { LinuxVm } from "../../src/linux/linux-vm.js";
import { parseResultLine } from "../../src/linux/test-guest.js";
import { skipWithoutHardwareVirt } from "../support/kvm.js";
import { LIMIT_MS, testGuestConfig } from "../support/linux-guest.js";

describe("a stock Linux guest", { skip: skipWithoutHardwareVirt }, () => {
  it("boots the Debian kernel to user space, prints its result line and resets", {
    timeout: LIMIT_MS + 120_000,
  }, async (t) => {
    const kvm = Kvm.open();
    let result: Record<string, string> | undefined;
    let resultAtMs = 0;
    let resultExits = 0;
    let vm: LinuxVm | undefined;
    try {
      vm = await LinuxVm.build(kvm, {
        ...testGuestConfig("linux-benign"),
        onSerial: (line) => {
          if (process.env.GV_LINUX_CONSOLE === "1") {
            process.stderr.write(
              `[${((vm?.elapsedMs() ?? 0) / 1000).toFixed(1)} s, ${vm?.exitCount() ?? 0} exits] ${line}\n`,
            );
          }
          const r = parseResultLine(line);
          if (r && !result && vm) {
            result = r;
            resultAtMs = vm.elapsedMs();
            resultExits = vm.exitCount();
          }
        },
      });
      const end = await vm.runToEnd(LIMIT_MS);
      const tail = end.console.slice(-25).join("\n");
      t.diagnostic(
        `result line after ${(resultAtMs / 1000).toFixed(1)} s and ${resultExits} exits; ` +
          `run ended (${end.outcome}) after ${(end.elapsedMs / 1000).toFixed(1)} s and ${end.exits} exits; ` +
          `counters ${JSON.stringify(end.counters)}`,
      );
      assert.ok(result, `no GV-RESULT line; the run ended ${end.outcome}: ${end.detail}\n${tail}`);
      assert.equal(result.scenario, "linux-benign");
      assert.equal(result.status, "ok");
      assert.match(result.kernel ?? "", /^\d+\.\d+/);
      assert.equal(end.outcome, "reset", `${end.detail}\n${tail}`);
      assert.equal(end.panicked, false);
      assert.ok(end.console.some((l) => l.includes("Linux version")));
      assert.ok(end.console.some((l) => /printk: console \[ttyS0\] enabled/.test(l)));
      // User space wrote through the 8250 driver's interrupt-driven path.
      assert.ok((end.counters.uartInterrupts ?? 0) > 0);
    } finally {
      await vm?.destroy();
      kvm.close();
    }
  });
});
