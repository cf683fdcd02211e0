/**
 * The vCPU thread of a Linux guest: the same control word, messages and
 * KVM_RUN loop as the gv-kernel worker (src/vmm/vcpu-loop.ts), with the PC
 * devices a stock kernel needs on the port bus, and, when asked, the seal of
 * the kernel's code and read-only data (linux-seal.ts): armed at the first
 * exit in ring 3, then writes to the sealed pages are decided by the policy.
 */
import { parentPort, workerData } from "node:worker_threads";
import { type Decider, VmmDecider } from "../decide/decider.js";
import { createHmVmDecider } from "../decide/hm-vm-decider.js";
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
import { DB_VECTOR, type ExitAction } from "../vmm/dispatcher.js";
import { EventRing, ringEventSender } from "../vmm/event-ring.js";
import { ExceptionCapture } from "../vmm/exception-capture.js";
import { msrFilterRanges, PROTECTED_MSRS } from "../vmm/guest-vm.js";
import type { SlotPlan } from "../vmm/protection.js";
import { runVcpuLoop } from "../vmm/vcpu-loop.js";
import type { DeciderInit, WorkerMessage } from "../vmm/vcpu-protocol.js";
import type { KernelPatching } from "./kernel-patching.js";
import { type KernelRange, kernelVirtual } from "./kernel-ranges.js";
import { LinuxCrashCapture } from "./linux-crash.js";
import { LinuxExitHandler } from "./linux-exits.js";
import { LinuxHangWatch } from "./linux-hang.js";
import { LinuxSeal } from "./linux-seal.js";

/** What the worker needs to seal the kernel (absent: no seal). */
export interface LinuxSealInit {
  memory: GuestMemoryHandle;
  regions: ProtectedRegion[];
  policy: CompiledPolicy;
  /** The memory slot the owner put all RAM in. */
  ramSlot: number;
  /** The sealed ranges with their kernel virtual addresses. */
  ranges: KernelRange[];
  /** How to recognise the kernel's own text_poke (absent: no symbols). */
  patching?: KernelPatching;
  kernelPatching: "sanctioned" | "immutable";
  /** Protect the syscall MSRs once armed (KVM_CAP_X86_USER_SPACE_MSR enabled by the owner). */
  msrs: boolean;
  /** Who decides: the in-VMM decider, or the health VM over the IDC channel. */
  decider: DeciderInit;
  /** Event numbering goes on from here (a restarted guest's earlier boots). */
  firstSeq?: number;
  /** The regions' expected bytes, one after another (linux-seal.ts, `shadow`). */
  shadow: SharedArrayBuffer;
  /**
   * Breakpoints: `__die`, `die_addr` and `panic` to catch oopses and panics first, and
   * the system-call entry to arm the seal at user space's first system call
   * (absent: no symbols; the seal is then armed by kicks finding ring 3).
   */
  crash?: { die?: bigint; dieAddr?: bigint; panic?: bigint; syscallEntry?: bigint };
  /** A vCPU in ring 0 with interrupts off and no exit this long is hung (linux-hang.ts); 0: not watched. */
  hangTimeoutMs?: number;
}

