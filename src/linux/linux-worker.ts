/**
 * The vCPU thread of a Linux guest: the same control word, messages and
 * KVM_RUN loop as the gv-kernel worker (src/vmm/vcpu-loop.ts), with the PC
 * devices a stock kernel needs on the port bus, and, when asked, the seal of
 * the kernel's code and read-only data (linux-seal.ts): armed at the first
 * exit in ring 3, then writes to the sealed pages are decided by the policy.
 */
import { parentPort, workerData } from "node:worker_threads";
import { VmmDecider } from "../decide/decider.js";
import type { CompiledPolicy } from "../decide/policy.js";
import { IoBus } from "../devices/bus.js";
import { DebugExit } from "../devices/debug-exit.js";
import { Cmos, I8042, PciConfigSpace, PostPort } from "../devices/pc-platform.js";
import { COM1_IRQ, Uart16550 } from "../devices/uart16550.js";
import { isGuardvisorError } from "../errors.js";
import { GuestMemory, type GuestMemoryHandle } from "../kvm/guest-memory.js";
import { irqLine, Vcpu, type VcpuHandle } from "../kvm/kvm.js";
import { K, native, wrapNative } from "../kvm/native.js";
import type { ProtectedRegion } from "../model/regions.js";
import type { SlotPlan } from "../vmm/protection.js";
import { runVcpuLoop } from "../vmm/vcpu-loop.js";
import type { WorkerMessage } from "../vmm/vcpu-protocol.js";
import { LinuxExitHandler } from "./linux-exits.js";
import { LinuxSeal } from "./linux-seal.js";

/** What the worker needs to seal the kernel (absent: no seal). */
export interface LinuxSealInit {
  memory: GuestMemoryHandle;
  regions: ProtectedRegion[];
  policy: CompiledPolicy;
  /** The memory slot the owner put all RAM in. */
  ramSlot: number;
}

export interface LinuxWorkerInit {
  vcpu: VcpuHandle;
  /** The VM's fd: the UART drives its interrupt line on the in-kernel irqchip. */
  vmFd: number;
  seal?: LinuxSealInit;
  control: SharedArrayBuffer;
}

/** Replace the single RAM slot by `plan` (slot numbers from `first` on): delete it, then create each. */
function reslot(vmFd: number, memory: GuestMemory, first: number, plan: readonly SlotPlan[]): void {
  const n = native();
  wrapNative(`KVM_SET_USER_MEMORY_REGION slot ${first} (delete)`, () =>
    n.setUserMemoryRegion(vmFd, first, 0, 0, 0, memory.hostAddressOf(0)),
  );
  plan.forEach((s, i) => {
    wrapNative(`KVM_SET_USER_MEMORY_REGION slot ${first + i}`, () =>
      n.setUserMemoryRegion(
        vmFd,
        first + i,
        s.readonly ? K("KVM_MEM_READONLY") : 0,
        s.gpa,
        s.size,
        memory.hostAddressOf(s.gpa),
      ),
    );
  });
}

const init = workerData as LinuxWorkerInit;
const port = parentPort;
if (!port) throw new Error("linux-worker must run as a worker thread");
const post = (m: WorkerMessage) => port.postMessage(m);

function main(): void {
  const tid = wrapNative("KVM_SET_SIGNAL_MASK", () => native().prepareVcpuThread(init.vcpu.fd));
  const ctrl = new Int32Array(init.control);
  const vcpu = new Vcpu(init.vcpu);
  vcpu.useSyncRegs(init.vcpu.syncRegs);
  let reset = false;
  const uart = new Uart16550({
    onLine: (line) => post({ type: "serial", line }),
    irq: (level) => irqLine(init.vmFd, COM1_IRQ, level),
  });
  const bus = new IoBus();
  bus.register(uart);
  bus.register(new DebugExit());
  bus.register(new PostPort());
  bus.register(new Cmos());
  bus.register(new PciConfigSpace());
  const i8042 = new I8042(() => {
    reset = true;
    return { kind: "exit", code: 0 };
  });
  bus.register(i8042);
  const handler = new LinuxExitHandler({
    bus,
    getRegs: () => vcpu.getRegs(),
    setMsrResult: (e) => vcpu.run.setMsrResult(e),
    setRegs: (r) => vcpu.setRegs(r),
    injectException: (v) => vcpu.injectException(v),
    cancelException: (v) => vcpu.cancelException(v),
    resetRequested: () => reset,
  });
  const sealInit = init.seal;
  const memory = sealInit ? GuestMemory.attach(sealInit.memory) : undefined;
  const seal =
    sealInit && memory
      ? new LinuxSeal({
          vmId: 0,
          vcpuId: init.vcpu.id,
          regions: sealInit.regions,
          memory,
          getRegs: () => vcpu.getRegs(),
          getSregs: () => vcpu.getSregs(),
          reslot: (plan) => reslot(init.vmFd, memory, sealInit.ramSlot, plan),
          decider: new VmmDecider(sealInit.policy),
          event: (event) => post({ type: "event", event }),
          armed: (armed) => post({ type: "armed", armed }),
        })
      : undefined;
  const dispatch: typeof handler.dispatch = seal
    ? (exit) => {
        if (!seal.armed) seal.check(handler.counters.exits);
        else if (exit.kind === "mmio-write") {
          const a = seal.onWrite(exit.gpa, exit.data);
          if (a) {
            handler.counters.exits++;
            return a;
          }
        }
        return handler.dispatch(exit);
      }
    : (exit) => handler.dispatch(exit);
  post({ type: "ready", tid });
  const end = runVcpuLoop({
    ctrl,
    runOnce: () => vcpu.runOnce(),
    clearImmediateExit: () => {
      vcpu.run.immediateExit = false;
    },
    dispatch,
    // No watchdog for a Linux guest yet: a "hang?" from the owner is ignored.
    onHang: () => ({ kind: "continue" }),
  });
  uart.flush();
  post({
    type: "stopped",
    outcome: end.outcome,
    code: end.code,
    detail: end.detail,
    counters: {
      ...handler.counters,
      uartBytes: uart.bytesOut,
      uartInterrupts: uart.interrupts,
      ...(seal ? seal.counters : {}),
    },
  });
}

try {
  main();
} catch (e) {
  post({
    type: "error",
    code: isGuardvisorError(e) ? e.code : "INTERNAL",
    message: e instanceof Error ? e.message : String(e),
  });
}
