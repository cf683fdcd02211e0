/**
 * A vCPU thread: attaches to the vCPU and guest RAM created by the VM owner,
 * waits to be resumed, then runs the KVM_RUN loop and dispatches every exit.
 * It reports serial lines, events and its final state as messages.
 */
import { parentPort, workerData } from "node:worker_threads";
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import { type Decider, VmmDecider } from "../decide/decider.js";
import { createHmVmDecider } from "../decide/hm-vm-decider.js";
import { PolicyMailbox } from "../decide/policy-mailbox.js";
import { IoBus } from "../devices/bus.js";
import { DebugExit } from "../devices/debug-exit.js";
import { Hypercalls } from "../devices/hypercall.js";
import { Serial } from "../devices/serial.js";
import { isGuardvisorError } from "../errors.js";
import { GuestMemory } from "../kvm/guest-memory.js";
import { Vcpu } from "../kvm/kvm.js";
import { K, native, wrapNative } from "../kvm/native.js";
import { ExitDispatcher, type GuestAction } from "./dispatcher.js";
import { serveDoorbell } from "./doorbell.js";
import { EventRing, ringEventSender } from "./event-ring.js";
import { ExceptionCapture } from "./exception-capture.js";
import { ProtectionMap } from "./protection.js";
import { runVcpuLoop } from "./vcpu-loop.js";
import type { VcpuWorkerInit, WorkerMessage } from "./vcpu-protocol.js";

const init = workerData as VcpuWorkerInit;
const port = parentPort;
if (!port) throw new Error("vcpu-worker must run as a worker thread");
const post = (m: WorkerMessage) => port.postMessage(m);

const mailbox = init.policyMailbox ? new PolicyMailbox(init.policyMailbox) : undefined;

/** Hot reload: a policy the owner posted since the last look, handed to the decider. */
function takeReload(decider: Decider): void {
  const p = mailbox?.take();
  if (p) decider.reload(p);
}

function makeDecider(): Decider {
  const d = init.decider;
  if (d.kind === "vmm") return new VmmDecider(init.policy);
  return createHmVmDecider(
    d,
    init.policy,
    (fault) => post({ type: "hm-fault", fault }),
    () => mailbox?.take(),
  ).decider;
}

const GUEST_ACTIONS: Record<number, GuestAction> = {
  [ABI_CONSTANTS.GUEST_ACTION_HANDLED]: "handled",
  [ABI_CONSTANTS.GUEST_ACTION_TASK_KILLED]: "task-killed",
  [ABI_CONSTANTS.GUEST_ACTION_PANIC]: "panic",
};

/** Hypercalls only the guest kernel (CPL 0) may make. */
function guestKernelHypercalls(hypercalls: Hypercalls, dispatcher: ExitDispatcher): void {
  const EPERM = BigInt(ABI_CONSTANTS.HC_EPERM);
  hypercalls.on(ABI_CONSTANTS.HC_SEAL, (a) => (a.cpl === 0 ? BigInt(dispatcher.seal(Number(a.a0 & 0xffn))) : EPERM));
  // A sign of life, and an exit: the sealed-state check runs on it.
  hypercalls.on(ABI_CONSTANTS.HC_HEARTBEAT, () => BigInt(ABI_CONSTANTS.HC_OK));
  hypercalls.on(ABI_CONSTANTS.HC_REPORT_EXCEPTION, (a) => {
    if (a.cpl !== 0) return EPERM;
    dispatcher.onGuestReport(Number(a.a0 & 0xffn), a.a1, GUEST_ACTIONS[Number(a.a2 & 0xffn)] ?? "unknown");
    return BigInt(ABI_CONSTANTS.HC_OK);
  });
  hypercalls.on(ABI_CONSTANTS.HC_EXCEPTION_VERDICT, (a) =>
    a.cpl === 0 ? BigInt(dispatcher.exceptionVerdict(Number(a.a0 & 0xffn), a.a1)) : EPERM,
  );
}

function main(): void {
  // Kicks end KVM_RUN (EINTR) without ever running a signal handler on this thread.
  const tid = wrapNative("KVM_SET_SIGNAL_MASK", () => native().prepareVcpuThread(init.vcpu.fd));
  const ctrl = new Int32Array(init.control);
  const vcpu = new Vcpu(init.vcpu);
  // Registers in the kvm_run page: an exit that reads or writes them costs no ioctl.
  vcpu.useSyncRegs(init.vcpu.syncRegs);
  const memory = GuestMemory.attach(init.memory);
  const protection = new ProtectionMap(init.regions, init.memory.size);
  const serial = new Serial((line) => post({ type: "serial", line }));
  const cpu = {
    getRegs: () => vcpu.getRegs(),
    setRegs: (r: Parameters<Vcpu["setRegs"]>[0]) => vcpu.setRegs(r),
    getSregs: () => vcpu.getSregs(),
    setSregs: (x: Parameters<Vcpu["setSregs"]>[0]) => vcpu.setSregs(x),
    injectException: (v: number, e?: number) => vcpu.injectException(v, e),
    cancelException: (v: number) => vcpu.cancelException(v),
    setMsrResult: (e: 0 | 1) => vcpu.run.setMsrResult(e),
    setMsr: (index: number, value: bigint) => vcpu.trySetMsrs([[index, value]]) === 1,
  };
  const bus = new IoBus();
  bus.register(serial);
  bus.register(new DebugExit());
  // The CPL comes from the special registers the dispatcher already read for this exit.
  const hypercalls = new Hypercalls({ ...cpu, cpl: () => dispatcher.currentCpl() });
  bus.register(hypercalls);
  if (init.hmService) serveDoorbell(hypercalls, init.hmService, ctrl);
  const exceptions =
    init.exceptionEntry === undefined
      ? undefined
      : new ExceptionCapture(init.exceptionEntry, vcpu, {
          enable: K("KVM_GUESTDBG_ENABLE"),
          singlestep: K("KVM_GUESTDBG_SINGLESTEP"),
          useHwBp: K("KVM_GUESTDBG_USE_HW_BP"),
        });
  const decider = makeDecider();
  const dispatcher = new ExitDispatcher({
    vmId: init.vmId,
    vcpuId: init.vcpu.id,
    cpu,
    memory,
    protection,
    bus,
    decider,
    sink: {
      event: ringEventSender(new EventRing(init.events), post),
      guestReport: (report) => post({ type: "guest-report", report }),
    },
    exceptions,
    protectedMsrs: new Set(init.protectedMsrs ?? []),
    protectedVirtual: init.protectedVirtual,
    firstSeq: init.firstSeq,
  });
  guestKernelHypercalls(hypercalls, dispatcher);
  exceptions?.arm();

  post({ type: "ready", tid });
  // Built paused: the loop waits for the owner to resume it.
  const end = runVcpuLoop({
    ctrl,
    runOnce: () => vcpu.runOnce(),
    clearImmediateExit: () => {
      vcpu.run.immediateExit = false;
    },
    beforeDispatch: () => takeReload(decider),
    dispatch: (exit) => dispatcher.dispatch(exit),
    onHang: (detail) => dispatcher.onHang(detail),
    onPause: (detail) => post({ type: "paused", detail }),
  });
  serial.flush();
  post({ type: "stopped", outcome: end.outcome, code: end.code, detail: end.detail, stats: dispatcher.stats });
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
