/**
 * Core health management: the VMM's own supervision of the health VM.
 *
 * It owns the IDC region (one host mapping shared by every guest's vCPU
 * thread and mapped into the health VM right above its RAM), boots the health
 * VM (gv-kernel, role=hm), and handles what the health VM cannot handle
 * itself: its crash (an engine fault or triple fault stops its vCPU), its hang
 * (a watchdog on the engine's heartbeat while it is busy), and late or garbage
 * answers (reported by the guests' deciders). Then it fails safe: the request
 * the health VM died on is settled with the fail-safe verdict by the guest's
 * decider and withdrawn, every other request in flight is re-sent to a fresh
 * health VM, which is booted on the same IDC region. No request is lost or
 * answered twice: a guest's decider settles each of its requests exactly once.
 */
import { ABI_CONSTANTS as C } from "../abi/guest-abi.js";
import type { HmFault } from "../decide/hm-vm-decider.js";
import { configError, GuardvisorError } from "../errors.js";
import { IdcRegion, type InjectSpec } from "../idc/channel.js";
import { HM_FAILED, HM_UP, HmControl } from "../idc/hm-control.js";
import { type IdcLayout, idcLayout } from "../idc/layout.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import { logFor } from "../log.js";
import { scaled } from "../time-scale.js";
import type { DeciderInit } from "../vmm/vcpu-protocol.js";
import type { EngineBackend, EngineInstance } from "./backends.js";

const HM_TIMEOUT_MAX_MS = 60_000;

export const HM_DEFAULTS = {
  /** A health VM that has not answered a request after this long is faulty (100 ms, times the time scale). */
  timeoutMs: Math.min(HM_TIMEOUT_MAX_MS, scaled(100)),
  /** Deciders busy-poll this long before sleeping between polls. */
  spinUs: 500,
  restartLimit: 5,
  bootTimeoutMs: scaled(5000),
} as const;

/** The answer deadlines a health VM may be given, in ms. */
export const HM_TIMEOUT_RANGE = { min: 1, max: HM_TIMEOUT_MAX_MS } as const;

export interface HealthVmOptions {
  /** Where the engine runs: the health VM (VmEngineBackend), or a host process in tests. */
  backend: EngineBackend;
  nguests: number;
  timeoutMs?: number;
  spinUs?: number;
  restartLimit?: number;
  inject?: InjectSpec;
  /**
   * Arm a new fault at boot and after every restart (a soak's random
   * crashes), given the requests answered so far (the engine counts on from
   * there); with it, the restart limit does not apply.
   */
  chaos?: (answered: number) => InjectSpec;
  onRestart?: (r: HmRestart) => void;
}

export type HmFailure = "crash" | "hang" | HmFault["reason"];

/** One restart of the health VM, for the audit log and the summary. */
export interface HmRestart {
  reason: HmFailure;
  detail: string;
  /** The generation that failed. */
  generation: number;
  /** The request it died on, if any. */
  poison?: { guest: number; seq: bigint };
  /** Requests re-sent to the new health VM, per guest. */
  resent: number;
  timeMs: number;
  /** How long the health VM was down. */
  downMs: number;
}

export interface HealthVmStatus {
  restarts: number;
  generation: number;
  requests: number;
  failed: boolean;
  faults: HmRestart[];
}

const WATCHDOG_MS = 10;
const log = logFor("health");

export class HealthManager {
  readonly control = new HmControl();
  readonly layout: IdcLayout;
  readonly region: IdcRegion;
  readonly restartsLog: HmRestart[] = [];
  private readonly idcMemory: GuestMemory;
  private readonly timeoutMs: number;
  private readonly spinUs: number;
  private readonly restartLimit: number;
  private engine: EngineInstance | undefined;
  private restarting: Promise<void> | undefined;
  private stopping = false;
  private watchdog: NodeJS.Timeout | undefined;

