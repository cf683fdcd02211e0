/**
 * Run metrics in the Prometheus text format (docs/operations.md, Metrics).
 *
 * Every series lives in the instance's own prom-client Registry, never the
 * library's global one, so several runs (or tests) in one process do not mix.
 * Label values come from small closed sets (guest names, event kinds,
 * verdicts, deciders, restart reasons): no per-event labels.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** Verdict-latency buckets in seconds: 5 µs to 1 s, about three per decade. */
export const LATENCY_BUCKETS_S: readonly number[] = [
  5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];

/** One decided event, as the runner reports it (SummaryEvent plus the guest's name). */
export interface MetricsEvent {
  /** The guest, as in the JSON summary and the audit log: `guest0`, `guest1`, … */
  vm: string;
  kind: string;
  verdict: string;
  /** `hm-vm`, `vmm` or `failsafe`. */
  decidedBy: string;
  /** Capture to verdict, in microseconds. */
  latencyUs: number;
}

export interface MetricsOptions {
  /** Monotonic clock in milliseconds, for exits per second (default: performance.now). */
  now?: () => number;
}

interface ExitSample {
  total: number;
  atMs: number;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly events: Counter<"vm" | "kind" | "verdict" | "decided_by">;
  private readonly latency: Histogram<"decider">;
  private readonly hmRestarts: Counter<"reason">;
  private readonly exitsTotal: Counter<"vm">;
  private readonly exitRate: Gauge<"vm">;
  private readonly running: Gauge;
  private readonly lastExits = new Map<string, ExitSample>();
  private readonly runningVms = new Set<string>();
  private readonly now: () => number;

  constructor(opts: MetricsOptions = {}) {
    this.now = opts.now ?? (() => performance.now());
    const registers = [this.registry];
    this.events = new Counter({
      name: "guardvisor_events_total",
      help: "Events decided, by guest, event kind, verdict and who decided (hm-vm, vmm, failsafe).",
      labelNames: ["vm", "kind", "verdict", "decided_by"],
      registers,
    });
    this.latency = new Histogram({
      name: "guardvisor_verdict_latency_seconds",
      help: "Time from capturing an event to having its verdict, by decider (hm-vm, vmm, failsafe).",
      labelNames: ["decider"],
      buckets: [...LATENCY_BUCKETS_S],
      registers,
    });
    this.hmRestarts = new Counter({
      name: "guardvisor_health_vm_restarts_total",
      help: "Health-VM restarts, by reason (crash, hang, timeout, garbage, ring-full).",
      labelNames: ["reason"],
      registers,
    });
    this.exitsTotal = new Counter({
      name: "guardvisor_vm_exits_total",
      help: "VM exits handled by the VMM, by guest (sampled periodically).",
      labelNames: ["vm"],
      registers,
    });
    this.exitRate = new Gauge({
      name: "guardvisor_vm_exits_per_second",
      help: "VM exits per second, by guest, over the last sampling interval.",
      labelNames: ["vm"],
      registers,
    });
    this.running = new Gauge({
      name: "guardvisor_guests_running",
      help: "Guests currently running.",
      registers,
    });
  }

  /** Count one decided event and observe its verdict latency. */
  event(e: MetricsEvent): void {
    this.events.inc({ vm: e.vm, kind: e.kind, verdict: e.verdict, decided_by: e.decidedBy });
    if (Number.isFinite(e.latencyUs) && e.latencyUs >= 0) {
      this.latency.observe({ decider: e.decidedBy }, e.latencyUs / 1e6);
    }
  }

  /** Count one health-VM restart. */
  healthVmRestart(reason: string): void {
    this.hmRestarts.inc({ reason });
  }

  /**
   * A sample of a guest's cumulative exit count. The counter grows by the
   * difference to the previous sample; a smaller total than before means the
   * count started again (a restarted guest) and counts whole. The gauge is
   * the rate over the interval since the previous sample.
   */
  exits(vm: string, totalExits: number): void {
    if (!Number.isFinite(totalExits) || totalExits < 0) return;
    const atMs = this.now();
    const prev = this.lastExits.get(vm);
    const delta = prev === undefined || totalExits < prev.total ? totalExits : totalExits - prev.total;
    if (delta > 0) this.exitsTotal.inc({ vm }, delta);
    else this.exitsTotal.inc({ vm }, 0); // the series exists from the first sample
    if (prev !== undefined && atMs > prev.atMs) {
      this.exitRate.set({ vm }, (delta * 1000) / (atMs - prev.atMs));
    } else if (prev === undefined) {
      this.exitRate.set({ vm }, 0);
    }
    this.lastExits.set(vm, { total: totalExits, atMs });
  }

  /**
   * Sample exit counts every `intervalMs` until the returned function is
   * called. The timer never keeps the process alive.
   */
  sampleExits(read: () => Iterable<readonly [vm: string, totalExits: number]>, intervalMs = 1000): () => void {
    const sample = () => {
      for (const [vm, total] of read()) this.exits(vm, total);
    };
    sample();
    const timer = setInterval(sample, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** A guest started or stopped: `guardvisor_guests_running`, and a stopped guest's exit rate drops to 0. */
  guestState(vm: string, state: "running" | "stopped"): void {
    if (state === "running") this.runningVms.add(vm);
    else {
      this.runningVms.delete(vm);
      if (this.lastExits.has(vm)) this.exitRate.set({ vm }, 0);
    }
    this.running.set(this.runningVms.size);
  }

  /** The Prometheus text exposition of every series. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
