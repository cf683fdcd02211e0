/**
 * The seal of a stock Linux guest's code and read-only data (src/linux/linux-seal.ts):
 * the Debian kernel boots the test initramfs with the seal on; it is armed
 * at the first exit in ring 3, after the kernel wrote-protected its
 * read-only data and ran /init; the guest still prints its result line and
 * resets; the sealed bytes at the end are the bytes at seal time; and the
 * writes to sealed memory a plain boot makes after the seal are listed and
 * counted (docs/linux-guests.md, "Sealing").
 *
 * Runs in the lab on a PVM host (scripts/test.ts, NEEDS_HW_VIRT).
 * GV_LINUX_CONSOLE=1 streams the guest's console to stderr as it arrives.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { Kvm } from "../../src/kvm/kvm.js";
import { DEFAULT_LINUX_CMDLINE, LINUX_LOAD_ADDR, MIB } from "../../src/linux/boot-params.js";
import { hostKvmIsPvm } from "../../src/linux/cpuid.js";
import { LinuxVm } from "../../src/linux/linux-vm.js";
import { buildLinuxTestGuest, parseResultLine } from "../../src/linux/test-guest.js";
import { scaled } from "../../src/time-scale.js";
import { skipWithoutKvm } from "../support/kvm.js";

/** In the lab the guest's local APIC timer never fires: the PIT it is (see linux-boot.test.ts). */
const LAB_CMDLINE = process.env.GV_LAB === "1" ? " nolapic" : "";
const LIMIT_MS = scaled(Number(process.env.GV_LINUX_BOOT_TIMEOUT_S ?? 600) * 1000);

const pvmSkip =
  hostKvmIsPvm() && process.env.GV_LINUX_ON_PVM !== "1"
    ? "SKIPPED on PVM: a stock kernel's ring 0 needs instructions PVM's emulator lacks (docs/linux-guests.md); run it in the lab, or set GV_LINUX_ON_PVM=1"
    : false;

/** The console line Linux prints in mark_rodata_ro(), just before it runs /init. */
const RODATA_RO = /Write protecting the kernel read-only data/;

describe("sealing a stock Linux guest", { skip: skipWithoutKvm || pvmSkip }, () => {
  it("arms once user space runs, keeps the sealed bytes intact, and the guest still boots and resets", {
    timeout: LIMIT_MS + 120_000,
  }, async (t) => {
    const guest = buildLinuxTestGuest();
    const kvm = Kvm.open();
    let result: Record<string, string> | undefined;
    let rodataRoExits = -1;
    let initExits = -1;
    let vm: LinuxVm | undefined;
    try {
      vm = await LinuxVm.build(kvm, {
        kernel: readFileSync(guest.kernel),
        kernelName: guest.kernel,
        initrd: readFileSync(guest.initrd),
        cmdline: `${DEFAULT_LINUX_CMDLINE} gv.scenario=linux-benign${LAB_CMDLINE}`,
        memSize: 256 * MIB,
        seal: true,
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
      const sealed = vm.sealed;
      assert.ok(sealed);
      const [text, rodata] = sealed.ranges.ranges;
      assert.ok(text && rodata);
      // The kernel's text: from the load address, megabytes of it, holding the entry (startup_64).
      assert.equal(text.name, ".text");
      assert.equal(text.start, LINUX_LOAD_ADDR);
      assert.ok(text.end - text.start > MIB, `.text is ${text.end - text.start} bytes`);
      assert.equal(rodata.name, ".rodata");
      assert.ok(rodata.start >= text.end && rodata.end - rodata.start > MIB);

      const end = await vm.runToEnd(LIMIT_MS);
      const tail = end.console.slice(-25).join("\n");
      const seal = end.seal;
      assert.ok(seal);
      const armed = seal.armed;
      const events = seal.events;
      t.diagnostic(
        `run ended (${end.outcome}) after ${(end.elapsedMs / 1000).toFixed(1)} s and ${end.exits} exits; ` +
          `rodata write-protected at ${rodataRoExits} exits, /init at ${initExits} exits; ` +
          (armed
            ? `seal armed after ${(armed.elapsedMs / 1000).toFixed(2)} s at exit ${armed.exits} (RIP 0x${armed.rip.toString(16)}, ` +
              `${armed.protectedBytes} bytes protected, ${armed.readOnlyBytes} bytes of read-only pages, ` +
              `${armed.slots.length} slots, armed in ${(armed.armUs / 1000).toFixed(1)} ms); `
            : "seal never armed; ") +
          `counters ${JSON.stringify(end.counters)}`,
      );
      for (const e of events) {
        t.diagnostic(
          `protected-write #${e.seq}: ${e.target} from RIP 0x${e.rip.toString(16)} (${e.writer ?? "no System.map"}), ` +
            `${e.verdict} by ${e.rule}; ${e.note ?? ""}`,
        );
      }
      assert.ok(result, `no GV-RESULT line; the run ended ${end.outcome}: ${end.detail}\n${tail}`);
      assert.equal(result.status, "ok");
      assert.equal(end.outcome, "reset", `${end.detail}\n${tail}`);
      assert.equal(end.panicked, false);

      // Armed in ring 3, after the kernel made its rodata read-only and started /init.
      assert.ok(armed, "the seal was never armed: the guest was never seen in ring 3");
      assert.equal(armed.cpl, 3);
      assert.ok(rodataRoExits >= 0 && initExits >= rodataRoExits, "no mark_rodata_ro / Run /init lines");
      assert.ok(armed.exits >= initExits, `armed at exit ${armed.exits}, before /init (${initExits})`);
      assert.equal(armed.protectedBytes, text.end - text.start + (rodata.end - rodata.start));
      assert.ok(armed.readOnlyBytes >= armed.protectedBytes);
      assert.ok(armed.slots.some((s) => s.readonly && s.gpa <= text.start && s.gpa + s.size >= text.end));

      // Integrity: the sealed bytes at the end are the bytes at seal time.
      assert.deepEqual(vm.sealedHashes(), armed.hashes);

      // The writes to sealed memory a plain boot makes after the seal (see docs/linux-guests.md).
      assert.equal(events.length, end.counters.protectedWrites ?? 0);
      for (const e of events) {
        assert.equal(e.kind, "protected-write");
        assert.equal(e.verdict, "deny");
      }
      assert.equal(events.length, EXPECTED_BENIGN_WRITES, "protected writes in a plain boot");
    } finally {
      await vm?.destroy();
      kvm.close();
    }
  });
});

/** Measured in the lab: what a plain boot writes to sealed memory after the seal (docs/linux-guests.md). */
const EXPECTED_BENIGN_WRITES = 0;
