/**
 * The Linux test guest: the host's Debian kernel (bzImage) and a busybox
 * initramfs whose /init mounts proc and sys, reads `gv.scenario=NAME` from
 * /proc/cmdline, prints one result line on the console and resets the
 * machine (`reboot -f`; with `reboot=k` that is the i8042 reset, which ends
 * the run). Built into build/linux/, never committed; rebuilt when its
 * inputs change.
 *
 * The attack scenarios load linux-guest/gv_attack.c, an out-of-tree module
 * built here against the kernel's Debian headers (linux-headers-RELEASE) into
 * build/linux/module/ and put in the initramfs as /lib/gv_attack.ko. Its init
 * makes one attack, logs `gv_attack: attack=NAME target=0xADDR before=HEX
 * after=HEX landed=yes|no` and fails on purpose, so it unloads.
 *
 * Result line ⚑: `GV-RESULT scenario=NAME status=ok|unknown-scenario [FIELD=VALUE…] kernel=RELEASE uptime=SECONDS`,
 * the fields after `ok` by scenario:
 * - `linux-benign`: `kallsyms=HEX`, text_poke's address in the guest's /proc/kallsyms (no 0x);
 * - `linux-static-key`: `schedstats=0|1` (it turns on schedstats, a static key, and says whether it is on);
 * - `linux-text-patch`, `linux-syscall-hook`, `linux-wp-bypass`, `linux-lstar-hook`: `landed=yes|no`, from
 *   the module's line (`none` when it printed no `landed=`: no module line, or syscall-hook without a table);
 * - `linux-oops`: `oopsed=yes|no`, whether dmesg shows the oops (insmod is killed; the kernel goes on);
 * - `linux-panic`: the first boot panics (no result line; Guardvisor restarts the VM with
 *   `gv.restart=N` on the command line); the next boot prints `restarted=N` (`panicked=no` if it did not panic).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { basename, join } from "node:path";
import { GuardvisorError } from "../errors.js";
import { packageRoot } from "../kvm/native.js";
import { type CpioEntry, cpioArchive } from "../lab/cpio.js";
import { isStaticElf } from "../lab/inputs.js";

/** Scenarios the test init knows. */
export const LINUX_SCENARIOS = [
  "linux-benign",
  "linux-static-key",
  "linux-text-patch",
  "linux-syscall-hook",
  "linux-wp-bypass",
  "linux-lstar-hook",
  "linux-oops",
  "linux-panic",
  "linux-hang",
] as const;

export type LinuxScenario = (typeof LINUX_SCENARIOS)[number];

/** What each Linux scenario does and what Guardvisor does about it (for `guardvisor scenarios`). */
export const LINUX_SCENARIO_DESCRIPTIONS: Readonly<Record<LinuxScenario, string>> = {
  "linux-benign": "stock Linux boots, runs a shell workload and resets: zero events",
  "linux-static-key": "user space turns on a static key: the kernel's text_poke is allowed and audited",
  "linux-text-patch": "a module writes a kernel function through its own alias: denied, function unchanged",
  "linux-syscall-hook": "a module overwrites a sys_call_table entry: denied",
  "linux-wp-bypass": "a module clears CR0.WP and writes kernel text: WP put back, the write denied",
  "linux-lstar-hook": "a module points LSTAR at its own code: denied",
  "linux-oops": "a module dereferences NULL: the oops is captured at __die first, the kernel goes on",
  "linux-panic": "a module panics the kernel: captured at panic() first, the VM restarted",
  "linux-hang": "a module spins with interrupts off: the VMM's watchdog finds the hang, the VM restarted",
};

export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
scenario=none
restart=
for a in $(cat /proc/cmdline); do
  case "$a" in
    gv.scenario=*) scenario="\${a#gv.scenario=}" ;;
    gv.restart=*) restart="\${a#gv.restart=}" ;;
  esac
done
# A symbol's address in /proc/kallsyms (hex, no 0x).
ksym() { grep " $1$" /proc/kallsyms | head -n 1 | cut -d' ' -f1; }
# An attack (linux-guest/gv_attack.c): the module's init attacks, logs one
# "gv_attack: ... landed=yes|no" line and stays loaded (insmod's output goes
# to /dev/null); landed= is read back from dmesg.
attack() {
  name=$1
  shift
  { insmod /lib/gv_attack.ko "attack=$name" "$@"; } 2>/dev/null
  line=$(dmesg | grep 'gv_attack: ' | tail -n 1)
  case "$line" in *landed=*) landed="\${line##*landed=}" ;; *) landed=none ;; esac
}
# User-space work first: Guardvisor arms its seal at init's first system call
# (a breakpoint on the kernel's entry), or, for a kernel without symbols, when
# it first finds the vCPU in ring 3: a stretch of ring 3 before any scenario acts.
i=0
while [ $i -lt 20000 ]; do i=$((i + 1)); done
case "$scenario" in
  linux-benign) status="ok kallsyms=$(ksym text_poke)" ;;
  linux-static-key)
    # Turn on schedstats: static_branch_enable(), so the kernel patches its text (text_poke) from a subshell.
    (echo 1 > /proc/sys/kernel/sched_schedstats) 2>/dev/null
    status="ok schedstats=$(cat /proc/sys/kernel/sched_schedstats 2>/dev/null)" ;;
  linux-text-patch)
    # The function linux-static-key's sanctioned patch changes (a schedstats site): here a module writes it.
    fn=$(ksym do_sched_yield)
    attack text-patch \${fn:+target=0x$fn}
    status="ok landed=$landed" ;;
  linux-syscall-hook)
    table=$(ksym sys_call_table)
    attack syscall-hook \${table:+target=0x$table}
    status="ok landed=$landed" ;;
  linux-wp-bypass)
    attack wp-bypass
    status="ok landed=$landed" ;;
  linux-lstar-hook)
    attack lstar-hook
    status="ok landed=$landed" ;;
  linux-oops)
    # insmod is killed by the oops; the kernel goes on (panic_on_oops=0).
    attack oops
    oopsed=no
    dmesg | grep -q -e 'BUG: kernel NULL pointer dereference' -e 'Oops' && oopsed=yes
    status="ok oopsed=$oopsed" ;;
  linux-panic)
    # The first boot panics (Guardvisor restarts the VM: nothing below runs);
    # the boot after the restart (gv.restart=N) reports it and ends cleanly.
    if [ -n "$restart" ]; then
      status="ok restarted=$restart"
    else
      attack panic
      status="ok panicked=no"
    fi ;;
  linux-hang)
    # As linux-panic: the first boot hangs in the kernel with interrupts off (the VMM's watchdog restarts it).
    if [ -n "$restart" ]; then
      status="ok restarted=$restart"
    else
      attack hang
      status="ok hung=no"
    fi ;;
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

