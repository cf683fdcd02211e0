/**
 * The raw native surface (native/gv_kvm.c): numbers, buffers and fds only.
 * Everything above this file is typed TypeScript.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { GuardvisorError } from "../errors.js";

type Bytes = ArrayBufferView | ArrayBuffer;

export interface MsrFilterRange {
  flags: number;
  base: number;
  nmsrs: number;
  bitmap: Uint8Array;
}

export interface NativeKvm {
  open(path: string): number;
  close(fd: number): void;
  getApiVersion(kvmFd: number): number;
  checkExtension(fd: number, cap: number): number;
  createVm(kvmFd: number, type: number): number;
  getVcpuMmapSize(kvmFd: number): number;
  getSupportedCpuid(kvmFd: number, buf: Bytes): number;
  createVcpu(vmFd: number, id: number): number;
  getTscKhz(vcpuFd: number): number;
  setUserMemoryRegion(vmFd: number, slot: number, flags: number, gpa: number, size: number, hostAddr: bigint): void;
  enableCap(vmFd: number, buf: Bytes): number;
  setMsrFilter(vmFd: number, defaultDeny: number, ranges: MsrFilterRange[]): void;
  createIrqchip(vmFd: number): number;
  createPit2(vmFd: number, buf: Bytes): number;
  setTssAddr(vmFd: number, addr: number): number;
  setIdentityMapAddr(vmFd: number, buf: Bytes): number;
  irqLine(vmFd: number, irq: number, level: number): void;
  run(vcpuFd: number): number;
  getRegs(vcpuFd: number, buf: Bytes): number;
  setRegs(vcpuFd: number, buf: Bytes): number;
  getSregs(vcpuFd: number, buf: Bytes): number;
  setSregs(vcpuFd: number, buf: Bytes): number;
  setMsrs(vcpuFd: number, buf: Bytes): number;
  getVcpuEvents(vcpuFd: number, buf: Bytes): number;
  setVcpuEvents(vcpuFd: number, buf: Bytes): number;
  setGuestDebug(vcpuFd: number, buf: Bytes): number;
  setCpuid2(vcpuFd: number, buf: Bytes): number;
  mmapAnonymous(size: number): bigint;
  mmapFd(fd: number, size: number): bigint;
  munmap(addr: bigint, size: number): void;
  arrayBufferAt(addr: bigint, size: number): ArrayBuffer;
  prepareVcpuThread(vcpuFd: number): number;
  kickThread(tid: number): void;
  readonly constants: Readonly<Record<string, number>>;
  readonly layouts: Readonly<Record<string, Readonly<Record<string, number>>>>;
}

/** The repository root (this file lives in dist/src/kvm/ or src/kvm/). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "package.json"))) return dir;
    dir = dirname(dir);
  }
  throw new GuardvisorError("INTERNAL", "cannot find the guardvisor package root");
}

let cached: NativeKvm | undefined;

export function native(): NativeKvm {
  if (cached) return cached;
  const path = join(packageRoot(), "build", "Release", "gv_kvm.node");
  if (!existsSync(path)) {
    throw new GuardvisorError("INTERNAL", `native addon missing at ${path}: run 'npm install' (or 'npm run install')`);
  }
  cached = createRequire(import.meta.url)(path) as NativeKvm;
  return cached;
}

/** A constant from <linux/kvm.h>, as compiled into the addon. */
export function K(name: string): number {
  const v = native().constants[name];
  if (v === undefined) throw new GuardvisorError("INTERNAL", `unknown KVM constant ${name}`);
  return v;
}

/** The offset table of a <linux/kvm.h> struct, as compiled into the addon. */
export interface KernelLayout {
  readonly size: number;
  off(field: string): number;
}

const layoutCache = new Map<string, KernelLayout>();

export function kernelLayout(struct: string): KernelLayout {
  const hit = layoutCache.get(struct);
  if (hit) return hit;
  const t = native().layouts[struct];
  if (!t) throw new GuardvisorError("INTERNAL", `unknown kernel struct ${struct}`);
  const size = t.$size;
  if (size === undefined) throw new GuardvisorError("INTERNAL", `layout ${struct} has no size`);
  const layout: KernelLayout = {
    size,
    off(field: string): number {
      const o = t[field];
      if (o === undefined) throw new GuardvisorError("INTERNAL", `${struct} has no field ${field}`);
      return o;
    },
  };
  layoutCache.set(struct, layout);
  return layout;
}

/** Wrap a native error (code = errno name, syscall = ioctl name) into a typed error. */
export function wrapNative<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toKvmError(what, e);
  }
}

export function toKvmError(what: string, e: unknown): GuardvisorError {
  if (e instanceof GuardvisorError) return e;
  const err = e as { code?: string; syscall?: string; message?: string };
  const detail = err.message ?? String(e);
  const code = err.code === "ENOENT" || err.code === "EACCES" || err.code === "EPERM" ? "KVM_UNAVAILABLE" : "KVM_IOCTL";
  return new GuardvisorError(code, `${what}: ${detail}`, { cause: e });
}
