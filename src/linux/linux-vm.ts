/**
 * A stock Linux guest on one vCPU: parse the bzImage → plan memory → create
 * the VM with the in-kernel irqchip and PIT → RAM in one slot → zero page,
 * command line, kernel, initrd, page tables, GDT → vCPU (CPUID with the KVM
 * paravirt leaves, long mode at the 64-bit entry) → the vCPU worker, paused.
 * Then run to the end (reset, debug-exit, crash) or a timeout, with the
 * console lines. Any failure while building tears down what was built.
 */

import type { HmFault } from "../decide/hm-vm-decider.js";
import { type CompiledPolicy, compilePolicy, DEFAULT_POLICY, type Policy } from "../decide/policy.js";
import { GuardvisorError } from "../errors.js";
import { GuestMemory } from "../kvm/guest-memory.js";
import { type Kvm, releaseVcpu, Vcpu, type VcpuHandle, type Vm } from "../kvm/kvm.js";
import { K } from "../kvm/native.js";
import { makeRegions, type ProtectedRegion } from "../model/regions.js";
import type { PolicyFile } from "../policy/load.js";
import { integrityObjectName } from "../policy/names.js";
import { resolvePolicy } from "../policy/resolve.js";
import { timeScale } from "../time-scale.js";
import { type CapturedEvent, RESTART_BY_VERDICT } from "../vmm/dispatcher.js";
import { ProtectionMap } from "../vmm/protection.js";
import type { DeciderInit, ProtectionArmed } from "../vmm/vcpu-protocol.js";
import { DEFAULT_HANG_TIMEOUT_MS, type VcpuStop, VcpuThread } from "../vmm/vcpu-thread.js";
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
import { kallsymsFromVmlinux } from "./kallsyms.js";
import { type KernelPatching, kernelPatching } from "./kernel-patching.js";
import { type KernelRanges, kernelProtectedRanges, kernelVirtual, rangeOffset, symbolize } from "./kernel-ranges.js";
import type { LinuxWorkerInit } from "./linux-worker.js";
import { linuxPolicyKernel } from "./policy-kernel.js";
import type { SystemMap } from "./system-map.js";
import { decompressPayload, parseVmlinux } from "./vmlinux.js";

/**
 * With a seal, the vCPU is kicked out of KVM_RUN this often (ms of wall
 * time, not scaled: a slower machine runs user space longer, but the kick
 * must still land in it) so that ring 3 is seen even when user space makes
 * no exit. Finding ring 3 this way is a matter of chance (docs/linux-guests.md).
 */
export const LINUX_SEAL_KICK_MS = 1;

/** How long a sealed Linux vCPU may spin in ring 0 with interrupts off, with no exit, before it is hung (as gv-kernel's watchdog). */
export const DEFAULT_LINUX_HANG_TIMEOUT_MS = DEFAULT_HANG_TIMEOUT_MS;

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
  /**
   * A System.map: the sealed bounds come from its symbols. Without one the
   * kernel's own kallsyms tables (read from the vmlinux) name symbols.
   */
  systemMap?: SystemMap;
  /** The policy that decides writes to sealed memory (default DEFAULT_POLICY: deny). */
  policy?: Policy;
  /**
   * A policy file to resolve against this kernel instead: its regions name
   * the sealed sections (`.text`, `.rodata`) or symbols inside them, its
   * originators the kernel's functions (policy-kernel.ts).
   */
  policyFile?: PolicyFile;
  /** Who decides the seal's events (default: the in-VMM decider). */
  decider?: DeciderInit;
  /** Number events from after this one (a restart: the last number of the earlier boots). */
  firstSeq?: number;
  /**
   * With a seal: a vCPU in ring 0 with interrupts disabled and no exit for
   * this long is hung, a `hang` event (linux-hang.ts). Default
   * DEFAULT_LINUX_HANG_TIMEOUT_MS; 0: not watched.
   */
  hangTimeoutMs?: number;
  /** The compiled policy, before the guest runs (an hm-vm decider's health VM installs its rule table). */
  onPolicy?: (p: CompiledPolicy) => void;
  /** The hm-vm decider saw the health VM misbehave. */
  onHmFault?: (f: HmFault) => void;
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
  /** Where symbol names came from, and how many. */
  symbols?: { source: "system-map" | "kallsyms"; count: number };
  /** How many patch sites text_poke may write (0: sanctioned patching not recognised). */
  patchSites: number;
  /** Oopses and panics are caught at these, and the seal armed at the system-call entry (kernel virtual addresses). */
  crashBreakpoints: Record<string, bigint>;
  /** The sealed ranges at the end: what was sealed plus the writes verdicts let through? */
  integrity: { intact: boolean; changed: string[] };
}

