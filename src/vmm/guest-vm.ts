/**
 * A guest VM: built by one recipe of small named steps (create VM → memory →
 * load kernel → protect → boot area → vCPU → start paused), then resumed, run
 * to its end, and torn down.
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import type { HmFault } from "../decide/hm-vm-decider.js";
import { type CompiledPolicy, compilePolicy, type Policy } from "../decide/policy.js";
import { PolicyMailbox } from "../decide/policy-mailbox.js";
import { type ElfImage, PT_LOAD } from "../elf/elf.js";
import { loadElf } from "../elf/kernel-image.js";
import { Symbolizer } from "../elf/symbolizer.js";
import { configError, GuardvisorError } from "../errors.js";
import type { IdcAttach } from "../idc/attach.js";
import { GuestMemory } from "../kvm/guest-memory.js";
import { type Kvm, releaseVcpu, Vcpu, type VcpuHandle, type Vm } from "../kvm/kvm.js";
import { K, type MsrFilterRange } from "../kvm/native.js";
import { makeRegions, type ProtectedRegion } from "../model/regions.js";
import { scaled } from "../time-scale.js";
import { bootRegs, bootSregs, writeBootArea } from "./boot.js";
import type { CapturedEvent, GuestReport } from "./dispatcher.js";
import type { VirtualRange } from "./paging-seal.js";
import { ProtectionMap, planMemorySlots } from "./protection.js";
import type { DeciderInit } from "./vcpu-protocol.js";
import { type VcpuStop, VcpuThread } from "./vcpu-thread.js";

export interface GuestVmConfig {
  vmId: number;
  /** The kernel image (ELF64 bytes) and a name for messages. */
  kernel: Uint8Array;
  kernelName: string;
  memSize: number;
  cmdline: string;
  role?: number;
  policy: Policy;
  /** Who decides this VM's events (default: the in-VMM decider). */
  decider?: DeciderInit;
  /**
   * The health VM only: the IDC region, mapped at guest-physical `idcGpa`
   * (right above RAM) and served by the doorbell hypercall.
   */
  hmService?: IdcAttach & { gpa: number };
  /**
   * The guest's common exception entry, where a hardware breakpoint captures
   * every CPU exception first: an ELF symbol name or a guest-virtual address.
   * Default: the symbol `gv_exception_entry` when the kernel has it.
   */
  exceptionEntry?: string | bigint;
  /** Events this guest had before this VM (its earlier incarnations): numbering goes on from there. */
  firstSeq?: number;
  /** Events kept in `events` (default 10,000; later ones still reach onEvent). */
  keepEvents?: number;
  /**
   * Watchdog: a vCPU inside KVM_RUN with no exit for this long is hung (a
   * "hang" event, decided by policy). 0 or absent: no watchdog.
   */
  hangTimeoutMs?: number;
  /** Called once the policy is compiled, before the guest runs (to publish its rule table). */
  onPolicy?: (p: CompiledPolicy) => void;
  /** Called when the guest's exception module reports an exception it handled. */
  onGuestReport?: (r: GuestReport) => void;
  /** Called when a `pause` verdict parks the guest (resume() lets it go on). */
  onPaused?: (detail: string) => void;
  /** Called when this guest's decider sees the health VM misbehave. */
  onHmFault?: (f: HmFault) => void;
  /** Called with each serial line as it arrives. */
  onSerial?: (line: string) => void;
  /** Called with each event as it arrives. */
  onEvent?: (e: CapturedEvent) => void;
}

export interface Integrity {
  protectedBytes: number;
  intact: boolean;
  /** Regions whose hash changed. */
  changed: string[];
}

export class GuestVm {
  readonly config: GuestVmConfig;
  readonly image: ElfImage;
  readonly symbolizer: Symbolizer;
  readonly protection: ProtectionMap;
  readonly events: CapturedEvent[] = [];
  readonly guestReports: GuestReport[] = [];
  /** MSRs whose writes the MSR filter sends to the VMM. */
  protectedMsrs: number[] = [];
  /** Where exceptions are captured (undefined: no known entry, capture off). */
  exceptionEntry: bigint | undefined;
  readonly serial: string[] = [];
  private readonly lockHashes: string[];
  private stopped: VcpuStop | undefined;
  private readonly mailbox = new PolicyMailbox();
  private released = false;

