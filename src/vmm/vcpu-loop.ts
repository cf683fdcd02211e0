/**
 * The vCPU loop: KVM_RUN, dispatch the exit, again, until the dispatcher or
 * the VM's owner ends it. The owner steers it through the shared control word
 * (vcpu-protocol.ts): run, pause, stop, and "hang?" from the watchdog, which
 * is a hang only when a kick ended a run with no exit since the watchdog
 * looked. A `pause` verdict parks the loop the same way the owner's pause
 * does, until the owner resumes it. Running the vCPU and dispatching are injected, so the loop is
 * tested without KVM.
 */
import type { VcpuExit } from "../kvm/exits.js";
import type { ExitAction, StopOutcome } from "./dispatcher.js";
import {
  CMD_HANG,
  CMD_PAUSE,
  CMD_RUN,
  CMD_STOP,
  CTRL_CMD,
  CTRL_HANG_AT,
  CTRL_IN_RUN,
  CTRL_PROGRESS,
} from "./vcpu-protocol.js";

export interface VcpuLoopDeps {
  /** The shared control word (CTRL_* slots). */
  ctrl: Int32Array;
  /** One KVM_RUN; "interrupted" when a kick ended it. */
  runOnce(): VcpuExit;
  /** After a kick: clear kvm_run.immediate_exit so the next KVM_RUN enters the guest. */
  clearImmediateExit(): void;
  /** Before each exit is dispatched (a policy reload is taken here). */
  beforeDispatch?(): void;
  dispatch(exit: VcpuExit): ExitAction;
  /** The watchdog's verdict on a vCPU kicked out of a hang. */
  onHang(detail: string): ExitAction;
  /** A `pause` verdict parked the vCPU: tell the owner, who may resume it. */
  onPause?(detail: string): void;
  /** Block while the command word still reads `value` (Atomics.wait on the vCPU thread). */
  waitWhile?(value: number): void;
}

/** How the loop ended: the dispatcher's stop, or the owner's. */
export type VcpuLoopEnd = { outcome: StopOutcome | "stopped"; code?: number; detail: string };

export function runVcpuLoop(d: VcpuLoopDeps): VcpuLoopEnd {
  const { ctrl } = d;
  const waitWhile = d.waitWhile ?? ((v: number) => Atomics.wait(ctrl, CTRL_CMD, v));
  let lastInterrupted = false;
  // Park until the owner resumes (CMD_RUN) or stops: a stop already asked for wins.
  const pause = (detail: string) => {
    if (Atomics.compareExchange(ctrl, CTRL_CMD, CMD_RUN, CMD_PAUSE) === CMD_RUN) d.onPause?.(detail);
  };
  for (;;) {
    const cmd = Atomics.load(ctrl, CTRL_CMD);
    if (cmd === CMD_STOP) return { outcome: "stopped", detail: "stopped by the VMM" };
    if (cmd === CMD_PAUSE) {
      waitWhile(CMD_PAUSE);
      continue;
    }
    if (cmd === CMD_HANG) {
      Atomics.compareExchange(ctrl, CTRL_CMD, CMD_HANG, CMD_RUN);
      // A hang only if a kick ended the run it saw stuck; any other exit since was progress.
      const kickedOutOfHang = lastInterrupted && Atomics.load(ctrl, CTRL_PROGRESS) === Atomics.load(ctrl, CTRL_HANG_AT);
      if (!kickedOutOfHang) continue;
      const hang = d.onHang("no progress: the watchdog stopped the vCPU");
      if (hang.kind === "stop") return { outcome: hang.outcome, code: hang.code, detail: hang.detail };
      if (hang.kind === "pause") pause(hang.detail);
      continue;
    }
    Atomics.store(ctrl, CTRL_IN_RUN, 1);
    const exit = d.runOnce();
    Atomics.store(ctrl, CTRL_IN_RUN, 0);
    lastInterrupted = exit.kind === "interrupted";
    // Kicks (the seal check's, the watchdog's) are not the guest's progress.
    if (lastInterrupted) d.clearImmediateExit();
    else Atomics.add(ctrl, CTRL_PROGRESS, 1);
    d.beforeDispatch?.();
    const action = d.dispatch(exit);
    if (action.kind === "stop") return { outcome: action.outcome, code: action.code, detail: action.detail };
    if (action.kind === "pause") pause(action.detail);
  }
}
