/** The Linux test guest (src/linux/test-guest.ts): its /init scenarios, result line, initramfs and attack module. */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { GuardvisorError } from "../../src/errors.js";
import {
  buildAttackModule,
  INIT_SCRIPT,
  kernelRelease,
  LINUX_SCENARIOS,
  MODULE_SOURCES,
  moduleSourceDir,
  parseResultLine,
  testInitramfs,
} from "../../src/linux/test-guest.js";

const ATTACKS = ["text-patch", "syscall-hook", "wp-bypass", "lstar-hook", "oops", "panic"];

describe("Linux test guest", () => {
  it("has a case in /init for every scenario", () => {
    for (const s of LINUX_SCENARIOS) assert.match(INIT_SCRIPT, new RegExp(`^\\s*${s}\\)`, "m"), s);
    assert.match(INIT_SCRIPT, /^\s*\*\) status=unknown-scenario ;;$/m);
  });

  it("loads the attack module for each attack scenario", () => {
    for (const a of ATTACKS) {
      assert.ok((LINUX_SCENARIOS as readonly string[]).includes(`linux-${a}`), a);
      assert.match(INIT_SCRIPT, new RegExp(`^\\s*attack ${a}\\b`, "m"), a);
    }
    assert.match(INIT_SCRIPT, /insmod \/lib\/gv_attack\.ko "attack=\$name"/);
    assert.match(INIT_SCRIPT, /ksym sys_call_table/);
    assert.match(INIT_SCRIPT, /linux-benign\) status="ok kallsyms=\$\(ksym text_poke\)"/);
    // The 20,000-step ring-3 loop still comes before any scenario acts.
    assert.ok(INIT_SCRIPT.indexOf("while [ $i -lt 20000 ]") < INIT_SCRIPT.indexOf('case "$scenario" in'));
  });

  it("parses the attack scenarios' result lines", () => {
    const r = parseResultLine(
      "GV-RESULT scenario=linux-text-patch status=ok landed=yes kernel=6.1.0-57-amd64 uptime=3.1",
    );
    assert.deepEqual(r, {
      scenario: "linux-text-patch",
      status: "ok",
      landed: "yes",
      kernel: "6.1.0-57-amd64",
      uptime: "3.1",
    });
    assert.equal(
      parseResultLine("GV-RESULT scenario=linux-oops status=ok oopsed=yes kernel=x uptime=1")?.oopsed,
      "yes",
    );
    const b = parseResultLine("GV-RESULT scenario=linux-benign status=ok kallsyms=ffffffff81046a90 kernel=x uptime=1");
    assert.equal(b?.kallsyms, "ffffffff81046a90");
  });

  it("puts the attack module in the initramfs as /lib/gv_attack.ko", () => {
    const ko = Buffer.from("\x7fELF gv_attack module bytes");
    const cpio = testInitramfs(new Uint8Array(16), ko);
    assert.ok(cpio.includes("lib/gv_attack.ko\0"));
    assert.ok(cpio.includes(ko));
    assert.ok(cpio.indexOf("lib\0") < cpio.indexOf("lib/gv_attack.ko\0"), "lib/ comes before its file");
  });

  it("reads the kernel release from a Debian kernel's file name", () => {
    assert.equal(kernelRelease("/boot/vmlinuz-6.1.0-57-amd64"), "6.1.0-57-amd64");
    assert.throws(
      () => kernelRelease("/tmp/bzImage"),
      (e: unknown) => e instanceof GuardvisorError && e.code === "IO",
    );
  });

  it("names the headers package when a kernel's headers are missing", () => {
    assert.throws(
      () => buildAttackModule("0.0.0-gv-no-such-kernel", join(tmpdir(), "gv-no-module")),
      (e: unknown) =>
        e instanceof GuardvisorError && e.code === "IO" && /linux-headers-0\.0\.0-gv-no-such-kernel/.test(e.message),
    );
  });

  it("has the module's sources in linux-guest/", () => {
    for (const f of MODULE_SOURCES) assert.ok(existsSync(join(moduleSourceDir(), f)), f);
  });
});
