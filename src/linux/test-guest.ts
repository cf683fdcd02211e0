/**
 * The Linux test guest: the host's Debian kernel (bzImage) and a busybox
 * initramfs whose /init mounts proc and sys, reads `gv.scenario=NAME` from
 * /proc/cmdline, prints one result line on the console and resets the
 * machine (`reboot -f`; with `reboot=k` that is the i8042 reset, which ends
 * the run). Built into build/linux/, never committed; rebuilt when its
 * inputs change.
 *
 * Result line ⚑: `GV-RESULT scenario=NAME status=ok|unknown-scenario [schedstats=0|1] kernel=RELEASE uptime=SECONDS`
 * (`linux-static-key` turns on schedstats, a static key, and says whether it is on.)
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { GuardvisorError } from "../errors.js";
import { packageRoot } from "../kvm/native.js";
import { type CpioEntry, cpioArchive } from "../lab/cpio.js";
import { isStaticElf } from "../lab/inputs.js";

/** Scenarios the test init knows. */
export const LINUX_SCENARIOS = ["linux-benign", "linux-static-key"] as const;

export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
scenario=none
for a in $(cat /proc/cmdline); do
  case "$a" in gv.scenario=*) scenario="\${a#gv.scenario=}" ;; esac
done
# User-space work first: Guardvisor arms its seal when it first finds the vCPU
# in ring 3, so give it a stretch of ring 3 before any scenario acts.
i=0
while [ $i -lt 20000 ]; do i=$((i + 1)); done
case "$scenario" in
  linux-benign) status=ok ;;
  linux-static-key)
    # Turn on schedstats: static_branch_enable(), so the kernel patches its text (text_poke) from a subshell.
    (echo 1 > /proc/sys/kernel/sched_schedstats) 2>/dev/null
    status="ok schedstats=$(cat /proc/sys/kernel/sched_schedstats 2>/dev/null)" ;;
  *) status=unknown-scenario ;;
esac
echo "GV-RESULT scenario=$scenario status=$status kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
reboot -f
echo "GV-RESULT reboot failed"
`;

/** A line of the test init's result: `GV-RESULT scenario=… status=… …`, fields by name. */
export function parseResultLine(line: string): Record<string, string> | undefined {
  const at = line.indexOf("GV-RESULT ");
  if (at < 0) return undefined;
  const fields: Record<string, string> = {};
  for (const part of line
    .slice(at + "GV-RESULT ".length)
    .trim()
    .split(/\s+/)) {
    const eq = part.indexOf("=");
    if (eq > 0) fields[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return fields.scenario && fields.status ? fields : undefined;
}

export interface LinuxTestGuest {
  kernel: string;
  initrd: string;
  /** True when the initramfs was built now. */
  built: boolean;
}

/** The Debian kernel the test guest boots: GV_LINUX_KERNEL, else the newest /boot/vmlinuz-*. */
export function findTestKernel(): string {
  const fromEnv = process.env.GV_LINUX_KERNEL;
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new GuardvisorError("IO", `GV_LINUX_KERNEL=${fromEnv} does not exist`);
    return fromEnv;
  }
  const found = existsSync("/boot")
    ? readdirSync("/boot")
        .filter((f) => f.startsWith("vmlinuz-"))
        .sort((a, b) => b.localeCompare(a, undefined, { numeric: true }))
    : [];
  if (!found[0]) {
    throw new GuardvisorError(
      "IO",
      "no /boot/vmlinuz-* (install the Debian package linux-image-amd64) and no GV_LINUX_KERNEL",
    );
  }
  return join("/boot", found[0]);
}

export function findBusybox(): string {
  for (const p of [process.env.GV_LINUX_BUSYBOX, "/bin/busybox", "/usr/bin/busybox"]) {
    if (p && existsSync(p) && statSync(p).isFile() && isStaticElf(p)) return p;
  }
  throw new GuardvisorError("IO", "no statically linked busybox (install the Debian package busybox-static)");
}

/** The initramfs bytes: busybox, /init, /dev/console. */
export function testInitramfs(busybox: Uint8Array): Buffer {
  const entries: CpioEntry[] = ["bin", "dev", "proc", "sys", "tmp"].map((d) => ({ kind: "dir", path: d }));
  entries.push({ kind: "chardev", path: "dev/console", major: 5, minor: 1 });
  entries.push({ kind: "chardev", path: "dev/null", major: 1, minor: 3, mode: 0o666 });
  entries.push({ kind: "file", path: "bin/busybox", data: busybox, mode: 0o755 });
  entries.push({ kind: "symlink", path: "bin/sh", target: "busybox" });
  entries.push({ kind: "file", path: "init", data: Buffer.from(INIT_SCRIPT), mode: 0o755 });
  return cpioArchive(entries);
}

/** Build (or find up to date) the test guest under `dir` (default build/linux). */
export function buildLinuxTestGuest(dir = join(packageRoot(), "build", "linux")): LinuxTestGuest {
  const kernel = findTestKernel();
  const busybox = findBusybox();
  const bb = readFileSync(busybox);
  const key = createHash("sha256").update(INIT_SCRIPT).update(bb).digest("hex").slice(0, 16);
  mkdirSync(dir, { recursive: true });
  const initrd = join(dir, "initramfs.cpio");
  const stamp = join(dir, "initramfs.key");
  const upToDate = existsSync(initrd) && existsSync(stamp) && readFileSync(stamp, "utf8").trim() === key;
  if (!upToDate) {
    const tmp = `${initrd}.${process.pid}.tmp`;
    writeFileSync(tmp, testInitramfs(bb));
    renameSync(tmp, initrd);
    writeFileSync(stamp, `${key}\n`);
  }
  writeFileSync(join(dir, "guest.json"), `${JSON.stringify({ kernel, initrd }, null, 2)}\n`);
  return { kernel, initrd, built: !upToDate };
}