/** What a sealed guest is protected with. */
interface LinuxSealed {
  ranges: KernelRanges;
  regions: ProtectedRegion[];
  map?: SystemMap;
  symbolSource?: "system-map" | "kallsyms";
  patching?: KernelPatching;
  crash: Record<string, bigint>;
  /** What the sealed ranges must hold: armed bytes plus the writes verdicts performed. */
  shadow: Uint8Array;
  /** The hang watch's limit (0: not watched). */
  hangTimeoutMs: number;
}

/** The kernel's symbols: the System.map given, else its kallsyms tables (undefined when neither). */
function kernelSymbols(payload: Uint8Array, map: SystemMap | undefined, name: string) {
  if (map) return { map, source: "system-map" as const };
  try {
    return { map: kallsymsFromVmlinux(payload, name), source: "kallsyms" as const };
  } catch {
    return undefined; // no names: events give addresses, text_poke is not recognised, no crash breakpoints
  }
}

/** How a Linux run ended. */
/** reset: the guest reset itself; restart: a verdict asked for a new boot. */
export type LinuxOutcome = "reset" | "restart" | "exit" | "halt" | "crash" | "timeout" | "stopped";

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
    readonly sealed: LinuxSealed | undefined,
    /** The policy the seal's events are decided by. */
    readonly policy: Policy,
  ) {}

  /** A protection event, named for people: what was hit and who did it, as symbols where known. */
  private sealEvent(e: CapturedEvent): LinuxSealEvent {
    const s = this.sealed;
    // Only addresses inside the kernel image are named (a module's code lies above it).
    const end = s?.map?.byName.get("_end")?.address;
    const name = (va: bigint) => (s?.map && end !== undefined && va < end ? symbolize(s.map, va) : undefined);
    const writer = name(e.rip);
    if (e.kind !== "protected-write") {
      const target =
        e.kind === "msr-write"
          ? `MSR 0x${e.msrIndex.toString(16)}`
          : e.kind === "integrity"
            ? `${integrityObjectName(e.object) ?? e.object}`
            : (writer ?? `0x${e.rip.toString(16)}`);
      return { ...e, target, writer };
    }
    const ranges = s?.ranges.ranges ?? [];
    const va = kernelVirtual(ranges, e.gpa);
    const sym = va !== undefined ? name(va) : undefined;
    const where = rangeOffset(ranges, e.gpa) ?? `0x${e.gpa.toString(16)}`;
    return { ...e, target: sym ? `${where} (${sym})` : where, targetVirtual: va, writer };
  }

  /**
   * Do the sealed ranges hold exactly what they held when the seal was armed,
   * plus the writes the policy let through? `changed` lists the first
   * differing byte of each range that does not (empty when intact, or never armed).
   */
  integrity(): { intact: boolean; changed: string[] } {
    const s = this.sealed;
    if (!s || !this.armed) return { intact: true, changed: [] };
    const changed: string[] = [];
    let at = 0;
    for (const r of s.regions) {
      const now = this.memory.read(r.start, r.end - r.start);
      const want = s.shadow.subarray(at, at + (r.end - r.start));
      at += r.end - r.start;
      if (Buffer.compare(now, want) === 0) continue;
      let i = 0;
      while (i < now.length && now[i] === want[i]) i++;
      changed.push(`${r.name}+0x${i.toString(16)}`);
    }
    return { intact: changed.length === 0, changed };
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
    const hangTimeoutMs = config.hangTimeoutMs ?? DEFAULT_LINUX_HANG_TIMEOUT_MS;
    if (!Number.isInteger(hangTimeoutMs) || hangTimeoutMs < 0) {
      throw new GuardvisorError(
        "CONFIG_INVALID",
        `hangTimeoutMs: a whole number of ms, 0 or more; got ${hangTimeoutMs}`,
      );
    }
    const symbols =
      ranges && payload ? kernelSymbols(payload, config.systemMap, config.kernelName ?? "the kernel image") : undefined;
    const policy =
      config.policy ??
      (config.policyFile && ranges
        ? resolvePolicy(
            config.policyFile,
            linuxPolicyKernel(ranges, config.kernelName ?? "the kernel image", symbols?.map),
          )
        : DEFAULT_POLICY);
    const crash: Record<string, bigint> = {};
    for (const n of ["__die", "die_addr", "panic", "entry_SYSCALL_64"]) {
      const a = symbols?.map.byName.get(n)?.address;
      if (a !== undefined) crash[n] = a;
    }
    const patching = symbols && payload ? kernelPatching(payload, symbols.map) : undefined;
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
      // Writes to the syscall MSRs exit to the VMM once the seal installs its filter.
      const msrs = regions !== undefined && kvm.checkExtension("KVM_CAP_X86_MSR_FILTER") > 0;
      if (msrs) vm.enableCap("KVM_CAP_X86_USER_SPACE_MSR", [BigInt(K("KVM_MSR_EXIT_REASON_FILTER"))]);
      vcpu = vm.createVcpu(0);
      const cpu = new Vcpu(vcpu);
      cpu.setCpuid2(encodeCpuid(linuxCpuid(decodeCpuid(kvm.getSupportedCpuid()), 0, { pvmSafe })));
      cpu.setSregs(linuxBootSregs(cpu.getSregs()));
      cpu.setRegs(linuxBootRegs(plan));
      const lines: string[] = [];
      const shadowBuffer = new SharedArrayBuffer(regions ? regions.reduce((n, r) => n + r.end - r.start, 0) : 0);
      const compiled = regions ? compilePolicy(policy, regions) : undefined;
      if (compiled) config.onPolicy?.(compiled);
      const init: Omit<LinuxWorkerInit, "control" | "events"> = {
        vcpu,
        vmFd: vm.fd,
        seal:
          regions && compiled
            ? {
                memory: memory.handle,
                regions,
                policy: compiled,
                decider: config.decider ?? { kind: "vmm" },
                ramSlot: RAM_SLOT,
                ranges: ranges?.ranges ?? [],
                patching,
                kernelPatching: policy.kernelPatching ?? "sanctioned",
                msrs,
                crash: {
                  die: crash.__die,
                  dieAddr: crash.die_addr,
                  panic: crash.panic,
                  syscallEntry: crash.entry_SYSCALL_64,
                },
                shadow: shadowBuffer,
                firstSeq: config.firstSeq,
                hangTimeoutMs,
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
          onHmFault: (f) => config.onHmFault?.(f),
        },
        {
          script: new URL("./linux-worker.js", import.meta.url),
          // Kicks find ring 3 only where there is no system-call breakpoint to arm the seal.
          kickMs: regions && crash.entry_SYSCALL_64 === undefined ? LINUX_SEAL_KICK_MS / timeScale() : 0,
        },
      );
      await thread.ready;
      const sealed =
        ranges && regions
          ? {
              ranges,
              regions,
              map: symbols?.map,
              symbolSource: symbols?.source,
              patching,
              crash,
              shadow: new Uint8Array(shadowBuffer),
              hangTimeoutMs,
            }
          : undefined;
      self = new LinuxVm(lines, image, plan, vm, memory, vcpu, thread, sealed, policy);
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
    // Samples for the hang watch: a run with no exit for a quarter of the limit is looked at.
    const watchdog = this.thread.watchHangs((this.sealed?.hangTimeoutMs ?? 0) / 4);
    this.thread.resume();
    let stop: VcpuStop;
    try {
      stop = await this.thread.done;
    } finally {
      clearTimeout(timer);
      if (watchdog) clearInterval(watchdog);
    }
    const elapsedMs = performance.now() - this.startedAt;
    const outcome: LinuxOutcome = timedOut
      ? "timeout"
      : stop.outcome === "restart"
        ? stop.detail.endsWith(RESTART_BY_VERDICT)
          ? "restart"
          : "reset"
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
            symbols: this.sealed.map
              ? { source: this.sealed.symbolSource ?? "system-map", count: this.sealed.map.symbols.length }
              : undefined,
            patchSites: this.sealed.patching?.sites.length ?? 0,
            crashBreakpoints: this.sealed.crash,
            integrity: this.integrity(),
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
