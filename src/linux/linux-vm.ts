/**
 * A stock Linux guest on one vCPU: parse the bzImage → plan memory → create
 * the VM with the in-kernel irqchip and PIT → RAM in one slot → zero page,
 * command line, kernel, initrd, page tables, GDT → vCPU (CPUID with the KVM
 * paravirt leaves, long mode at the 64-bit entry) → the vCPU worker, paused.
 * Then run to the end (reset, debug-exit, crash) or a timeout, with the
 * console lines. Any failure while building tears down what was built.
 */
import { compilePolicy, DEFAULT_POLICY, type Policy } from "../decide/policy.js";
import { GuardvisorError } from "../errors.js";
import { GuestMemory } from "../kvm/guest-memory.js";
import { type Kvm, releaseVcpu, Vcpu, type VcpuHandle, type Vm } from "../kvm/kvm.js";
import { makeRegions, type ProtectedRegion } from "../model/regions.js";
import { timeScale } from "../time-scale.js";
import type { CapturedEvent } from "../vmm/dispatcher.js";
import { ProtectionMap } from "../vmm/protection.js";
import type { ProtectionArmed } from "../vmm/vcpu-protocol.js";
import { type VcpuStop, VcpuThread } from "../vmm/vcpu-thread.js";
import {
  DEFAULT_LINUX_CMDLINE,
  type LinuxBootPlan,
  linuxBootRegs,
  linuxBootSregs,
  planLinuxBoot,
  writeLinuxBoot,
} from "./boot-params.js";
import { type BzImage, parseBzImage } from "./bzimage.js";
import { decodeCpuid, encodeCpuid, hostKvmIsPvm, linuxCpuid } from "./cpuid.js";
import { type KernelRanges, kernelProtectedRanges, kernelVirtual, rangeOffset, symbolize } from "./kernel-ranges.js";
import type { LinuxWorkerInit } from "./linux-worker.js";
import type { SystemMap } from "./system-map.js";
import { decompressPayload, parseVmlinux } from "./vmlinux.js";

/**
 * With a seal, the vCPU is kicked out of KVM_RUN this often (ms of wall
 * time, not scaled: a slower machine runs user space longer, but the kick
 * must still land in it) so that ring 3 is seen even when user space makes
 * no exit. Finding ring 3 this way is a matter of chance (docs/linux-guests.md).
 */
export const LINUX_SEAL_KICK_MS = 1;

/** The memory slot holding all guest RAM (until the seal splits it from there on). */
const RAM_SLOT = 0;

/** Guest-physical pages KVM may need outside RAM (below the 4 GiB boundary, above any RAM we allow). */
export const KVM_TSS_ADDR = 0xfffbd000;
export const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;

export interface LinuxVmConfig {
  /** The bzImage bytes and a name for messages. */
  kernel: Uint8Array;
  kernelName?: string;
  initrd?: Uint8Array;
  /** The whole kernel command line (default DEFAULT_LINUX_CMDLINE). */
  cmdline?: string;
  /** Guest RAM in bytes. */
  memSize: number;
  /**
   * Who decompresses the kernel: "host" (default) loads the vmlinux inside
   * the bzImage and enters startup_64; "guest" enters the bzImage's 64-bit
   * entry and lets its decompressor run (slow where guest ring 0 is
   * emulated, as on PVM: minutes for an xz kernel).
   */
  decompress?: "host" | "guest";
  /**
   * Hide the CPU features PVM cannot run in guest ring 0 (default: on PVM
   * hosts; see cpuid.ts), and add `noxsave` to the command line.
   */
  pvmSafeCpuid?: boolean;
  /** Each console line as it arrives. */
  onSerial?: (line: string) => void;
  /**
   * Seal the kernel's code and read-only data once user space runs
   * (linux-seal.ts). Needs host decompression (the vmlinux's sections).
   */
  seal?: boolean;
  /** A System.map: the sealed bounds come from its symbols, and events name them. */
  systemMap?: SystemMap;
  /** The policy that decides writes to sealed memory (default DEFAULT_POLICY: deny). */
  policy?: Policy;
}

/** A write to sealed memory, as the run reports it. */
export interface LinuxSealEvent extends CapturedEvent {
  /** The target: "section+0xoff", and "(symbol+0xoff)" with a System.map. */
  target: string;
  /** The target's kernel virtual address. */
  targetVirtual?: bigint;
  /** The writing instruction as "symbol+0xoff" (with a System.map). */
  writer?: string;
}

/** What the seal did in a run. */
export interface LinuxSealReport {
  ranges: KernelRanges;
  /** When it was armed (undefined: the guest never ran in ring 3). */
  armed?: ProtectionArmed & { elapsedMs: number };
  /** The events (the worker posts at most MAX_POSTED_EVENTS). */
  events: LinuxSealEvent[];
}

