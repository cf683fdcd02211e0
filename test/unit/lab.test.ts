/** The lab's pieces that need no emulator: the initramfs archive, module order, the job script, the time scale. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { cpioArchive } from "../../src/lab/cpio.js";
import { kvmUsable } from "../../src/lab/fallback.js";
import { INIT_SCRIPT, LAB_PORTS } from "../../src/lab/initramfs.js";
import { isStaticElf, moduleLoadOrder } from "../../src/lab/inputs.js";
import { CALIBRATION_JS, jobScript } from "../../src/lab/machine.js";
import { cli } from "../support/cli.js";

function withTmp<T>(f: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "gv-lab-test-"));
  try {
    return f(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A minimal newc reader, independent of the writer: [path, mode, data]. */
function readNewc(buf: Buffer): [string, number, Buffer][] {
  const out: [string, number, Buffer][] = [];
  let off = 0;
  const field = (i: number) => Number.parseInt(buf.toString("ascii", off + 6 + i * 8, off + 14 + i * 8), 16);
  for (;;) {
    assert.equal(buf.toString("ascii", off, off + 6), "070701", `magic at ${off}`);
    const mode = field(1);
    const size = field(6);
    const nameLen = field(11);
    const name = buf.toString("utf8", off + 110, off + 110 + nameLen - 1);
    off = (off + 110 + nameLen + 3) & ~3;
    const data = buf.subarray(off, off + size);
    off = (off + size + 3) & ~3;
    if (name === "TRAILER!!!") return out;
    out.push([name, mode, data]);
  }
}

describe("lab: the initramfs archive", () => {
  it("holds directories, files and symlinks in newc format, 4-byte aligned, with a trailer", () => {
    const buf = cpioArchive([
      { kind: "dir", path: "/bin" },
      { kind: "file", path: "bin/busybox", data: Buffer.from("abcde"), mode: 0o755 },
      { kind: "symlink", path: "bin/sh", target: "busybox" },
      { kind: "file", path: "init", data: Buffer.from("#!/bin/sh\n") },
    ]);
    assert.equal(buf.length % 4, 0);
    const got = readNewc(buf);
    assert.deepEqual(
      got.map(([p, m, d]) => [p, m.toString(8), d.toString()]),
      [
        ["bin", "40755", ""],
        ["bin/busybox", "100755", "abcde"],
        ["bin/sh", "120777", "busybox"],
        ["init", "100644", "#!/bin/sh\n"],
      ],
    );
  });

  it("is what cpio(1) lists, where cpio is installed", (t) => {
    const probe = spawnSync("cpio", ["--version"]);
    if (probe.status !== 0) return t.skip("cpio is not installed");
    const buf = cpioArchive([
      { kind: "dir", path: "a" },
      { kind: "file", path: "a/f", data: Buffer.alloc(1001, 7) },
    ]);
    const r = spawnSync("cpio", ["-it", "--quiet"], { input: buf, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), ["a", "a/f"]);
  });

  it("the init looks up every port by name and reports booted, exit and fail on the control port", () => {
    for (const name of Object.values(LAB_PORTS)) assert.ok(INIT_SCRIPT.includes(name), name);
    assert.match(INIT_SCRIPT, /echo booted >"\$ctl"/);
    assert.match(INIT_SCRIPT, /echo "exit \$\?" >"\$ctl"/);
    assert.match(INIT_SCRIPT, /poweroff -f\n$/);
  });
});

describe("lab: kernel modules", () => {
  it("are loaded after everything they depend on, each once", () =>
    withTmp((dir) => {
      writeFileSync(
        join(dir, "modules.dep"),
        [
          "kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko kernel/drivers/crypto/ccp/ccp.ko",
          "kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko",
          "kernel/virt/lib/irqbypass.ko:",
          "kernel/drivers/crypto/ccp/ccp.ko:",
          "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko",
          "kernel/net/9p/9pnet.ko:",
          "",
        ].join("\n"),
      );
      const order = moduleLoadOrder(dir, ["kvm_amd", "9p"]).map((p) => p.slice(dir.length + 1));
      assert.deepEqual(order, [
        "kernel/virt/lib/irqbypass.ko",
        "kernel/arch/x86/kvm/kvm.ko",
        "kernel/drivers/crypto/ccp/ccp.ko",
        "kernel/arch/x86/kvm/kvm-amd.ko",
        "kernel/net/9p/9pnet.ko",
        "kernel/fs/9p/9p.ko",
      ]);
      assert.throws(() => moduleLoadOrder(dir, ["virtio_pci"]), /LAB_UNAVAILABLE|virtio_pci.*linux-image-amd64/);
    }));

  it("a static busybox is told from a dynamic executable by its program headers", () => {
    assert.equal(isStaticElf(process.execPath), false, "node has a program interpreter");
    withTmp((dir) => {
      const f = join(dir, "not-elf");
      writeFileSync(f, "#!/bin/sh\n");
      assert.equal(isStaticElf(f), false);
    });
  });
});