/** The attack module's sources, in <packageRoot>/linux-guest (committed; built only under build/). */
export const MODULE_SOURCES = ["gv_attack.c", "Kbuild"] as const;

export function moduleSourceDir(): string {
  return join(packageRoot(), "linux-guest");
}

/** The kernel release of a Debian kernel file: /boot/vmlinuz-6.1.0-57-amd64 → 6.1.0-57-amd64. */
export function kernelRelease(kernel: string): string {
  const name = basename(kernel);
  const release = name.startsWith("vmlinuz-") ? name.slice("vmlinuz-".length) : "";
  if (!release) {
    throw new GuardvisorError("IO", `cannot tell the kernel release of ${kernel}: its name is not vmlinuz-RELEASE`);
  }
  return release;
}

/**
 * Build gv_attack.ko for `release` in `dir` (the sources are copied there, so
 * nothing lands in linux-guest/) against /lib/modules/RELEASE/build.
 */
export function buildAttackModule(release: string, dir: string): Buffer {
  const headers = `/lib/modules/${release}/build`;
  if (!existsSync(headers)) {
    throw new GuardvisorError(
      "IO",
      `no kernel headers at ${headers} to build the attack module (install the Debian package linux-headers-${release})`,
    );
  }
  mkdirSync(dir, { recursive: true });
  for (const f of MODULE_SOURCES) copyFileSync(join(moduleSourceDir(), f), join(dir, f));
  try {
    execFileSync("make", ["-C", headers, `M=${dir}`, "modules"], { stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    const out = e as { stdout?: Buffer; stderr?: Buffer };
    const log = `${out.stdout?.toString() ?? ""}${out.stderr?.toString() ?? ""}`.trim().slice(-2000);
    throw new GuardvisorError("IO", `building the attack module in ${dir} failed:\n${log || String(e)}`, { cause: e });
  }
  return readFileSync(join(dir, "gv_attack.ko"));
}

/** The initramfs bytes: busybox, /init, /dev/console, and the attack module as /lib/gv_attack.ko. */
export function testInitramfs(busybox: Uint8Array, attackModule: Uint8Array): Buffer {
  const entries: CpioEntry[] = ["bin", "dev", "lib", "proc", "sys", "tmp"].map((d) => ({ kind: "dir", path: d }));
  entries.push({ kind: "chardev", path: "dev/console", major: 5, minor: 1 });
  entries.push({ kind: "chardev", path: "dev/null", major: 1, minor: 3, mode: 0o666 });
  entries.push({ kind: "file", path: "bin/busybox", data: busybox, mode: 0o755 });
  entries.push({ kind: "symlink", path: "bin/sh", target: "busybox" });
  entries.push({ kind: "file", path: "lib/gv_attack.ko", data: attackModule, mode: 0o644 });
  entries.push({ kind: "file", path: "init", data: Buffer.from(INIT_SCRIPT), mode: 0o755 });
  return cpioArchive(entries);
}

/** Build (or find up to date) the test guest under `dir` (default build/linux). */
export function buildLinuxTestGuest(dir = join(packageRoot(), "build", "linux")): LinuxTestGuest {
  const kernel = findTestKernel();
  const busybox = findBusybox();
  const bb = readFileSync(busybox);
  const release = kernelRelease(kernel);
  const hash = createHash("sha256").update(INIT_SCRIPT).update(bb).update(`\0${release}\0`);
  for (const f of MODULE_SOURCES) hash.update(`${f}\0`).update(readFileSync(join(moduleSourceDir(), f)));
  const key = hash.digest("hex").slice(0, 16);
  mkdirSync(dir, { recursive: true });
  const initrd = join(dir, "initramfs.cpio");
  const stamp = join(dir, "initramfs.key");
  const upToDate = existsSync(initrd) && existsSync(stamp) && readFileSync(stamp, "utf8").trim() === key;
  if (!upToDate) {
    const tmp = `${initrd}.${process.pid}.tmp`;
    writeFileSync(tmp, testInitramfs(bb, buildAttackModule(release, join(dir, "module"))));
    renameSync(tmp, initrd);
    writeFileSync(stamp, `${key}\n`);
  }
  writeFileSync(join(dir, "guest.json"), `${JSON.stringify({ kernel, initrd }, null, 2)}\n`);
  return { kernel, initrd, built: !upToDate };
}
