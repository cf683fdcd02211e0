/**
 * Typed KVM objects mirroring the three fd levels: Kvm (/dev/kvm) → Vm → Vcpu.
 * Methods are named after their ioctls; they hold no policy.
 */
import { accessSync, existsSync, constants as fsConstants } from "node:fs";
import { GuardvisorError } from "../errors.js";
import { RunPage, type VcpuExit } from "./exits.js";
import { K, type KernelLayout, kernelLayout, type MsrFilterRange, native, wrapNative } from "./native.js";
import { decodeRegs, decodeSregs, encodeRegs, encodeSregs, type Regs, type Sregs } from "./structs.js";

export const DEFAULT_KVM_PATH = "/dev/kvm";

/** Capabilities Guardvisor cannot work without, with what each is for. */
export const REQUIRED_CAPS: ReadonlyArray<readonly [string, string]> = [
  ["KVM_CAP_USER_MEMORY", "guest memory"],
  ["KVM_CAP_READONLY_MEM", "read-only memory slots that protect kernel code"],
  ["KVM_CAP_IMMEDIATE_EXIT", "stopping a running vCPU"],
  ["KVM_CAP_SET_GUEST_DEBUG", "hardware-breakpoint exception capture"],
  ["KVM_CAP_VCPU_EVENTS", "fault injection"],
];

export class Kvm {
  readonly fd: number;
  readonly path: string;

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  /** Open /dev/kvm, check the API version and the capabilities Guardvisor needs. */
  static open(path = DEFAULT_KVM_PATH): Kvm {
    if (!existsSync(path)) {
      throw new GuardvisorError("KVM_UNAVAILABLE", `${path} does not exist: this host has no KVM`);
    }
    try {
      accessSync(path, fsConstants.R_OK | fsConstants.W_OK);
    } catch {
      throw new GuardvisorError("KVM_UNAVAILABLE", `${path} is not accessible: add this user to the kvm group`);
    }
    const fd = wrapNative(`open ${path}`, () => native().open(path));
    const kvm = new Kvm(fd, path);
    try {
      const version = kvm.getApiVersion();
      if (version !== K("KVM_API_VERSION")) {
        throw new GuardvisorError("KVM_UNAVAILABLE", `KVM API version ${version}, expected ${K("KVM_API_VERSION")}`);
      }
      for (const [cap, what] of REQUIRED_CAPS) {
        if (kvm.checkExtension(cap) <= 0) {
          throw new GuardvisorError("KVM_UNAVAILABLE", `KVM lacks ${cap} (needed for ${what})`);
        }
      }
    } catch (e) {
      kvm.close();
      throw e;
    }
    return kvm;
  }

  getApiVersion(): number {
    return wrapNative("KVM_GET_API_VERSION", () => native().getApiVersion(this.fd));
  }

  /** KVM_CHECK_EXTENSION by capability name. */
  checkExtension(cap: string): number {
    return wrapNative("KVM_CHECK_EXTENSION", () => native().checkExtension(this.fd, K(cap)));
  }

  getVcpuMmapSize(): number {
    return wrapNative("KVM_GET_VCPU_MMAP_SIZE", () => native().getVcpuMmapSize(this.fd));
  }

  /** KVM_GET_SUPPORTED_CPUID as a kvm_cpuid2 buffer, ready for KVM_SET_CPUID2. */
  getSupportedCpuid(): Uint8Array {
    const L = kernelLayout("kvm_cpuid2");
    const entry = kernelLayout("kvm_cpuid_entry2").size;
    const max = 256;
    const buf = new Uint8Array(L.size + max * entry);
    new DataView(buf.buffer).setUint32(L.off("nent"), max, true);
    wrapNative("KVM_GET_SUPPORTED_CPUID", () => native().getSupportedCpuid(this.fd, buf));
    return buf;
  }

  createVm(): Vm {
    const fd = wrapNative("KVM_CREATE_VM", () => native().createVm(this.fd, 0));
    return new Vm(this, fd);
  }