/** How a Linux run ended. */
export type LinuxOutcome = "reset" | "exit" | "halt" | "crash" | "timeout" | "stopped";

export interface LinuxRunResult {
  outcome: LinuxOutcome;
  /** The debug-exit code (outcome "exit"). */
  code?: number;
  detail: string;
  /** Wall-clock time from resume to the end. */
  elapsedMs: number;
  /** VM exits (kicks excluded). */
  exits: number;
  counters: Record<string, number>;
  /** The console lines captured (at most MAX_CONSOLE_LINES). */
  console: string[];
  /** A "Kernel panic" line was seen on the console. */
  panicked: boolean;
  /** With a seal: when it was armed and what writes hit it. */
  seal?: LinuxSealReport;
}

export const MAX_CONSOLE_LINES = 100_000;

export class LinuxVm {
  private released = false;
  private startedAt = 0;
  private startedAtEpoch = 0;
  private armed: ProtectionArmed | undefined;
  private readonly sealEvents: LinuxSealEvent[] = [];

  private constructor(
    /** The console lines so far (at most MAX_CONSOLE_LINES). */
    readonly console: string[],
    readonly image: BzImage,
    readonly plan: LinuxBootPlan,
    private readonly vm: Vm,
    readonly memory: GuestMemory,
    private readonly vcpu: VcpuHandle,
    private readonly thread: VcpuThread,
    /** The sealed ranges (with a seal). */
    readonly sealed: { ranges: KernelRanges; regions: ProtectedRegion[]; map?: SystemMap } | undefined,
  ) {}

  /** A sealed-memory event, named for people. */
  private sealEvent(e: CapturedEvent): LinuxSealEvent {
    const s = this.sealed;
    const ranges = s?.ranges.ranges ?? [];
    const va = kernelVirtual(ranges, e.gpa);
    const sym = s?.map && va !== undefined ? symbolize(s.map, va) : undefined;
    const where = rangeOffset(ranges, e.gpa) ?? `0x${e.gpa.toString(16)}`;
    return {
      ...e,
      target: sym ? `${where} (${sym})` : where,
      targetVirtual: va,
      writer: s?.map ? symbolize(s.map, e.rip) : undefined,
    };
  }

  /** SHA-256 of each sealed range now (in range order). */
  sealedHashes(): string[] {
    const s = this.sealed;
    return s ? new ProtectionMap(s.regions, this.memory.size).hash(this.memory) : [];
  }

