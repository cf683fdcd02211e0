/**
 * The VM owner's handle on one vCPU worker thread: start it paused, resume,
 * pause or stop it (a stop kicks the thread out of KVM_RUN), and learn how it
 * ended.
 */
import { Worker } from "node:worker_threads";
import type { HmFault } from "../decide/hm-vm-decider.js";
import { GuardvisorError } from "../errors.js";
import { RunPage } from "../kvm/exits.js";
import type { VcpuHandle } from "../kvm/kvm.js";
import { native } from "../kvm/native.js";
import { scaled } from "../time-scale.js";
import type { CapturedEvent, DispatchStats, GuestReport, StopOutcome } from "./dispatcher.js";
import { EventRing } from "./event-ring.js";
import {
  CMD_HANG,
  CMD_PAUSE,
  CMD_RUN,
  CMD_STOP,
  CTRL_CMD,
  CTRL_HANG_AT,
  CTRL_IN_RUN,
  CTRL_PROGRESS,
  CTRL_SLOTS,
  type ProtectionArmed,
  type VcpuWorkerInit,
  type WorkerMessage,
} from "./vcpu-protocol.js";

/**
 * How often a running vCPU is kicked out of KVM_RUN so the sealed state (CR3,
 * pinned page-table entries, IDTR, pinned CR bits) is checked even while the
 * guest makes no exit of its own: the longest a change goes unseen. Scaled by
 * the time scale like every other limit.
 */
export const SEAL_CHECK_MS = 10;

export interface VcpuStop {
  outcome: StopOutcome | "stopped";
  code?: number;
  detail: string;
  stats?: DispatchStats;
  counters?: Record<string, number>;
}

/** A worker other than the gv-kernel one (src/vmm/vcpu-worker.ts): its entry file and kick period. */
export interface VcpuThreadOptions {
  /** The worker's entry file; it speaks the same messages and control word (vcpu-protocol.ts). */
  script: URL;
  /** Kick the vCPU out of KVM_RUN this often (ms, before the time scale); 0: never. Default SEAL_CHECK_MS. */
  kickMs?: number;
}

export interface VcpuListeners {
  onSerial(line: string): void;
  onEvent(e: CapturedEvent): void;
  onHmFault?(f: HmFault): void;
  onGuestReport?(r: GuestReport): void;
  /** A `pause` verdict parked the vCPU; resume() lets it go on. */
  onPaused?(detail: string): void;
  /** The worker armed write protection while the guest ran. */
  onArmed?(a: ProtectionArmed): void;
}

/** A vCPU in KVM_RUN without an exit for this long is hung (3 s, times the time scale; watchHangs). */
export const DEFAULT_HANG_TIMEOUT_MS = scaled(3000);

export class VcpuThread {
  private readonly worker: Worker;
  private readonly ctrl: Int32Array;
  private readonly run: RunPage;
  private tid = 0;
  /** The worker has ended (or is ending): its thread id may be reused, never signal it. */
  private finished = false;
  private sealCheck: NodeJS.Timeout | undefined;
  readonly ready: Promise<void>;
  readonly done: Promise<VcpuStop>;

  constructor(init: Omit<VcpuWorkerInit, "control" | "events">, listeners: VcpuListeners);
  /** Another worker entry (`options.script`), started with `init` plus the control word. */
  constructor(init: { vcpu: VcpuHandle }, listeners: VcpuListeners, options: VcpuThreadOptions);
  constructor(init: { vcpu: VcpuHandle }, listeners: VcpuListeners, options?: VcpuThreadOptions) {
    const control = new SharedArrayBuffer(CTRL_SLOTS * 4);
    this.ctrl = new Int32Array(control);
    const events = EventRing.create();
    Atomics.store(this.ctrl, CTRL_CMD, CMD_PAUSE);
    this.run = new RunPage(native().arrayBufferAt(init.vcpu.runAddr, init.vcpu.runSize));
    this.worker = new Worker(options?.script ?? new URL("./vcpu-worker.js", import.meta.url), {
      workerData: { ...init, control, events: events.buffer },
    });
    const kickMs = options?.kickMs ?? SEAL_CHECK_MS;
    let markReady: () => void = () => {};
    let failReady: (e: Error) => void = () => {};
    this.ready = new Promise<void>((res, rej) => {
      markReady = res;
      failReady = rej;
    });
    this.done = new Promise<VcpuStop>((resolve) => {
      let result: VcpuStop | undefined;
      // Events come through the ring; they are taken before any message, so they keep their order with it.
      const takeEvents = () => {
        for (const e of events.drain()) listeners.onEvent(e);
      };
      this.worker.on("message", (m: WorkerMessage) => {
        takeEvents();
        switch (m.type) {
          case "ready":
            this.tid = m.tid;
            if (kickMs > 0) {
              this.sealCheck = setInterval(() => {
                if (Atomics.load(this.ctrl, CTRL_IN_RUN) === 1) this.kick();
              }, scaled(kickMs));
              this.sealCheck.unref();
            }
            markReady();
            break;
          case "serial":
            listeners.onSerial(m.line);
            break;
          case "event":
            listeners.onEvent(m.event);
            events.overflowHandled();
            break;
          case "events":
            break; // taken above
          case "hm-fault":
            listeners.onHmFault?.(m.fault);
            break;
          case "guest-report":
            listeners.onGuestReport?.(m.report);
            break;
          case "paused":
            listeners.onPaused?.(m.detail);
            break;
          case "armed":
            listeners.onArmed?.(m.armed);
            break;
          case "stopped":
            this.finished = true;
            clearInterval(this.sealCheck);
            result = { outcome: m.outcome, code: m.code, detail: m.detail, stats: m.stats, counters: m.counters };
            break;
          case "error":
            result = { outcome: "crash", detail: `vCPU thread failed: ${m.code}: ${m.message}` };
            failReady(new GuardvisorError("INTERNAL", m.message));
            break;
        }
      });
      this.worker.on("error", (e) => {
        result ??= { outcome: "crash", detail: `vCPU thread failed: ${e.message}` };
        failReady(e);
      });
      this.worker.on("exit", () => {
        takeEvents();
        this.finished = true;
        clearInterval(this.sealCheck);
        failReady(new GuardvisorError("INTERNAL", "vCPU thread exited before it was ready"));
        resolve(result ?? { outcome: "crash", detail: "vCPU thread exited without a result" });
      });
    });
  }