  close(): void {
    native().close(this.fd);
  }
}

export interface MemoryRegion {
  slot: number;
  gpa: number;
  size: number;
  hostAddr: bigint;
  readonly: boolean;
}

export class Vm {
  readonly kvm: Kvm;
  readonly fd: number;
  private closed = false;

  constructor(kvm: Kvm, fd: number) {
    this.kvm = kvm;
    this.fd = fd;
  }

  /** KVM_SET_USER_MEMORY_REGION (KVM_MEM_READONLY when `readonly`). */
  setUserMemoryRegion(r: MemoryRegion): void {
    const flags = r.readonly ? K("KVM_MEM_READONLY") : 0;
    wrapNative(`KVM_SET_USER_MEMORY_REGION slot ${r.slot}`, () =>
      native().setUserMemoryRegion(this.fd, r.slot, flags, r.gpa, r.size, r.hostAddr),
    );
  }

  /** KVM_ENABLE_CAP with up to four arguments. */
  enableCap(cap: string, args: bigint[] = []): void {
    const L = kernelLayout("kvm_enable_cap");
    const buf = new Uint8Array(L.size);
    const v = new DataView(buf.buffer);
    v.setUint32(L.off("cap"), K(cap), true);
    args.slice(0, 4).forEach((a, i) => {
      v.setBigUint64(L.off("args") + 8 * i, a, true);
    });
    wrapNative(`KVM_ENABLE_CAP ${cap}`, () => native().enableCap(this.fd, buf));
  }

  /** KVM_X86_SET_MSR_FILTER. */
  setMsrFilter(defaultDeny: boolean, ranges: MsrFilterRange[]): void {
    wrapNative("KVM_X86_SET_MSR_FILTER", () => native().setMsrFilter(this.fd, defaultDeny ? 1 : 0, ranges));
  }

  /** KVM_CREATE_IRQCHIP: the in-kernel PIC pair, IOAPIC and a local APIC per vCPU (before any vCPU). */
  createIrqchip(): void {
    wrapNative("KVM_CREATE_IRQCHIP", () => native().createIrqchip(this.fd));
  }

  /** KVM_CREATE_PIT2: the in-kernel i8254 timer (after the irqchip); `speakerDummy` answers port 0x61 too. */
  createPit2(speakerDummy = true): void {
    const L = kernelLayout("kvm_pit_config");
    const buf = new Uint8Array(L.size);
    new DataView(buf.buffer).setUint32(L.off("flags"), speakerDummy ? K("KVM_PIT_SPEAKER_DUMMY") : 0, true);
    wrapNative("KVM_CREATE_PIT2", () => native().createPit2(this.fd, buf));
  }

  /** KVM_SET_TSS_ADDR: three pages of guest-physical space, outside RAM, that VMX needs for real mode. */
  setTssAddr(gpa: number): void {
    wrapNative("KVM_SET_TSS_ADDR", () => native().setTssAddr(this.fd, gpa));
  }

  /** KVM_SET_IDENTITY_MAP_ADDR: one page of guest-physical space, outside RAM (VMX without unrestricted guest). */
  setIdentityMapAddr(gpa: number): void {
    const buf = new BigUint64Array([BigInt(gpa)]);
    wrapNative("KVM_SET_IDENTITY_MAP_ADDR", () => native().setIdentityMapAddr(this.fd, buf));
  }

  /** KVM_IRQ_LINE: drive a line of the in-kernel interrupt controllers (see irqLine for other threads). */
  irqLine(irq: number, level: boolean): void {
    irqLine(this.fd, irq, level);
  }

  /** KVM_CREATE_VCPU and map its kvm_run page. */
  createVcpu(id: number): VcpuHandle {
    const fd = wrapNative(`KVM_CREATE_VCPU ${id}`, () => native().createVcpu(this.fd, id));
    const runSize = this.kvm.getVcpuMmapSize();
    const runAddr = wrapNative("mmap kvm_run", () => native().mmapFd(fd, runSize));
    return { id, fd, runAddr, runSize, syncRegs: Math.max(0, this.kvm.checkExtension("KVM_CAP_SYNC_REGS")) };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native().close(this.fd);
  }
}