  private constructor(
    config: GuestVmConfig,
    image: ElfImage,
    protection: ProtectionMap,
    private readonly vm: Vm,
    readonly memory: GuestMemory,
    private readonly vcpu: VcpuHandle,
    private thread: VcpuThread | undefined,
  ) {
    this.config = config;
    this.image = image;
    this.protection = protection;
    this.symbolizer = new Symbolizer(image.symbols);
    this.lockHashes = protection.hash(memory);
  }

  /** Build a VM, paused before its first instruction. */
  static async build(kvm: Kvm, config: GuestVmConfig): Promise<GuestVm> {
    const { image, regions: elfRegions } = loadElf(config.kernel, config.memSize);
    const regions = makeRegions(elfRegions, config.memSize);
    const protection = new ProtectionMap(regions, config.memSize);
    const vm = kvm.createVm();
    let memory: GuestMemory | undefined;
    let vcpu: VcpuHandle | undefined;
    try {
      memory = GuestMemory.allocate(config.memSize);
      loadSegments(memory, image);
      const slots = mapMemory(vm, memory, protection);
      const idc = config.hmService;
      if (idc) {
        vm.setUserMemoryRegion({
          slot: slots,
          gpa: idc.gpa,
          size: idc.memory.size,
          hostAddr: idc.memory.hostAddr,
          readonly: false,
        });
      }
      writeBootArea(memory, {
        memSize: config.memSize,
        cmdline: config.cmdline,
        role: config.role ?? ABI_CONSTANTS.ROLE_GUEST,
        vmId: config.vmId,
        idcGpa: idc?.gpa,
        idcSize: idc?.memory.size,
      });
      const msrs = filteredMsrs(config.policy);
      protectMsrs(vm, msrs);
      vcpu = vm.createVcpu(0);
      configureVcpu(kvm, vcpu, image.entry);
      const guest = new GuestVm(config, image, protection, vm, memory, vcpu, undefined);
      guest.protectedMsrs = msrs;
      guest.exceptionEntry = resolveEntry(image, config.exceptionEntry);
      const compiled = compilePolicy(config.policy, regions);
      config.onPolicy?.(compiled);
      await guest.startThread(compiled);
      return guest;
    } catch (e) {
      if (vcpu) releaseVcpu(vcpu);
      memory?.release();
      vm.close();
      throw e;
    }
  }

  private async startThread(policy: CompiledPolicy): Promise<void> {
    const hm = this.config.hmService;
    this.thread = new VcpuThread(
      {
        vmId: this.config.vmId,
        vcpu: this.vcpu,
        memory: this.memory.handle,
        regions: [...this.protection.regions],
        protectedVirtual: virtualRanges(this.image, this.protection.regions),
        policy,
        decider: this.config.decider ?? { kind: "vmm" },
        policyMailbox: this.mailbox.buffer,
        exceptionEntry: this.exceptionEntry,
        protectedMsrs: this.protectedMsrs,
        firstSeq: this.config.firstSeq,
        hmService: hm
          ? { memory: hm.memory, layout: hm.layout, control: hm.control, counters: hm.counters }
          : undefined,
      },
      {
        onSerial: (line) => {
          if (this.serial.length < 100_000) this.serial.push(line);
          this.config.onSerial?.(line);
        },
        onEvent: (e) => {
          // A write the policy allowed changed a protected region: that change is sanctioned.
          if (e.kind === "protected-write" && (e.verdict === "allow" || e.verdict === "log")) this.relock();
          if (this.events.length < (this.config.keepEvents ?? 10_000)) this.events.push(e);
          this.config.onEvent?.(e);
        },
        onHmFault: (f) => this.config.onHmFault?.(f),
        onPaused: (detail) => {
          this.parked = detail;
          this.runTimer?.hold();
          this.config.onPaused?.(detail);
        },
        onGuestReport: (r) => {
          if (this.guestReports.length < 10_000) this.guestReports.push(r);
          this.config.onGuestReport?.(r);
        },
      },
    );
    const thread = this.thread;
    const limit = timeout(VCPU_START_MS, false);
    try {
      const started = await Promise.race([thread.ready.then(() => true), limit.promise]);
      if (!started) {
        throw new GuardvisorError("INTERNAL", `the vCPU thread did not start within ${VCPU_START_MS / 1000} s`);
      }
    } catch (e) {
      // The caller frees the memory and the vCPU next: the thread must be gone first.
      await thread.terminate();
      throw e;
    } finally {
      limit.cancel();
    }
  }