export interface LinuxWorkerInit {
  vcpu: VcpuHandle;
  /** The VM's fd: the UART drives its interrupt line on the in-kernel irqchip. */
  vmFd: number;
  seal?: LinuxSealInit;
  control: SharedArrayBuffer;
  /** The event ring (src/vmm/event-ring.ts), made by the owner. */
  events: SharedArrayBuffer;
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
  // One decider for the seal and the crash capture: the events of one guest, in one sequence.
  let decider: Decider | undefined;
  if (sealInit) {
    const d = sealInit.decider;
    decider =
      d.kind === "vmm"
        ? new VmmDecider(sealInit.policy)
        : createHmVmDecider(d, sealInit.policy, (fault) => post({ type: "hm-fault", fault })).decider;
  }
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
          decider: decider as Decider,
          event: ringEventSender(new EventRing(init.events), post),
          armed: (armed) => post({ type: "armed", armed }),
          virtualOf: (gpa) => kernelVirtual(sealInit.ranges, gpa),
          patching: sealInit.patching,
          kernelPatching: sealInit.kernelPatching,
          protectMsrs: sealInit.msrs
            ? () => {
                const msrs = [...PROTECTED_MSRS].sort((a, b) => a - b);
                const ranges = msrFilterRanges(msrs, K("KVM_MSR_FILTER_WRITE"));
                wrapNative("KVM_X86_SET_MSR_FILTER", () => native().setMsrFilter(init.vmFd, 0, ranges));
              }
            : undefined,
          setMsr: (index, value) => vcpu.trySetMsrs([[index, value]]) === 1,
          setMsrResult: (e) => vcpu.run.setMsrResult(e),
          setSregs: (x) => vcpu.setSregs(x),
          setRegs: (r) => vcpu.setRegs(r),
          injectException: (v, e) => vcpu.injectException(v, e),
          requestImmediateExit: () => {
            vcpu.run.immediateExit = true;
          },
          shadow: new Uint8Array(sealInit.shadow),
          firstSeq: sealInit.firstSeq,
          readOnlyProbe: sealInit.ranges[1]?.vstart,
        })
      : undefined;
  const points = sealInit?.crash ?? {};
  const entries = [points.die, points.dieAddr, points.panic, points.syscallEntry].filter(
    (a): a is bigint => a !== undefined,
  );
  const crash =
    seal && memory && sealInit && entries.length > 0
      ? new LinuxCrashCapture({
          capture: new ExceptionCapture(entries, vcpu, {
            enable: K("KVM_GUESTDBG_ENABLE"),
            singlestep: K("KVM_GUESTDBG_SINGLESTEP"),
            useHwBp: K("KVM_GUESTDBG_USE_HW_BP"),
          }),
          die: points.die,
          dieAddr: points.dieAddr,
          panic: points.panic,
          armAt:
            points.syscallEntry === undefined
              ? undefined
              : // Armed now or already: the breakpoint has done its job.
                {
                  address: points.syscallEntry,
                  arm: () => seal.check(handler.counters.exits, "syscall") || seal.armed,
                },
          memory,
          getRegs: () => vcpu.getRegs(),
          getSregs: () => vcpu.getSregs(),
          decider: decider as Decider,
          events: seal,
          injectDebug: () => vcpu.injectException(DB_VECTOR),
        })
      : undefined;
  crash?.arm();
  const hang =
    seal && sealInit?.hangTimeoutMs
      ? new LinuxHangWatch({
          limitMs: sealInit.hangTimeoutMs,
          getRegs: () => vcpu.getRegs(),
          getSregs: () => vcpu.getSregs(),
          progress: () => handler.counters.exits,
          decider: decider as Decider,
          events: seal,
        })
      : undefined;
  /** An exit the protection handled: counted as the handler counts its own. */
  const handled = (a: ExitAction): ExitAction => {
    handler.counters.exits++;
    return a;
  };
  const dispatch: typeof handler.dispatch = seal
    ? (exit) => {
        if (exit.kind === "debug" && crash) return handled(crash.onDebug(exit.pc, exit.dr6));
        if (!seal.armed) {
          // Without the system-call breakpoint, kicks look for ring 3.
          if (points.syscallEntry === undefined) seal.check(handler.counters.exits);
          return handler.dispatch(exit);
        }
        const io = exit.kind === "io-out" || exit.kind === "io-in";
        const pending = io || exit.kind === "mmio-write" || exit.kind === "mmio-read" || exit.kind.startsWith("msr-");
        const pin = seal.checkPins({ io, pending });
        if (pin && pin.kind !== "continue") return handled(pin);
        if (exit.kind === "mmio-write") {
          const a = seal.onWrite(exit.gpa, exit.data);
          if (a) return handled(a);
        }
        if (exit.kind === "msr-write" && sealInit?.msrs) return handled(seal.onMsrWrite(exit.index, exit.value));
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
    // The owner's watchdog kicked a run with no exit: a sample for the hang watch (none: nothing to do).
    onHang: () => hang?.sample() ?? { kind: "continue" },
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
      ...(seal ? { ...seal.counters, lastSeq: seal.lastSeq } : {}),
      ...(crash ? crash.counters : {}),
      ...(hang ? hang.counters : {}),
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