/** KVM_IRQ_LINE on a VM by its fd: a device model on a vCPU thread raises or lowers an interrupt line. */
export function irqLine(vmFd: number, irq: number, level: boolean): void {
  wrapNative("KVM_IRQ_LINE", () => native().irqLine(vmFd, irq, level ? 1 : 0));
}

/** Plain data that lets any thread attach to a vCPU. */
export interface VcpuHandle {
  readonly id: number;
  readonly fd: number;
  readonly runAddr: bigint;
  readonly runSize: number;
  /** What KVM_CAP_SYNC_REGS reports: the register sets the kvm_run page can carry (Vcpu.useSyncRegs). */
  readonly syncRegs: number;
}

export function releaseVcpu(h: VcpuHandle): void {
  native().munmap(h.runAddr, h.runSize);
  native().close(h.fd);
}

/** A vCPU as driven by the thread that runs it. */
export class Vcpu {
  readonly id: number;
  readonly fd: number;
  readonly run: RunPage;
  private readonly regsBuf: Uint8Array;
  private readonly regsView: DataView;
  private readonly sregsBuf: Uint8Array;
  private readonly sregsView: DataView;
  private readonly eventsBuf: Uint8Array;
  private debugBuf: Uint8Array | undefined;

  constructor(h: VcpuHandle) {
    this.id = h.id;
    this.fd = h.fd;
    this.run = new RunPage(native().arrayBufferAt(h.runAddr, h.runSize));
    this.regsBuf = new Uint8Array(kernelLayout("kvm_regs").size);
    this.regsView = new DataView(this.regsBuf.buffer);
    this.sregsBuf = new Uint8Array(kernelLayout("kvm_sregs").size);
    this.sregsView = new DataView(this.sregsBuf.buffer);
    this.eventsBuf = new Uint8Array(kernelLayout("kvm_vcpu_events").size);
  }

  /**
   * KVM_SYNC_X86_* sets that travel in the kvm_run page (useSyncRegs), else 0.
   * Then the page is the vCPU's register file between two KVM_RUNs: reads
   * decode it, writes encode it and mark it dirty, and KVM loads dirty sets
   * on entry and stores every set on the way out. No ioctl per exit.
   */
  private synced = 0;
  private readonly REGS = K("KVM_SYNC_X86_REGS");
  private readonly SREGS = K("KVM_SYNC_X86_SREGS");
  /** Synced sets whose copy in the page is older than the vCPU (an ioctl changed it since the exit). */
  private stale = 0;

  /**
   * Keep the registers and special registers in the kvm_run page from now on
   * (KVM_CAP_SYNC_REGS; `supported` is what the capability reports). Only for
   * the thread that runs the vCPU. Returns false, changing nothing, when KVM
   * cannot sync both sets.
   */
  useSyncRegs(supported: number): boolean {
    const want = this.REGS | this.SREGS;
    if ((supported & want) !== want) return false;
    this.run.validRegs = want;
    this.run.dirtyRegs = 0;
    this.synced = want;
    this.stale = want; // nothing stored yet: the first reads fill the page through the ioctls
    return true;
  }

  /** Registers come from the kvm_run page (useSyncRegs took effect). */
  get syncsRegs(): boolean {
    return this.synced !== 0;
  }

  /** KVM_RUN, decoded. A kick (EINTR) decodes as { kind: "interrupted" }. */
  runOnce(): VcpuExit {
    const rc = native().run(this.fd);
    // KVM stored every synced set on the way out; after an early EINTR, trust only what is still pending.
    if (this.synced) this.stale = rc < 0 ? this.synced & ~this.run.dirtyRegs : 0;
    if (rc < 0) return { kind: "interrupted" };
    return this.run.decode();
  }

