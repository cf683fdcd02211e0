/**
 * The health VM for the benchmarks: the production backend (VmEngineBackend,
 * gv-kernel role=hm), plus the thread id of its vCPU, so its idle CPU cost
 * can be read from /proc/self/task/TID.
 *
 * The engine instance names its vCPU thread (GuestVm.vcpuTid); when it does
 * not, the idle measurement fails instead of guessing.
 */

import { type EngineBackend, type EngineInstance, type LaunchContext, VmEngineBackend } from "../health/backends.js";
import type { IdcLayout } from "../idc/layout.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import type { Kvm } from "../kvm/kvm.js";

export class TrackedVmBackend implements EngineBackend {
  readonly kind = "vm" as const;
  private readonly inner: VmEngineBackend;
  /** The running health VM's vCPU thread, when it could be told apart. */
  vcpuTid: number | undefined;
  /** Why vcpuTid is unknown. */
  tidProblem = "the health VM has not been launched";

  constructor(kvm: Kvm, kernel: Uint8Array, kernelName: string, memMiB: number) {
    this.inner = new VmEngineBackend(kvm, kernel, kernelName, memMiB);
  }

  allocateIdc(layout: IdcLayout): GuestMemory {
    return this.inner.allocateIdc(layout);
  }

  releaseIdc(mem: GuestMemory): void {
    this.inner.releaseIdc(mem);
  }

  async launch(ctx: LaunchContext): Promise<EngineInstance> {
    this.vcpuTid = undefined;
    const engine = await this.inner.launch(ctx);
    if (engine.vcpuTid) this.vcpuTid = engine.vcpuTid;
    else this.tidProblem = "the health VM did not name its vCPU thread";
    return engine;
  }
}
