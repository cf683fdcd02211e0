/**
 * The seal of a stock Linux guest's code and read-only data (src/linux/linux-seal.ts):
 * the Debian kernel boots the test initramfs with the seal on; it is armed
 * at the first exit in ring 3, after the kernel wrote-protected its
 * read-only data and ran /init; the guest still prints its result line and
 * resets; the sealed bytes at the end are the bytes at seal time; a plain
 * boot writes nothing to sealed memory after the seal. Then the kernel's own
 * runtime patching (a static key turned on from user space): recognised as
 * text_poke and allowed by default; under `kernel-patching: immutable`
 * denied, and Linux BUGs in the writing task (docs/linux-guests.md, "Sealing").
 *
 * Arming depends on a kick landing while user space runs: a matter of chance
 * (docs/linux-guests.md), so a run where the seal arms late can miss the
 * static key's writes.
 *
 * Runs in the lab on a PVM host (scripts/test.ts, NEEDS_HW_VIRT).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { packageRoot } from "../../src/kvm/native.js";
import { LINUX_LOAD_ADDR, MIB } from "../../src/linux/boot-params.js";
import { parseBzImage } from "../../src/linux/bzimage.js";
import { kallsymsFromVmlinux } from "../../src/linux/kallsyms.js";
import { SANCTIONED_RULE } from "../../src/linux/linux-seal.js";
import { buildLinuxTestGuest } from "../../src/linux/test-guest.js";
import { decompressPayload } from "../../src/linux/vmlinux.js";
import { skipWithoutHardwareVirt } from "../support/kvm.js";
import { assertArmed, bootSealed, LIMIT_MS, runLinuxCli } from "../support/linux-guest.js";

describe("sealing a stock Linux guest", { skip: skipWithoutHardwareVirt }, () => {
  it("arms once user space runs, keeps the sealed bytes intact, and the guest still boots and resets", {
    timeout: LIMIT_MS + 120_000,
  }, async (t) => {
    const r = await bootSealed(t, "linux-benign");
    const [text, rodata] = r.ranges;
    // The kernel's text: from the load address, megabytes of it.
    assert.ok(text && rodata);
    assert.equal(text.name, ".text");
    assert.equal(text.start, LINUX_LOAD_ADDR);
    assert.ok(text.end - text.start > MIB, `.text is ${text.end - text.start} bytes`);
    assert.equal(rodata.name, ".rodata");
    assert.ok(rodata.start >= text.end && rodata.end - rodata.start > MIB);
    assert.ok(r.result, `no GV-RESULT line; the run ended ${r.end.outcome}: ${r.end.detail}\n${r.tail}`);
    assert.equal(r.result.status, "ok");
    // The host's reading of the kernel's kallsyms tables agrees with the guest's /proc/kallsyms.
    const payload = decompressPayload(parseBzImage(readFileSync(buildLinuxTestGuest().kernel)));
    const textPoke = kallsymsFromVmlinux(payload).byName.get("text_poke")?.address;
    assert.equal(r.result.kallsyms, textPoke?.toString(16), "text_poke's address, host vs guest");
    assert.equal(r.end.outcome, "reset", `${r.end.detail}\n${r.tail}`);
    assert.equal(r.end.panicked, false);
    const armed = assertArmed(r);
    // Integrity: the sealed bytes at the end are the bytes at seal time.
    assert.deepEqual(r.hashesAtEnd, armed.hashes);
    // A plain boot writes nothing to sealed memory after the seal (measured; docs/linux-guests.md).
    assert.equal(r.end.counters.protectedWrites, 0);
    assert.deepEqual(r.end.seal?.events, []);
  });

  it("lets the kernel's own text_poke through by default: the static key turns on, each write audited as allow, nothing else changed", {
    timeout: LIMIT_MS + 120_000,
  }, async (t) => {
    const r = await bootSealed(t, "linux-static-key");
    const armed = assertArmed(r);
    const events = r.end.seal?.events ?? [];
    assert.ok(events.length > 0, "turning on a static key patches the text");
    assert.ok((r.end.seal?.patchSites ?? 0) > 1000, "patch sites read from the kernel image");
    assert.equal(r.end.counters.sanctionedWrites, r.end.counters.protectedWrites, "every write was text_poke's");
    assert.equal(r.end.counters.performedWrites, r.end.counters.protectedWrites);
    assert.equal(events.length + (r.end.counters.eventsNotPosted ?? 0), r.end.counters.protectedWrites);
    for (const e of events) {
      assert.equal(e.kind, "protected-write");
      assert.equal(e.verdict, "allow");
      assert.equal(e.rule, SANCTIONED_RULE);
      assert.match(e.target, /^\.text\+0x/);
      assert.match(e.writer ?? "", /^(__memcpy|memcpy_erms|memcpy_orig)\+/);
    }
    // The same function linux-text-patch's module writes (denied there): here the kernel's own patch is allowed.
    assert.ok(events.some((e) => /\(do_sched_yield\+0x[0-9a-f]+\)$/.test(e.target)));
    assert.ok(r.result, `no GV-RESULT line; the run ended ${r.end.outcome}: ${r.end.detail}\n${r.tail}`);
    assert.equal(r.result.schedstats, "1", "the static key is on");
    assert.equal(r.end.outcome, "reset", `${r.end.detail}\n${r.tail}`);
    assert.equal(r.end.panicked, false);
    assert.notEqual(r.hashesAtEnd[0], armed.hashes[0], "the text was patched");
    assert.equal(r.hashesAtEnd[1], armed.hashes[1], "the read-only data was not written");
    // Intact: the sealed bytes are what was sealed plus exactly the writes allowed.
    assert.deepEqual(r.end.seal?.integrity, { intact: true, changed: [] });
  });

  it("run --linux --policy policies/linux-immutable.yaml: text_poke denied too, one event, and Linux's own check BUGs in the writing task", {
    timeout: LIMIT_MS + 120_000,
  }, () => {
    const { r, j } = runLinuxCli([
      "--scenario",
      "linux-static-key",
      "--policy",
      join(packageRoot(), "policies", "linux-immutable.yaml"),
    ]);
    const all = j.seal.events as { kind: string; verdict: string; rule: string; note?: string }[];
    const events = all.filter((e) => e.kind === "protected-write");
    // Measured: the first INT3 is denied, and Linux's own check of the patch (__text_poke) BUGs.
    assert.equal(events.length, 1, "one denied write, then the BUG");
    assert.equal(j.counters.sanctionedWrites, 1, "it was recognised as text_poke, and denied all the same");
    assert.match(events[0]?.note ?? "", /1 bytes cc/);
    assert.equal(events[0]?.verdict, "deny");
    assert.equal(events[0]?.rule, "protect-kernel-regions");
    assert.ok((j.console as string[]).some((l) => l.includes("kernel BUG at arch/x86/kernel/alternative.c")));
    assert.deepEqual(j.integrity, { intact: true, changed: [] }, "a denied write changed sealed bytes");
    assert.equal(j.result?.schedstats, "0", "the static key is not on: its text was not patched");
    assert.equal(j.outcome, "reset", j.detail);
    // The BUG (a UD2) is an oops the VMM caught first at __die, logged; the kernel went on and reset.
    const oops = all.filter((e) => e.kind === "cpu-exception");
    assert.equal(oops.length, 1);
    assert.match(oops[0]?.note ?? "", /kernel oops "invalid opcode"/);
    assert.equal(j.counters.oopses, 1);
    assert.equal(r.status, 0, r.stderr.slice(-2000));
  });

  it("run --linux --seal --json, as the README shows: sealed after init, no write hit it, a clean reset", {
    timeout: LIMIT_MS + 120_000,
  }, () => {
    const guest = buildLinuxTestGuest();
    const { r, j } = runLinuxCli(["--initrd", guest.initrd, "--cmdline", "gv.scenario=linux-benign", "--seal"]);
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    assert.equal(j.outcome, "reset");
    assert.equal(j.panicked, false);
    assert.equal(j.seal.source, "elf");
    assert.equal(j.seal.symbols.source, "kallsyms", "symbols read from the kernel's own kallsyms tables");
    assert.ok(j.seal.symbols.count > 10_000);
    assert.deepEqual(j.integrity, { intact: true, changed: [] });
    assert.deepEqual(
      j.seal.ranges.map((x: { name: string }) => x.name),
      [".text", ".rodata"],
    );
    assert.ok(j.seal.armed, "armed once user space ran");
    assert.ok(j.seal.armed.protectedBytes > 2 * MIB);
    assert.deepEqual(j.seal.events, []);
    assert.ok(j.console.some((l: string) => /GV-RESULT scenario=linux-benign status=ok/.test(l)));
  });
});