  /** KVM_GET_TSC_KHZ: the guest's TSC rate. */
  tscKhz(): number {
    return wrapNative("KVM_GET_TSC_KHZ", () => native().getTscKhz(this.fd));
  }

  getRegs(): Regs {
    if (this.synced) {
      this.refresh(this.REGS);
      return decodeRegs(this.run.view, this.run.syncRegsAt);
    }
    wrapNative("KVM_GET_REGS", () => native().getRegs(this.fd, this.regsBuf));
    return decodeRegs(this.regsView);
  }

  setRegs(regs: Regs): void {
    if (this.synced) {
      // kvm_regs is modelled whole: the page needs no refresh first.
      encodeRegs(regs, this.run.view, this.run.syncRegsAt);
      this.stale &= ~this.REGS;
      this.run.dirtyRegs |= this.REGS;
      return;
    }
    encodeRegs(regs, this.regsView);
    wrapNative("KVM_SET_REGS", () => native().setRegs(this.fd, this.regsBuf));
  }

  getSregs(): Sregs {
    if (this.synced) {
      this.refresh(this.SREGS);
      return decodeSregs(this.run.view, this.run.syncSregsAt);
    }
    wrapNative("KVM_GET_SREGS", () => native().getSregs(this.fd, this.sregsBuf));
    return decodeSregs(this.sregsView);
  }

  setSregs(s: Sregs): void {
    // Keep the fields we do not model (interrupt bitmap): encode over the current state.
    if (this.synced) {
      this.refresh(this.SREGS);
      encodeSregs(s, this.run.view, this.run.syncSregsAt);
      this.run.dirtyRegs |= this.SREGS;
      return;
    }
    wrapNative("KVM_GET_SREGS", () => native().getSregs(this.fd, this.sregsBuf));
    encodeSregs(s, this.sregsView);
    wrapNative("KVM_SET_SREGS", () => native().setSregs(this.fd, this.sregsBuf));
  }

  /** Bring a stale synced set in the page up to date through its GET ioctl. */
  private refresh(bit: number): void {
    if ((this.stale & bit) === 0) return;
    const s = this.syncedSet(bit);
    wrapNative(s.getName, () => s.get(this.fd, s.buf));
    this.run.bytes.set(s.buf, s.at);
    this.stale &= ~bit;
  }

  /**
   * Before an ioctl that changes vCPU state the page mirrors (MSRs, guest
   * debug, events): hand KVM the changes still pending in the page, through
   * the SET ioctls, so they land in the order they were made; afterwards the
   * page is stale until the next exit.
   */
  private settle(): void {
    if (!this.synced) return;
    const dirty = this.run.dirtyRegs;
    for (const bit of [this.REGS, this.SREGS]) {
      if ((dirty & bit) === 0) continue;
      const s = this.syncedSet(bit);
      s.buf.set(this.run.bytes.subarray(s.at, s.at + s.buf.length));
      wrapNative(s.setName, () => s.set(this.fd, s.buf));
    }
    this.run.dirtyRegs = 0;
    this.stale = this.synced;
  }

  /** One synced set: where it sits in the page, its ioctl buffer, and its GET and SET ioctls. */
  private syncedSet(bit: number) {
    const n = native();
    return bit === this.REGS
      ? {
          at: this.run.syncRegsAt,
          buf: this.regsBuf,
          get: n.getRegs,
          getName: "KVM_GET_REGS",
          set: n.setRegs,
          setName: "KVM_SET_REGS",
        }
      : {
          at: this.run.syncSregsAt,
          buf: this.sregsBuf,
          get: n.getSregs,
          getName: "KVM_GET_SREGS",
          set: n.setSregs,
          setName: "KVM_SET_SREGS",
        };
  }

  /** KVM_SET_CPUID2 with a kvm_cpuid2 buffer (from Kvm.getSupportedCpuid). */
  setCpuid2(cpuid: Uint8Array): void {
    this.settle();
    wrapNative("KVM_SET_CPUID2", () => native().setCpuid2(this.fd, cpuid));
  }