  resume(): void {
    this.thread?.resume();
  }

  /** The vCPU has stopped (however it stopped). */
  get hasStopped(): boolean {
    return this.stopped !== undefined;
  }

  /** Why a `pause` verdict parked the guest, while it is parked. */
  get pausedBy(): string | undefined {
    return this.parked;
  }
  private parked: string | undefined;
  /** The run's time limit, held while the guest is paused by a verdict. */
  private runTimer: PausableTimer | undefined;

  /** Let a guest parked by a `pause` verdict go on. False when it was not parked. */
  resumePaused(): boolean {
    if (this.parked === undefined || !this.thread?.resume()) return false;
    this.parked = undefined;
    this.runTimer?.go();
    return true;
  }

  /** Resume; resolves when the guest stops (however it stops). */
  run(): Promise<VcpuStop> {
    const thread = this.thread;
    if (!thread) throw new GuardvisorError("INTERNAL", "VM has no vCPU thread");
    thread.resume();
    return thread.done.then((s) => {
      this.stopped = s;
      return s;
    });
  }

  /** The vCPU thread's Linux thread id (for its CPU time in /proc/self/task). */
  get vcpuTid(): number {
    return this.thread?.threadId ?? 0;
  }

  /** VM exits so far (counted by the vCPU thread in shared memory; wraps at 2^31). */
  exitCount(): number {
    return this.thread ? this.thread.progress().exits >>> 0 : 0;
  }

  /** The guest's TSC rate in kHz. */
  tscKhz(): number {
    return new Vcpu(this.vcpu).tscKhz();
  }

  /**
   * Hot reload: compile `policy` against this VM's regions and hand it to the
   * vCPU thread (it takes it between two exits), then to onPolicy (the health
   * VM's copy). In that order, so the vCPU thread knows every policy the
   * health VM may answer under.
   */
  reloadPolicy(policy: Policy): CompiledPolicy {
    this.checkReload(policy);
    const compiled = compilePolicy(policy, this.protection.regions);
    this.mailbox.post(compiled);
    this.config.onPolicy?.(compiled);
    return compiled;
  }

  /** Throws CONFIG_INVALID if `policy` cannot replace this VM's policy while it runs. */
  checkReload(policy: Policy): void {
    compilePolicy(policy, this.protection.regions); // regions it names must exist here
    const missing = filteredMsrs(policy).filter((m) => !this.protectedMsrs.includes(m));
    if (missing.length > 0) {
      const list = missing.map((m) => `0x${m.toString(16)}`).join(", ");
      throw configError(
        "objects.msrs",
        `a reload cannot filter MSRs the running VM does not (${list}); start a new run`,
      );
    }
  }

  /** Ask the vCPU to stop (it leaves KVM_RUN at once). */
  stop(): void {
    if (!this.released) this.thread?.stop();
  }

  /** Resume and wait until the guest stops, or stop it after `timeoutMs`. */
  async runToEnd(timeoutMs: number): Promise<VcpuStop & { timedOut: boolean }> {
    const thread = this.thread;
    if (!thread) throw new GuardvisorError("INTERNAL", "VM has no vCPU thread");
    let timedOut = false;
    // The time limit does not run while a `pause` verdict holds the guest.
    const timer = new PausableTimer(timeoutMs, () => {
      timedOut = true;
      thread.stop();
    });
    this.runTimer = timer;
    const watchdog = thread.watchHangs(this.config.hangTimeoutMs ?? 0);
    thread.resume();
    try {
      this.stopped = await thread.done;
    } finally {
      timer.cancel();
      this.runTimer = undefined;
      if (watchdog) clearInterval(watchdog);
    }
    return { ...this.stopped, timedOut };
  }

