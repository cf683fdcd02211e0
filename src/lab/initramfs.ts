/**
 * The lab's initramfs: a static busybox, the kernel modules for virtio, 9p
 * and KVM, and an init that mounts the host's root over 9p, chroots into it,
 * runs one job and powers the machine off. Built once and cached under
 * build/lab/, keyed by everything that goes into it.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type CpioEntry, cpioArchive } from "./cpio.js";
import type { LabInputs } from "./inputs.js";

/** Port names (virtio-serial) between the lab and the host. */
export const LAB_PORTS = {
  stdout: "gv.stdout",
  stderr: "gv.stderr",
  /** Lab to host: "booted", "scale X", "exit N", "fail WHY". */
  control: "gv.control",
  /** Host to lab: "HUP" (a signal for the command). */
  signal: "gv.signal",
} as const;

/**
 * The init. Kernel command line: gvlab.job=DIR (a folder of the host root
 * holding run.sh). It tells the host "booted", then runs the job, which
 * tells "scale X" (machine.ts), then "exit N".
 */
export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /host /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm /dev/pts
for m in $(cat /modules.order); do insmod "/$m" || echo "gvlab: insmod $m failed"; done
ip link set lo up
job=
for a in $(cat /proc/cmdline); do
  case "$a" in gvlab.job=*) job="\${a#gvlab.job=}" ;; esac
done
port() { for d in /sys/class/virtio-ports/*; do [ "$(cat "$d/name")" = "$1" ] && echo "/dev/\${d##*/}"; done; }
out=$(port ${LAB_PORTS.stdout}); err=$(port ${LAB_PORTS.stderr}); ctl=$(port ${LAB_PORTS.control}); sig=$(port ${LAB_PORTS.signal})
fail() { echo "gvlab: $1"; [ -n "$ctl" ] && echo "fail $1" >"$ctl"; poweroff -f; }
[ -n "$out" ] && [ -n "$err" ] && [ -n "$ctl" ] && [ -n "$sig" ] || fail "virtio ports missing"
[ -e /dev/kvm ] || fail "/dev/kvm missing (kvm_amd did not load)"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,access=any,cache=loose hostroot /host || fail "9p mount failed"
for d in proc sys dev; do mount --bind /$d /host/$d || fail "bind $d failed"; done
mount -t tmpfs -o mode=1777 shm /host/dev/shm
mount -t devpts devpts /host/dev/pts
echo booted >"$ctl"
[ -f "/host$job/run.sh" ] || fail "no job at $job"
GV_LAB_CONTROL=$ctl chroot /host /bin/sh "$job/run.sh" </dev/null >"$out" 2>"$err" &
pid=$!
( while read -r s; do case "$s" in HUP) kill -HUP $pid ;; esac; done <"$sig" ) &
wait $pid
echo "exit $?" >"$ctl"
sync
poweroff -f
`;

export interface Initramfs {
  path: string;
  /** True when it was built now (not found in the cache). */
  built: boolean;
}

function fingerprint(inputs: LabInputs): string {
  const h = createHash("sha256");
  h.update(INIT_SCRIPT);
  h.update(inputs.kernelVersion);
  for (const f of [inputs.busybox, ...inputs.modules]) {
    const s = statSync(f);
    h.update(`${f}:${s.size}:${s.mtimeMs}\n`);
  }
  return h.digest("hex").slice(0, 16);
}

/** The cached initramfs for these inputs, built if it is not there yet. */
export function labInitramfs(inputs: LabInputs, cacheDir: string): Initramfs {
  const name = `initramfs-${fingerprint(inputs)}.cpio`;
  const path = join(cacheDir, name);
  mkdirSync(cacheDir, { recursive: true });
  try {
    if (statSync(path).size > 0) return { path, built: false };
  } catch {
    // not cached yet
  }
  const entries: CpioEntry[] = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "host", "lib"].map(
    (d) => ({ kind: "dir", path: d }),
  );
  entries.push({ kind: "file", path: "bin/busybox", data: readFileSync(inputs.busybox), mode: 0o755 });
  entries.push({ kind: "symlink", path: "bin/sh", target: "busybox" });
  entries.push({ kind: "file", path: "init", data: Buffer.from(INIT_SCRIPT), mode: 0o755 });
  const dirs = new Set<string>();
  for (const m of inputs.modules) {
    const parts = m.replace(/^\/+/, "").split("/");
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (!dirs.has(d) && d !== "lib") entries.push({ kind: "dir", path: d });
      dirs.add(d);
    }
    entries.push({ kind: "file", path: m, data: readFileSync(m) });
  }
  entries.push({ kind: "file", path: "modules.order", data: Buffer.from(`${inputs.modules.join("\n")}\n`) });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, cpioArchive(entries));
  renameSync(tmp, path);
  for (const f of readdirSync(cacheDir)) {
    if (f.startsWith("initramfs-") && f !== name) rmSync(join(cacheDir, f), { force: true });
  }
  return { path, built: true };
}
