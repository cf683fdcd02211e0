/**
 * A guest VM: built by one recipe of small named steps (create VM → memory →
 * load kernel → protect → boot area → vCPU → start paused), then resumed, run
 * to its end, and torn down.
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import type { HmFault } from "../decide/hm-vm-decider.js";
import { type CompiledPolicy, compilePolicy, type Policy } from "../decide/policy.js";
import { type ElfImage, loadElf } from "../elf/elf.js";
import { Symbolizer } from "../elf/symbolizer.js";
import { GuardvisorError } from "../errors.js";
import { GuestMemory } from "../kvm/guest-memory.js";
import { type Kvm, releaseVcpu, Vcpu, type VcpuHandle, type Vm } from "../kvm/kvm.js";
import { bootRegs, bootSregs, writeBootArea } from "./boot.js";
import type { CapturedEvent } from "./dispatcher.js";
import { makeRegions, ProtectionMap, planMemorySlots } from "./protection.js";
import type { DeciderInit, IdcAttach } from "./vcpu-protocol.js";
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
  /** Called once the policy is compiled, before the guest runs (to publish its rule table). */
  onPolicy?: (p: CompiledPolicy) => void;
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
  readonly serial: string[] = [];
  private readonly lockHashes: string[];
  private stopped: VcpuStop | undefined;
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
      vcpu = vm.createVcpu(0);
      configureVcpu(kvm, vcpu, image.entry);
      const guest = new GuestVm(config, image, protection, vm, memory, vcpu, undefined);
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
        policy,
        decider: this.config.decider ?? { kind: "vmm" },
        hmService: hm ? { memory: hm.memory, layout: hm.layout, control: hm.control } : undefined,
      },
      {
        onSerial: (line) => {
          if (this.serial.length < 100_000) this.serial.push(line);
          this.config.onSerial?.(line);
        },
        onEvent: (e) => {
          this.events.push(e);
          this.config.onEvent?.(e);
        },
        onHmFault: (f) => this.config.onHmFault?.(f),
      },
    );
    await this.thread.ready;
  }

  resume(): void {
    this.thread?.resume();
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

  /** The guest's TSC rate in kHz. */
  tscKhz(): number {
    return new Vcpu(this.vcpu).tscKhz();
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
    const timer = setTimeout(() => {
      timedOut = true;
      thread.stop();
    }, timeoutMs);
    thread.resume();
    try {
      this.stopped = await thread.done;
    } finally {
      clearTimeout(timer);
    }
    return { ...this.stopped, timedOut };
  }

  /** Compare every protected region with its hash at lock time. */
  integrity(): Integrity {
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
      const ended = await Promise.race([this.thread.done, sleep(2000).then(() => undefined)]);
      if (!ended) await this.thread.terminate();
    }
    this.released = true;
    releaseVcpu(this.vcpu);
    this.memory.release();
    this.vm.close();
  }
}

/** Copy every PT_LOAD segment to its physical address and zero its tail. */
function loadSegments(mem: GuestMemory, image: ElfImage): void {
  for (const s of image.loadSegments) {
    const paddr = Number(s.paddr);
    mem.write(paddr, image.data.subarray(s.offset, s.offset + s.filesz));
    if (s.memsz > s.filesz) mem.fill(paddr + s.filesz, s.memsz - s.filesz, 0);
  }
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

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
