/**
 * The health VM for the benchmarks: the production backend (VmEngineBackend,
 * gv-kernel role=hm), plus the thread id of its vCPU, so its idle CPU cost
 * can be read from /proc/self/task/TID.
 *
 * The vCPU worker posts its thread id to its owner ("ready" in
 * src/vmm/vcpu-thread.ts), but neither GuestVm nor the engine backend hands
 * it out. Until they do, the thread is found as the one thread that appears
 * in /proc/self/task while the health VM is launched (the vCPU worker is
 * the only thread a launch starts); if that is not exactly one thread, the
 * tid is left unknown and the idle measurement fails instead of guessing.
 */

import { type EngineBackend, type EngineInstance, type LaunchContext, VmEngineBackend } from "../health/backends.js";
import type { IdcLayout } from "../idc/layout.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import type { Kvm } from "../kvm/kvm.js";
import { newThreads, threadIds } from "./proc.js";

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
    const before = threadIds();
    const engine = await this.inner.launch(ctx);
    const started = newThreads(before, threadIds());
    if (started.length === 1) this.vcpuTid = started[0];
    else this.tidProblem = `${started.length} threads started with the health VM, expected its one vCPU thread`;
    return engine;
  }
}