  /**
   * Take the lock hashes again after an allowed write. Every write to a
   * protected region exits to the VMM, so between two allowed writes nothing
   * else can have changed one: the new hashes hold only sanctioned changes.
   */
  private relock(): void {
    if (this.released) return; // a late message: the memory is gone
    this.lockHashes.splice(0, this.lockHashes.length, ...this.protection.hash(this.memory));
    this.sanctionedWrites++;
  }

  /** Writes to protected regions the policy allowed (and the VMM performed). */
  sanctionedWrites = 0;

  /** Compare every protected region with its hash at lock time (or after the last allowed write). */
  integrity(): Integrity {
    if (this.released) throw new GuardvisorError("INTERNAL", "integrity of a VM that was destroyed");
    const now = this.protection.hash(this.memory);
    const changed = this.protection.regions.filter((_, i) => now[i] !== this.lockHashes[i]).map((r) => r.name);
    return { protectedBytes: this.protection.protectedBytes, intact: changed.length === 0, changed };
  }

  /** Symbolize a guest-physical address through the kernel's virtual addresses. */
  symbolizePhys(gpa: number): string {
    const seg = this.image.loadSegments.find((s) => gpa >= Number(s.paddr) && gpa < Number(s.paddr) + s.memsz);
    const va = seg ? Number(seg.vaddr) + (gpa - Number(seg.paddr)) : gpa;
    return this.symbolizer.format(va);
  }

  regionName(id: number): string | undefined {
    return this.protection.regionById(id)?.name;
  }

  /** Free the vCPU, memory and VM. The vCPU thread must have ended. */
  async destroy(): Promise<void> {
    if (this.released) return;
    if (this.thread && !this.stopped) {
      this.thread.stop();
      const limit = timeout(2000, undefined);
      const ended = await Promise.race([this.thread.done, limit.promise]).finally(limit.cancel);
      if (!ended) await this.thread.terminate();
    }
    this.released = true;
    releaseVcpu(this.vcpu);
    this.memory.release();
    this.vm.close();
  }
}

/** A vCPU thread must reach KVM_RUN within this long (60 s, times the time scale), or the build fails (it is ended). */
const VCPU_START_MS = scaled(60_000);

/** MSRs whose writes exit to the VMM (protected once the guest seals them). */
export const PROTECTED_MSRS: ReadonlySet<number> = new Set([
  0xc0000080, // EFER
  0xc0000081, // STAR
  0xc0000082, // LSTAR
  0xc0000083, // CSTAR
  0xc0000084, // SFMASK
  0x174, // SYSENTER_CS
  0x175, // SYSENTER_ESP
  0x176, // SYSENTER_EIP
]);

/** The MSRs to filter: PROTECTED_MSRS and every MSR the policy names as an object. */
export function filteredMsrs(policy: Policy): number[] {
  const all = new Set(PROTECTED_MSRS);
  for (const m of policy.objects?.msrs ?? []) all.add(m.index);
  return [...all].sort((a, b) => a - b);
}

/** Runs of consecutive MSR indexes, as filter ranges (a clear bit denies the write, so it exits to the VMM). */
export function msrFilterRanges(msrs: readonly number[], flags: number): MsrFilterRange[] {
  const ranges: MsrFilterRange[] = [];
  for (const m of msrs) {
    const last = ranges.at(-1);
    if (last && last.base + last.nmsrs === m && last.nmsrs < 64) last.nmsrs++;
    else ranges.push({ flags, base: m, nmsrs: 1, bitmap: new Uint8Array(8) });
  }
  return ranges;
}