  /** Run a paused vCPU (built paused, or parked by a `pause` verdict). False when it is not paused. */
  resume(): boolean {
    const was = Atomics.compareExchange(this.ctrl, CTRL_CMD, CMD_PAUSE, CMD_RUN);
    Atomics.notify(this.ctrl, CTRL_CMD);
    return was === CMD_PAUSE;
  }

  /** Is the vCPU parked (built paused and not yet resumed, or paused by a verdict)? */
  get paused(): boolean {
    return Atomics.load(this.ctrl, CTRL_CMD) === CMD_PAUSE;
  }

  /** Ask the vCPU to stop; it leaves KVM_RUN at once. */
  stop(): void {
    this.command(CMD_STOP);
    this.kick();
  }

  /** The vCPU worker's Linux thread id (0 before it is ready): /proc/self/task/TID. */
  get threadId(): number {
    return this.tid;
  }

  /** The watchdog: make the vCPU leave KVM_RUN and report a hang. */
  hang(seenExits: number): void {
    Atomics.store(this.ctrl, CTRL_HANG_AT, seenExits);
    if (Atomics.compareExchange(this.ctrl, CTRL_CMD, CMD_RUN, CMD_HANG) === CMD_RUN) {
      Atomics.notify(this.ctrl, CTRL_CMD);
      this.kick();
    }
  }

  /**
   * The watchdog: while the vCPU is inside KVM_RUN with no exit for `stuckMs`
   * (time spent outside KVM_RUN, a decider waiting or a kick, does not
   * count), ask it for a hang (`hang()`); the worker's dispatcher decides
   * what that is. 0: no watchdog. Clear the interval it returns when done.
   */
  watchHangs(stuckMs: number): NodeJS.Timeout | undefined {
    if (stuckMs <= 0) return undefined;
    let last = -1;
    let stuck = 0;
    let prev = Date.now();
    const t = setInterval(
      () => {
        const p = this.progress();
        const now = Date.now();
        const dt = now - prev;
        prev = now;
        if (p.exits !== last) {
          last = p.exits;
          stuck = 0;
        } else if (p.inRun) {
          stuck += dt;
          if (stuck > stuckMs) {
            stuck = 0;
            this.hang(p.exits);
          }
        }
      },
      Math.min(100, Math.max(10, stuckMs / 10)),
    );
    t.unref();
    return t;
  }

  /** Exits so far, and whether the vCPU is inside KVM_RUN right now. */
  progress(): { exits: number; inRun: boolean } {
    return { exits: Atomics.load(this.ctrl, CTRL_PROGRESS), inRun: Atomics.load(this.ctrl, CTRL_IN_RUN) === 1 };
  }

  private command(cmd: number): void {
    Atomics.store(this.ctrl, CTRL_CMD, cmd);
    Atomics.notify(this.ctrl, CTRL_CMD);
  }

  private kick(): void {
    this.run.immediateExit = true;
    if (this.tid > 0 && !this.finished) native().kickThread(this.tid);
  }

  /** Forcefully end the thread (after stop() did not work). */
  async terminate(): Promise<void> {
    await this.worker.terminate();
  }
}