  private constructor(private readonly opts: HealthVmOptions) {
    this.layout = idcLayout(opts.nguests);
    this.timeoutMs = opts.timeoutMs ?? HM_DEFAULTS.timeoutMs;
    const { min, max } = HM_TIMEOUT_RANGE;
    if (!Number.isInteger(this.timeoutMs) || this.timeoutMs < min || this.timeoutMs > max) {
      throw configError(
        "timeoutMs",
        `the health VM's answer deadline must be ${min}..${max} ms, not ${this.timeoutMs}`,
      );
    }
    this.spinUs = opts.spinUs ?? HM_DEFAULTS.spinUs;
    this.restartLimit = opts.restartLimit ?? HM_DEFAULTS.restartLimit;
    this.idcMemory = opts.backend.allocateIdc(this.layout);
    this.region = new IdcRegion(this.idcMemory.bytes.buffer as ArrayBuffer, this.layout);
    this.region.initialize(new Array(opts.nguests).fill(undefined), opts.inject ?? opts.chaos?.(0));
  }

  /** Boot the health VM and wait until its engine is serving. */
  static async start(opts: HealthVmOptions): Promise<HealthManager> {
    const m = new HealthManager(opts);
    try {
      await m.boot();
    } catch (e) {
      await m.stop();
      throw e;
    }
    m.watchdog = setInterval(() => m.checkHang(), WATCHDOG_MS);
    m.watchdog.unref();
    return m;
  }

  /** What a guest's vCPU worker needs to use the hm-vm decider. */
  deciderFor(guest: number): DeciderInit {
    return {
      kind: "hm-vm",
      idc: {
        memory: this.idcMemory.handle,
        layout: this.layout,
        control: this.control.buffer,
        counters: this.region.counters.buffer,
      },
      guest,
      timeoutMs: this.timeoutMs,
      spinUs: this.spinUs,
    };
  }

  /** Publish guest g's compiled rule table (before g runs). */
  installRules(guest: number, table: Uint8Array): void {
    this.region.installRules(guest, table);
  }

  /** A guest's decider saw the health VM misbehave. */
  reportFault(f: HmFault): void {
    if (f.generation !== this.control.generation || this.control.state !== HM_UP) return; // already handled
    void this.restart(f.reason, `request ${f.seq} of guest ${f.guest}: ${f.detail}`, {
      guest: f.guest,
      seq: f.seq,
    });
  }

  /** Guest g's requests: published to the rings, and settled (answered or failed safe). */
  requestCounts(g: number): { published: number; settled: number } {
    const c = this.region.counters;
    return { published: Number(c.published(g)), settled: Number(c.settled(g)) };
  }

  status(): HealthVmStatus {
    return {
      restarts: this.restartsLog.length,
      generation: this.control.generation,
      requests: Number(this.region.hmStatus().requests),
      failed: this.control.state === HM_FAILED,
      faults: this.restartsLog,
    };
  }

  /** Stop the health VM and free the IDC region. Stop every guest first. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.watchdog) clearInterval(this.watchdog);
    await this.restarting;
    const engine = this.engine;
    this.engine = undefined;
    this.control.markDown();
    await engine?.stop();
    this.opts.backend.releaseIdc(this.idcMemory);
  }

  private async boot(): Promise<void> {
    const engine = await this.opts.backend.launch({
      idc: this.idcMemory,
      region: this.region,
      layout: this.layout,
      control: this.control,
    });
    this.engine = engine;
    let died: string | undefined;
    void engine.stopped.then((why) => {
      died = why;
      this.stopped(engine, why);
    });
    const deadline = Date.now() + HM_DEFAULTS.bootTimeoutMs;
    while (this.region.hmStatus().state !== C.HM_STATE_READY || died !== undefined) {
      if (died !== undefined) throw new GuardvisorError("GUEST_FAULT", `the health VM stopped while booting: ${died}`);
      if (this.engine !== engine) throw new GuardvisorError("GUEST_FAULT", "the health VM stopped while booting");
      if (Date.now() > deadline) {
        throw new GuardvisorError("GUEST_FAULT", `the health VM was not ready in ${HM_DEFAULTS.bootTimeoutMs} ms`);
      }
      await sleep(1);
    }
    this.control.markUp();
  }

  /** The engine stopped: unless we stopped it, the health VM crashed. */
  private stopped(engine: EngineInstance, why: string): void {
    if (this.stopping || this.engine !== engine) return;
    const running = this.restarting;
    if (running) {
      // It died while a restart was finishing (after it came up): restart again once that settles.
      void running.then(() => {
        if (!this.stopping && this.engine === engine) void this.restart("crash", why);
      });
      return;
    }
    void this.restart("crash", why);
  }

