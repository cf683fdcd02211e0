/**
 * The vCPU thread of a Linux guest: the same control word, messages and
 * KVM_RUN loop as the gv-kernel worker (src/vmm/vcpu-loop.ts), with the PC
 * devices a stock kernel needs on the port bus instead of the protection
 * dispatcher (a Linux guest has no protected regions or decider yet).
 */
import { parentPort, workerData } from "node:worker_threads";
import { IoBus } from "../devices/bus.js";
import { DebugExit } from "../devices/debug-exit.js";
import { Cmos, I8042, PciConfigSpace, PostPort } from "../devices/pc-platform.js";
import { COM1_IRQ, Uart16550 } from "../devices/uart16550.js";
import { isGuardvisorError } from "../errors.js";
import { irqLine, Vcpu, type VcpuHandle } from "../kvm/kvm.js";
import { native, wrapNative } from "../kvm/native.js";
import { runVcpuLoop } from "../vmm/vcpu-loop.js";
import type { WorkerMessage } from "../vmm/vcpu-protocol.js";
import { LinuxExitHandler } from "./linux-exits.js";

export interface LinuxWorkerInit {
  vcpu: VcpuHandle;
  /** The VM's fd: the UART drives its interrupt line on the in-kernel irqchip. */
  vmFd: number;
  control: SharedArrayBuffer;
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
  post({ type: "ready", tid });
  const end = runVcpuLoop({
    ctrl,
    runOnce: () => vcpu.runOnce(),
    clearImmediateExit: () => {
      vcpu.run.immediateExit = false;
    },
    dispatch: (exit) => handler.dispatch(exit),
    // No watchdog for a Linux guest yet: a "hang?" from the owner is ignored.
    onHang: () => ({ kind: "continue" }),
  });
  uart.flush();
  post({
    type: "stopped",
    outcome: end.outcome,
    code: end.code,
    detail: end.detail,
    counters: { ...handler.counters, uartBytes: uart.bytesOut, uartInterrupts: uart.interrupts },
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