/** MSR filter: writes to `msrs` exit to the VMM. */
function protectMsrs(vm: Vm, msrs: readonly number[]): void {
  const ranges = msrFilterRanges(msrs, K("KVM_MSR_FILTER_WRITE"));
  const max = K("KVM_MSR_FILTER_MAX_RANGES");
  if (ranges.length > max) {
    throw configError("objects.msrs", `${ranges.length} separate MSR ranges to filter; KVM takes at most ${max}`);
  }
  try {
    vm.enableCap("KVM_CAP_X86_USER_SPACE_MSR", [BigInt(K("KVM_MSR_EXIT_REASON_FILTER"))]);
    vm.setMsrFilter(false, ranges);
  } catch (e) {
    throw new GuardvisorError("KVM_UNAVAILABLE", `MSR protection needs the KVM MSR filter: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

/** The exception entry as a guest-virtual address, from a symbol name or an address. */
function resolveEntry(image: ElfImage, want: string | bigint | undefined): bigint | undefined {
  if (typeof want === "bigint") return want;
  const name = want ?? "gv_exception_entry";
  const sym = image.symbols.find((s) => s.name === name);
  if (!sym) {
    if (want === undefined) return undefined; // a kernel without gv-kernel's entry: capture off
    throw configError("--exception-entry", `the kernel has no symbol named ${name}`);
  }
  return BigInt(sym.value);
}

/** Copy every PT_LOAD segment to its physical address and zero its tail. */
export function loadSegments(mem: GuestMemory, image: ElfImage): void {
  for (const s of image.loadSegments) {
    const paddr = Number(s.paddr);
    mem.write(paddr, image.data.subarray(s.offset, s.offset + s.filesz));
    if (s.memsz > s.filesz) mem.fill(paddr + s.filesz, s.memsz - s.filesz, 0);
  }
}

/** Each protected region at the kernel virtual address its PT_LOAD segment maps it to. */
export function virtualRanges(image: ElfImage, regions: readonly ProtectedRegion[]): VirtualRange[] {
  const out: VirtualRange[] = [];
  for (const r of regions) {
    const seg = image.segments.find(
      (s) => s.type === PT_LOAD && s.paddr <= r.start && r.end <= s.paddr + Math.max(s.memsz, s.filesz),
    );
    if (!seg) continue;
    const start = BigInt(seg.vaddr) + BigInt(r.start - seg.paddr);
    out.push({ name: r.name, start, end: start + BigInt(r.end - r.start), gpa: r.start });
  }
  return out;
}

/** Back RAM with memory slots: read-only over protected pages. Returns the number of slots used. */
function mapMemory(vm: Vm, mem: GuestMemory, protection: ProtectionMap): number {
  const plan = planMemorySlots(mem.size, protection.regions);
  plan.forEach((s, slot) => {
    vm.setUserMemoryRegion({
      slot,
      gpa: s.gpa,
      size: s.size,
      hostAddr: mem.hostAddressOf(s.gpa),
      readonly: s.readonly,
    });
  });
  return plan.length;
}

function configureVcpu(kvm: Kvm, h: VcpuHandle, entry: number): void {
  const cpu = new Vcpu(h);
  cpu.setCpuid2(kvm.getSupportedCpuid());
  cpu.setSregs(bootSregs(cpu.getSregs()));
  cpu.setRegs(bootRegs(entry));
}

/**
 * A promise of `value` after `ms`, and cancel() to clear its timer once it is
 * no longer needed: a pending timer keeps its promise's reactions alive, and
 * with them what they reach (this VM, its thread, its memory) until it fires.
 */
function timeout<T>(ms: number, value: T): { promise: Promise<T>; cancel: () => void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<T>((r) => {
    timer = setTimeout(() => r(value), ms).unref();
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/** A one-shot timer that can be held and let go again, keeping the time left. */
class PausableTimer {
  private timer: NodeJS.Timeout | undefined;
  private left: number;
  private since = 0;

  constructor(
    ms: number,
    private readonly fire: () => void,
  ) {
    this.left = ms;
    this.go();
  }

  /** While held, this keeps the process alive: a parked guest is still a running guest. */
  private keepAlive: NodeJS.Timeout | undefined;

  go(): void {
    clearInterval(this.keepAlive);
    this.keepAlive = undefined;
    if (this.timer) return;
    this.since = Date.now();
    this.timer = setTimeout(this.fire, Math.max(0, this.left));
  }

  hold(): void {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.left -= Date.now() - this.since;
    this.keepAlive = setInterval(() => {}, 60_000);
  }

  cancel(): void {
    clearTimeout(this.timer);
    clearInterval(this.keepAlive);
    this.timer = undefined;
    this.keepAlive = undefined;
  }
}