  /** KVM_SET_MSRS. */
  setMsrs(entries: ReadonlyArray<readonly [number, bigint]>): void {
    const n = this.trySetMsrs(entries);
    if (n !== entries.length) {
      throw new GuardvisorError("KVM_IOCTL", `KVM_SET_MSRS set ${n} of ${entries.length} MSRs`);
    }
  }

  /** KVM_SET_MSRS, returning how many were set: KVM stops at the first value it refuses. */
  trySetMsrs(entries: ReadonlyArray<readonly [number, bigint]>): number {
    this.settle();
    const buf = this.msrBuffer(entries);
    return wrapNative("KVM_SET_MSRS", () => native().setMsrs(this.fd, buf));
  }

  private msrBuffer(entries: ReadonlyArray<readonly [number, bigint]>): Uint8Array {
    const L = kernelLayout("kvm_msrs");
    const E = kernelLayout("kvm_msr_entry");
    const buf = new Uint8Array(L.off("entries") + entries.length * E.size);
    const v = new DataView(buf.buffer);
    v.setUint32(L.off("nmsrs"), entries.length, true);
    entries.forEach(([index, data], i) => {
      const at = L.off("entries") + i * E.size;
      v.setUint32(at + E.off("index"), index, true);
      v.setBigUint64(at + E.off("data"), data, true);
    });
    return buf;
  }

  /** KVM_SET_VCPU_EVENTS: inject a CPU exception (delivered through the guest IDT). */
  injectException(vector: number, errorCode?: number): void {
    this.changeException((v, L) => {
      v.setUint8(L.off("exception.injected"), 1);
      v.setUint8(L.off("exception.nr"), vector);
      v.setUint8(L.off("exception.has_error_code"), errorCode === undefined ? 0 : 1);
      v.setUint32(L.off("exception.error_code"), errorCode ?? 0, true);
      return true;
    });
  }

  /** Withdraw the exception KVM has queued for the guest, when it is `vector` (KVM_GET/SET_VCPU_EVENTS). */
  cancelException(vector: number): void {
    this.changeException((v, L) => {
      if (v.getUint8(L.off("exception.injected")) === 0 || v.getUint8(L.off("exception.nr")) !== vector) return false;
      v.setUint8(L.off("exception.injected"), 0);
      v.setUint8(L.off("exception.has_error_code"), 0);
      v.setUint32(L.off("exception.error_code"), 0, true);
      return true;
    });
  }

  /** KVM_GET_VCPU_EVENTS, `change` the exception in it, KVM_SET_VCPU_EVENTS when it says so. */
  private changeException(change: (v: DataView, L: KernelLayout) => boolean): void {
    const L = kernelLayout("kvm_vcpu_events");
    this.settle();
    wrapNative("KVM_GET_VCPU_EVENTS", () => native().getVcpuEvents(this.fd, this.eventsBuf));
    const v = new DataView(this.eventsBuf.buffer);
    if (!change(v, L)) return;
    v.setUint32(L.off("flags"), 0, true);
    wrapNative("KVM_SET_VCPU_EVENTS", () => native().setVcpuEvents(this.fd, this.eventsBuf));
  }

  /** KVM_SET_GUEST_DEBUG with a control word and DR0..DR7. */
  setGuestDebug(control: number, debugregs: readonly bigint[] = []): void {
    this.settle();
    // Twice per captured exception (step over, re-arm): one buffer, reused.
    const L = kernelLayout("kvm_guest_debug");
    this.debugBuf ??= new Uint8Array(L.size);
    const buf = this.debugBuf;
    buf.fill(0);
    const v = new DataView(buf.buffer);
    v.setUint32(L.off("control"), control, true);
    const dr = L.off("debugreg");
    for (let i = 0; i < Math.min(8, debugregs.length); i++) v.setBigUint64(dr + 8 * i, debugregs[i] ?? 0n, true);
    wrapNative("KVM_SET_GUEST_DEBUG", () => native().setGuestDebug(this.fd, buf));
  }
}