  /** Build the VM, paused before the kernel's first instruction. */
  static async build(kvm: Kvm, config: LinuxVmConfig): Promise<LinuxVm> {
    const image = parseBzImage(config.kernel, config.kernelName);
    const payload = (config.decompress ?? "host") === "host" ? decompressPayload(image) : undefined;
    const vmlinux = payload ? parseVmlinux(payload, config.memSize) : undefined;
    if (config.seal && !payload) {
      throw new GuardvisorError("CONFIG_INVALID", "seal: needs the kernel decompressed on the host (its sections)");
    }
    const ranges =
      config.seal && payload ? kernelProtectedRanges(payload, config.memSize, config.systemMap) : undefined;
    const regions = ranges ? makeRegions(ranges.ranges, config.memSize) : undefined;
    const pvmSafe = config.pvmSafeCpuid ?? hostKvmIsPvm();
    const cmdline = config.cmdline ?? DEFAULT_LINUX_CMDLINE;
    const plan = planLinuxBoot(image, {
      memSize: config.memSize,
      // PVM runs XRSTOR from the guest's own CPUID view whatever KVM_SET_CPUID2 says: turn XSAVE off in the kernel.
      cmdline: pvmSafe && !/(^| )noxsave( |$)/.test(cmdline) ? `${cmdline} noxsave`.trim() : cmdline,
      initrd: config.initrd,
      vmlinux,
    });
    for (const cap of ["KVM_CAP_IRQCHIP", "KVM_CAP_PIT2"]) {
      if (kvm.checkExtension(cap) <= 0) {
        throw new GuardvisorError(
          "KVM_UNAVAILABLE",
          `KVM lacks ${cap} (a Linux guest needs the in-kernel irqchip and PIT)`,
        );
      }
    }
    const vm = kvm.createVm();
    let memory: GuestMemory | undefined;
    let vcpu: VcpuHandle | undefined;
    let thread: VcpuThread | undefined;
    try {
      if (kvm.checkExtension("KVM_CAP_SET_TSS_ADDR") > 0) vm.setTssAddr(KVM_TSS_ADDR);
      if (kvm.checkExtension("KVM_CAP_SET_IDENTITY_MAP_ADDR") > 0) vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
      vm.createIrqchip();
      vm.createPit2();
      memory = GuestMemory.allocate(plan.memSize);
      vm.setUserMemoryRegion({
        slot: RAM_SLOT,
        gpa: 0,
        size: memory.size,
        hostAddr: memory.hostAddressOf(0),
        readonly: false,
      });
      writeLinuxBoot(memory.bytes, image, plan, config.initrd);
      vcpu = vm.createVcpu(0);
      const cpu = new Vcpu(vcpu);
      cpu.setCpuid2(encodeCpuid(linuxCpuid(decodeCpuid(kvm.getSupportedCpuid()), 0, { pvmSafe })));
      cpu.setSregs(linuxBootSregs(cpu.getSregs()));
      cpu.setRegs(linuxBootRegs(plan));
      const lines: string[] = [];
      const init: Omit<LinuxWorkerInit, "control"> = {
        vcpu,
        vmFd: vm.fd,
        seal: regions
          ? {
              memory: memory.handle,
              regions,
              policy: compilePolicy(config.policy ?? DEFAULT_POLICY, regions),
              ramSlot: RAM_SLOT,
            }
          : undefined,
      };
      let self: LinuxVm | undefined;
      const early: CapturedEvent[] = [];
      thread = new VcpuThread(
        init,
        {
          onSerial: (line) => {
            if (lines.length < MAX_CONSOLE_LINES) lines.push(line);
            config.onSerial?.(line);
          },
          onEvent: (e) => {
            if (self) self.sealEvents.push(self.sealEvent(e));
            else early.push(e);
          },
          onArmed: (a) => {
            if (self) self.armed = a;
          },
        },
        {
          script: new URL("./linux-worker.js", import.meta.url),
          kickMs: regions ? LINUX_SEAL_KICK_MS / timeScale() : 0,
        },
      );
      await thread.ready;
      const sealed = ranges && regions ? { ranges, regions, map: config.systemMap } : undefined;
      self = new LinuxVm(lines, image, plan, vm, memory, vcpu, thread, sealed);
      for (const e of early) self.sealEvents.push(self.sealEvent(e));
      return self;
    } catch (e) {
      if (thread) await thread.terminate();
      if (vcpu) releaseVcpu(vcpu);
      memory?.release();
      vm.close();
      throw e;
    }
  }

  /** VM exits so far (kicks excluded). */
  exitCount(): number {
    return this.thread.progress().exits >>> 0;
  }

  /** Milliseconds since the run started (0 before). */
  elapsedMs(): number {
    return this.startedAt === 0 ? 0 : performance.now() - this.startedAt;
  }

  /** Ask the vCPU to stop. */
  stop(): void {
    if (!this.released) this.thread.stop();
  }

  /** Resume and wait until the guest ends, or stop it after `timeoutMs`. */
  async runToEnd(timeoutMs: number): Promise<LinuxRunResult> {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.thread.stop();
    }, timeoutMs);
    this.startedAt = performance.now();
    this.startedAtEpoch = Date.now();
    this.thread.resume();
    let stop: VcpuStop;
    try {
      stop = await this.thread.done;
    } finally {
      clearTimeout(timer);
    }
    const elapsedMs = performance.now() - this.startedAt;
    const outcome: LinuxOutcome = timedOut
      ? "timeout"
      : stop.outcome === "restart"
        ? "reset"
        : stop.outcome === "exit" || stop.outcome === "halt" || stop.outcome === "crash" || stop.outcome === "stopped"
          ? stop.outcome
          : "crash";
    return {
      outcome,
      code: stop.code,
      detail: timedOut ? `no end within ${Math.round(timeoutMs / 1000)} s` : stop.detail,
      elapsedMs,
      exits: this.exitCount(),
      counters: stop.counters ?? {},
      console: this.console,
      panicked: this.console.some((l) => l.includes("Kernel panic")),
      seal: this.sealed
        ? {
            ranges: this.sealed.ranges,
            armed: this.armed ? { ...this.armed, elapsedMs: this.armed.timeMs - this.startedAtEpoch } : undefined,
            events: this.sealEvents,
          }
        : undefined,
    };
  }

  /** Free the vCPU, memory and VM (stopping the vCPU thread first). */
  async destroy(): Promise<void> {
    if (this.released) return;
    this.thread.stop();
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([
      this.thread.done.then(() => true),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(false), 2000);
      }),
    ]);
    clearTimeout(timer);
    if (!ended) await this.thread.terminate();
    this.released = true;
    releaseVcpu(this.vcpu);
    this.memory.release();
    this.vm.close();
  }
}