  private lastBeat = { heartbeat: -1n, requests: -1n, since: 0 };

  /** Watchdog: busy on one request, heartbeat frozen, for longer than the timeout. */
  private checkHang(): void {
    if (this.control.state !== HM_UP || this.restarting) return;
    const s = this.region.hmStatus();
    const now = Date.now();
    const b = this.lastBeat;
    if (!s.busy || s.heartbeat !== b.heartbeat || s.requests !== b.requests) {
      this.lastBeat = { heartbeat: s.heartbeat, requests: s.requests, since: now };
      return;
    }
    if (now - b.since > this.timeoutMs) {
      void this.restart("hang", `busy on request ${s.seq} of guest ${s.guest} for ${now - b.since} ms`);
    }
  }

  private restart(reason: HmFailure, detail: string, reported?: { guest: number; seq: bigint }): Promise<void> {
    if (this.restarting || this.stopping) return this.restarting ?? Promise.resolve();
    const run = this.doRestart(reason, detail, reported).finally(() => {
      this.restarting = undefined;
    });
    this.restarting = run;
    return run;
  }

  private async doRestart(reason: HmFailure, detail: string, reported?: { guest: number; seq: bigint }) {
    for (;;) {
      const t0 = Date.now();
      const generation = this.control.generation;
      const s = this.region.hmStatus();
      const poison = s.busy && s.guest < this.layout.nguests ? { guest: s.guest, seq: s.seq } : reported;
      // Recorded at once: a summary taken while the restart runs already counts it.
      const record: HmRestart = { reason, detail, generation, poison, resent: 0, timeMs: t0, downMs: 0 };
      this.restartsLog.push(record);
      log.info({ reason, detail, generation }, "health VM down");
      this.control.markDown(poison);
      const old = this.engine;
      this.engine = undefined;
      await old?.stop();
      // The poisoned request is settled fail-safe by its guest: never re-send it.
      if (poison && poison.seq > 0n) this.region.markWithdrawn(poison.guest, poison.seq);
      for (let g = 0; g < this.layout.nguests; g++) record.resent += this.region.rewindRing(g);
      this.region.resetHmState();
      const answered = Number(this.region.hmStatus().requests);
      this.region.setInject(this.opts.chaos?.(answered) ?? { mode: C.INJECT_NONE, at: 0, slowUs: 0 });
      if (!this.opts.chaos && this.restartsLog.length > this.restartLimit) {
        this.control.markFailed();
        record.detail += `; restart limit ${this.restartLimit} reached: every decision is fail-safe now`;
        log.info({ reason, generation, restarts: this.restartsLog.length }, "health VM restart limit reached");
        this.opts.onRestart?.(record);
        return;
      }
      if (this.stopping) return;
      try {
        await this.boot();
        record.downMs = Date.now() - t0;
        log.info(
          { reason, generation: this.control.generation, resent: record.resent, downMs: record.downMs },
          "health VM restarted",
        );
        this.opts.onRestart?.(record);
        return;
      } catch (e) {
        // It died again before serving: that is the next restart.
        record.downMs = Date.now() - t0;
        record.detail += `; the new health VM failed: ${(e as Error).message}`;
        log.info(
          { reason, generation, downMs: record.downMs, error: (e as Error).message },
          "health VM failed to boot",
        );
        this.opts.onRestart?.(record);
        if (this.stopping) return;
        reason = "crash";
        detail = (e as Error).message;
        reported = undefined;
      }
    }
  }

  /** Resolves when no restart is running (so status() counts every restart so far). */
  async settled(): Promise<void> {
    while (this.restarting) await this.restarting;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
