/**
 * What the lab is made of, found on this host: the emulator, a Debian kernel
 * with its KVM and virtio modules, and a static busybox. Each missing piece
 * is one LAB_UNAVAILABLE error naming the package and how to install it.
 */
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { GuardvisorError } from "../errors.js";

/** The oldest emulator whose SVM emulation lets KVM's hardware breakpoints fire in a nested guest. */
export const MIN_QEMU_MAJOR = 10;

/** Modules the lab's init loads (with their dependencies, found in modules.dep). */
export const LAB_MODULES = ["virtio_pci", "9p", "9pnet_virtio", "virtio_console", "kvm_amd"] as const;

export const SETUP_HINT = "run `npx guardvisor lab setup` (as root)";

export interface LabInputs {
  qemu: string;
  qemuVersion: string;
  kernel: string;
  kernelVersion: string;
  /** Absolute paths of the modules to load, dependencies first. */
  modules: string[];
  busybox: string;
}

const missing = (what: string, pkg: string) =>
  new GuardvisorError("LAB_UNAVAILABLE", `the lab needs ${what} (Debian package ${pkg}): ${SETUP_HINT}`);

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":")) {
    const p = join(dir || ".", name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

export function qemuVersion(qemu: string): string {
  let out: string;
  try {
    out = execFileSync(qemu, ["--version"], { encoding: "utf8", timeout: 10_000, stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    throw new GuardvisorError(
      "LAB_UNAVAILABLE",
      `cannot run ${qemu} --version: ${(e as Error).message.split("\n")[0]}`,
    );
  }
  const m = /version (\d+\.\d+(?:\.\d+)?)/.exec(out);
  if (!m) throw new GuardvisorError("LAB_UNAVAILABLE", `cannot read the version of ${qemu}: ${out.split("\n")[0]}`);
  return m[1]!;
}

function findQemu(): { qemu: string; version: string } {
  const qemu = process.env.GV_LAB_QEMU || findOnPath("qemu-system-x86_64");
  if (!qemu) throw missing(`qemu-system-x86_64 ${MIN_QEMU_MAJOR} or newer`, "qemu-system-x86");
  const version = qemuVersion(qemu);
  if (Number(version.split(".")[0]) < MIN_QEMU_MAJOR) {
    throw new GuardvisorError(
      "LAB_UNAVAILABLE",
      `${qemu} is QEMU ${version}; the lab needs ${MIN_QEMU_MAJOR} or newer (older SVM emulation drops KVM's hardware breakpoints): ${SETUP_HINT}`,
    );
  }
  return { qemu, version };
}

/** modules.dep: module path -> its dependencies (paths relative to the version's folder). */
function readModulesDep(dir: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const line of readFileSync(join(dir, "modules.dep"), "utf8").split("\n")) {
    const [mod, rest] = line.split(":");
    if (!mod || rest === undefined) continue;
    deps.set(mod.trim(), rest.trim().split(/\s+/).filter(Boolean));
  }
  return deps;
}

/** The module files for `names`, each after everything it depends on. */
export function moduleLoadOrder(dir: string, names: readonly string[]): string[] {
  const deps = readModulesDep(dir);
  const byName = new Map<string, string>();
  for (const mod of deps.keys()) {
    const base = mod
      .split("/")
      .pop()!
      .replace(/\.ko(\.\w+)?$/, "");
    byName.set(base.replace(/-/g, "_"), mod);
  }
  const order: string[] = [];
  const visit = (mod: string, depth: number) => {
    if (order.includes(mod) || depth > 64) return;
    for (const d of deps.get(mod) ?? []) visit(d, depth + 1);
    order.push(mod);
  };
  for (const n of names) {
    const mod = byName.get(n.replace(/-/g, "_"));
    if (!mod) throw missing(`the kernel module ${n} in ${dir}`, "linux-image-amd64");
    visit(mod, 0);
  }
  return order.map((m) => join(dir, m));
}

/** The newest /boot/vmlinuz-* that has its modules installed, or GV_LAB_KERNEL. */
function findKernel(): { kernel: string; version: string; modulesDir: string } {
  const fromEnv = process.env.GV_LAB_KERNEL;
  const candidates = fromEnv
    ? [fromEnv]
    : existsSync("/boot")
      ? readdirSync("/boot")
          .filter((f) => f.startsWith("vmlinuz-"))
          .sort((a, b) => b.localeCompare(a, undefined, { numeric: true }))
          .map((f) => join("/boot", f))
      : [];
  for (const kernel of candidates) {
    const version = kernel
      .split("/")
      .pop()!
      .replace(/^vmlinuz-/, "");
    const modulesDir = join("/lib/modules", version);
    if (existsSync(join(modulesDir, "modules.dep")) && existsSync(kernel)) return { kernel, version, modulesDir };
  }
  throw missing("a Debian kernel with its modules (/boot/vmlinuz-*, /lib/modules/*)", "linux-image-amd64");
}

/** True when the ELF file has no program interpreter (it is statically linked). */
export function isStaticElf(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const h = Buffer.alloc(64);
    readSync(fd, h, 0, 64, 0);
    if (h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2) return false;
    const phoff = Number(h.readBigUInt64LE(32));
    const phentsize = h.readUInt16LE(54);
    const phnum = h.readUInt16LE(56);
    if (phentsize < 4 || phnum > 64) return false;
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    return true;
  } finally {
    closeSync(fd);
  }
}

function findBusybox(): string {
  for (const p of [process.env.GV_LAB_BUSYBOX, "/bin/busybox", "/usr/bin/busybox"]) {
    if (p && existsSync(p) && statSync(p).isFile() && isStaticElf(p)) return p;
  }
  throw missing("a statically linked busybox", "busybox-static");
}

/** Everything the lab needs, or the first thing that is missing. */
export function findLabInputs(): LabInputs {
  const { qemu, version } = findQemu();
  const k = findKernel();
  return {
    qemu,
    qemuVersion: version,
    kernel: k.kernel,
    kernelVersion: k.version,
    modules: moduleLoadOrder(k.modulesDir, LAB_MODULES),
    busybox: findBusybox(),
  };
}
