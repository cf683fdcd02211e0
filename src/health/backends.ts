/**
 * Where the health-management engine runs. In production it is the health
 * VM: gv-kernel with role=hm in its own KVM VM, the IDC region mapped right
 * above its RAM. The same engine source also builds as a host process
 * (guest/out/hm-host) serving the IDC region through a shared file: the tests
 * use it to exercise the IDC protocol and core health management on hosts
 * without /dev/kvm. Both stop the same way when the engine faults.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ABI_CONSTANTS as C } from "../abi/guest-abi.js";
import { DEFAULT_POLICY } from "../decide/policy.js";
import { GuardvisorError } from "../errors.js";
import type { IdcRegion } from "../idc/channel.js";
import type { HmControl } from "../idc/hm-control.js";
import type { IdcLayout } from "../idc/layout.js";
import { GuestMemory } from "../kvm/guest-memory.js";
import type { Kvm } from "../kvm/kvm.js";
import { packageRoot } from "../kvm/native.js";
import { GuestVm } from "../vmm/guest-vm.js";
import type { VcpuStop } from "../vmm/vcpu-thread.js";

/** One running engine. `stopped` resolves, with what happened, when it stops by itself or is stopped. */
export interface EngineInstance {
  readonly stopped: Promise<string>;
  /** The thread that runs the engine, when it is a thread of this process (the health VM's vCPU). */
  readonly vcpuTid?: number;
  stop(): Promise<void>;
}

export interface LaunchContext {
  idc: GuestMemory;
  region: IdcRegion;
  layout: IdcLayout;
  control: HmControl;
}

export interface EngineBackend {
  readonly kind: "vm" | "process";
  /** The IDC region's memory, shared with the engine. */
  allocateIdc(layout: IdcLayout): GuestMemory;
  launch(ctx: LaunchContext): Promise<EngineInstance>;
  /** Free what allocateIdc made (after the engine has stopped). */
  releaseIdc(mem: GuestMemory): void;
}

const HM_VM_ID = 0x4d48; // "HM"

/** The health VM: gv-kernel, role=hm, its own kernel protected like a guest's. */
export class VmEngineBackend implements EngineBackend {
  readonly kind = "vm" as const;

  constructor(
    private readonly kvm: Kvm,
    private readonly kernel: Uint8Array,
    private readonly kernelName: string,
    private readonly memMiB: number,
    private readonly onSerial?: (line: string) => void,
  ) {}

  allocateIdc(layout: IdcLayout): GuestMemory {
    return GuestMemory.allocate(layout.size);
  }

  releaseIdc(mem: GuestMemory): void {
    mem.release();
  }

  async launch(ctx: LaunchContext): Promise<EngineInstance> {
    const memSize = this.memMiB * 1024 * 1024;
    const vm = await GuestVm.build(this.kvm, {
      vmId: HM_VM_ID,
      kernel: this.kernel,
      kernelName: this.kernelName,
      memSize,
      cmdline: "role=hm",
      role: C.ROLE_HM,
      policy: DEFAULT_POLICY, // decided in the VMM: the health VM cannot judge itself
      hmService: {
        memory: ctx.idc.handle,
        layout: ctx.layout,
        control: ctx.control.buffer,
        counters: ctx.region.counters.buffer,
        gpa: memSize,
      },
      onSerial: this.onSerial,
    });
    ctx.region.setTscKhz(tscKhzOf(vm));
    const stopped = vm.run().then(describeVmStop);
    return {
      stopped,
      vcpuTid: vm.vcpuTid,
      stop: async () => {
        vm.stop();
        ctx.control.ring(); // wake its vCPU thread if it is parked in the doorbell
        await vm.destroy();
      },
    };
  }
}

/** The health VM's TSC rate; 0 (the engine then assumes a default) where KVM cannot tell. */
function tscKhzOf(vm: GuestVm): number {
  try {
    return vm.tscKhz();
  } catch {
    return 0; // only the engine's idle spin and the "slow" fault injection use it
  }
}

function describeVmStop(stop: VcpuStop): string {
  if (stop.outcome === "exit" && stop.code !== undefined && stop.code >= 0x80 && stop.code < 0xa0) {
    return `engine fault: CPU exception vector ${stop.code - 0x80} (${stop.detail})`;
  }
  return `${stop.outcome}: ${stop.detail}`;
}

export function hostedEnginePath(): string {
  return join(packageRoot(), "guest", "out", "hm-host");
}

/** The engine as a host process on a shared file (tests without /dev/kvm). */
export class ProcessEngineBackend implements EngineBackend {
  readonly kind = "process" as const;
  private dir: string | undefined;
  private file: string | undefined;

  constructor(private readonly path: string = hostedEnginePath()) {}

  allocateIdc(layout: IdcLayout): GuestMemory {
    this.dir = mkdtempSync(join(tmpdir(), "guardvisor-idc-"));
    this.file = join(this.dir, "idc");
    const fd = openSync(this.file, "w+", 0o600);
    try {
      ftruncateSync(fd, layout.size);
      return GuestMemory.mapFile(fd, layout.size);
    } finally {
      closeSync(fd);
    }
  }

  releaseIdc(mem: GuestMemory): void {
    mem.release();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = undefined;
  }

  async launch(ctx: LaunchContext): Promise<EngineInstance> {
    if (!this.file) throw new GuardvisorError("INTERNAL", "the IDC region was not allocated");
    ctx.region.setTscKhz(0); // the engine falls back to its default TSC rate
    const child: ChildProcess = spawn(this.path, [this.file, String(ctx.layout.size)], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    const stopped = new Promise<string>((resolve) => {
      child.on("error", (e) => resolve(`engine process failed: ${e.message}`));
      child.on("exit", (code, signal) =>
        resolve(
          signal === "SIGILL"
            ? "engine fault: CPU exception vector 6 (invalid opcode)"
            : `engine process ended (${signal ?? `exit code ${code}`})${stderr ? `: ${stderr.trim()}` : ""}`,
        ),
      );
    });
    return {
      stopped,
      stop: async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
        await stopped;
      },
    };
  }
}