describe("lab: the job script", () => {
  it("runs the command in the working directory with the environment, arguments quoted", () =>
    withTmp((dir) => {
      const cwd = join(dir, "work dir");
      mkdirSync(cwd);
      const ctl = join(dir, "control");
      const script = jobScript(
        [
          "sh",
          "-c",
          'printf "%s|" "$PWD" "$1" "$WEIRD" "$GV_LAB" "$TMPDIR" "$GV_TIME_SCALE"',
          "x",
          'it\'s a "test" $HOME',
        ],
        cwd,
        { PATH: process.env.PATH, WEIRD: "a'b\nc", TMPDIR: "/elsewhere", "BAD-NAME": "x", GV_TIME_SCALE: "7" },
        10,
      );
      writeFileSync(join(dir, "run.sh"), script);
      const r = spawnSync("sh", [join(dir, "run.sh")], {
        encoding: "utf8",
        env: { GV_LAB_CONTROL: ctl, PATH: process.env.PATH },
      });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, `${cwd}|it's a "test" $HOME|a'b\nc|1|/dev/shm|7|`);
      assert.match(readFileSync(ctl, "utf8"), /^scale \d+(\.\d)?\n$/, "the measured scale goes to the host");
      assert.doesNotMatch(script, /BAD-NAME/);
    }));

  it("exports the measured scale when none is given, and passes the command's exit status on", () =>
    withTmp((dir) => {
      const ctl = join(dir, "control");
      writeFileSync(join(dir, "run.sh"), jobScript(["sh", "-c", 'echo "$GV_TIME_SCALE"; exit 9'], dir, {}, 1e9));
      const r = spawnSync("sh", [join(dir, "run.sh")], { encoding: "utf8", env: { GV_LAB_CONTROL: ctl } });
      assert.equal(r.status, 9);
      assert.equal(r.stdout.trim(), "1", "a host reference far slower than this run: scale 1 (the minimum)");
    }));

  it("the calibration workload prints its time, or a scale of at least 1 given a reference", () => {
    const ms = Number(spawnSync(process.execPath, ["-e", CALIBRATION_JS], { encoding: "utf8" }).stdout);
    assert.ok(ms > 0);
    const scale = Number(
      spawnSync(process.execPath, ["-e", CALIBRATION_JS, String(ms / 4)], { encoding: "utf8" }).stdout,
    );
    assert.ok(scale >= 1 && Math.round(scale * 10) === scale * 10, String(scale));
  });
});

describe("lab: the command line", () => {
  it("lab with neither a subcommand nor -- COMMAND is a usage error", () => {
    const r = cli(["lab"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /give setup, check, or -- COMMAND/);
  });

  it("a bad GV_TIME_SCALE is one line naming it, exit 2", () => {
    const r = spawnSync(process.execPath, ["bin/guardvisor.js", "scenarios"], {
      encoding: "utf8",
      env: { ...process.env, GV_TIME_SCALE: "0.5" },
    });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^guardvisor: error: GV_TIME_SCALE: must be a number from 1 to 1000/);
  });

  it("run --no-lab on a host without /dev/kvm: exit 3, one line", { skip: kvmUsable() }, () => {
    const r = cli(["run", "--scenario", "benign", "--no-lab"]);
    assert.equal(r.status, 3, r.stderr);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  });

  it("npm test where KVM tests cannot run: loud, counted as skipped, and a failure with GV_REQUIRE_KVM=1", {
    skip: kvmUsable(),
  }, () => {
    const run = (require: string) =>
      withTmp((results) =>
        spawnSync(process.execPath, ["dist/scripts/test.js", "kvm"], {
          encoding: "utf8",
          env: { ...process.env, GV_LAB_QEMU: "/nonexistent/qemu", GV_REQUIRE_KVM: require, GV_TEST_RESULTS: results },
        }),
      );
    const required = run("1");
    assert.equal(required.status, 1, required.stdout);
    assert.match(required.stdout, /KVM TESTS SKIPPED/);
    const m = /^tests: 0 passed, 0 failed, (\d+) skipped$/m.exec(required.stdout);
    assert.ok(m && Number(m[1]) > 0, required.stdout);
    assert.equal(run("").status, 0, "without GV_REQUIRE_KVM a skip is not a failure");
  });

  it("bad usage is refused on the host, before any lab boots", () => {
    const r = cli(["run", "--scenario", "no-such-scenario"]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown scenario/);
    assert.doesNotMatch(r.stderr, /lab/);
  });
});
