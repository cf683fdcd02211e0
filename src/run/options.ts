/**
 * What a run is asked to do and what it reports: the options, the operator's
 * handle on a running run, and the summary shapes of DESIGN.md (CLI ⚑).
 */
import type { DeciderName } from "../decide/decider.js";
import type { Policy } from "../decide/policy.js";
import type { HmRestart } from "../health/health-manager.js";
import type { InjectSpec } from "../idc/channel.js";
import type { SummaryEvent } from "../model/summary-event.js";
import { scaled } from "../time-scale.js";
import type { DispatchStats } from "../vmm/dispatcher.js";

export const DEFAULT_MEM_MIB = 32;
/** How long a run may take (30 s, times the time scale). */
export const DEFAULT_TIMEOUT_MS = scaled(30_000);
export const DEFAULT_DECIDER: DeciderName = "hm-vm";
/** The health VM's RAM (its IDC region is mapped right above it). */
export const HM_MEM_MIB = 4;
/** Restarts of one guest when the policy sets no limit. */
export const DEFAULT_RESTART_LIMIT = 3;
export { DEFAULT_HANG_TIMEOUT_MS } from "../vmm/vcpu-thread.js";

export interface RunOptions {
  /** One scenario for every guest, or one per guest. */
  scenario?: string;
  scenarios?: string[];
  kernelPath?: string;
  cmdline?: string;
  /** Guests sharing one health VM (default: one per scenario, at least 1). */
  guests?: number;
  decider?: DeciderName;
  policy?: Policy;
  memMiB?: number;
  timeoutMs?: number;
  kvmPath?: string;
  auditPath?: string;
  /** Make the health VM misbehave (tests and demos). */
  injectHmFault?: InjectSpec;
  /**
   * Soak: each guest runs its scenario again and again, taking the given
   * scenarios in turn, until this long has passed (then the running rounds end).
   */
  durationMs?: number;
  /** Crash the health VM at a random request, again after every restart (a soak). */
  hmChaos?: boolean;
  /** Health-VM answer deadline. */
  hmTimeoutMs?: number;
  /** Watchdog: a guest vCPU without an exit for this long is hung (0: off). */
  hangTimeoutMs?: number;
  /** The guest's exception entry (symbol or address) for first-time exception capture. */
  exceptionEntry?: string | bigint;
  /** Filled in by the runner while guests run: reload the policy without restarting them. */
  control?: RunControl;
  onSerial?: (line: string, guest: number) => void;
  onHmSerial?: (line: string) => void;
  onEvent?: (e: SummaryEvent, guest: number) => void;
  /** One more occurrence of the guest's previous event (folded into its count): this occurrence, with that event's seq. */
  onRepeat?: (e: SummaryEvent, guest: number) => void;
  /** A health-VM restart, when it is back up (or given up). */
  onHmRestart?: (r: HmRestart) => void;
  /** A guest (re)started running, is restarting, or ended with this outcome. */
  onGuestState?: (guest: number, state: "running" | "restarting" | "paused" | GuestOutcome) => void;
  /** A guest's cumulative VM-exit count over all its incarnations (at least at the end of each). */
  onExits?: (guest: number, totalExits: number) => void;
}

/** What a caller can do to a run in progress. */
export interface RunControl {
  /** Compile `policy` for every running guest and switch both deciders to it. */
  reloadPolicy?(policy: Policy): { guests: number; hashes: number[] };
  /** Each guest's state now: running, or paused by a `pause` verdict (with why). */
  guests?(): { guest: number; state: "running" | "paused" | "stopped"; detail?: string }[];
  /** Let a guest a `pause` verdict parked go on. False when it is not paused. */
  resume?(guest: number): boolean;
}

export type GuestOutcome = "completed" | "restarted" | "halted" | "crashed";

export type { SummaryEvent } from "../model/summary-event.js";

export interface HealthVmSummary {
  restarts: number;
  /** Requests the health VM answered (0 with the vmm decider: it is not started). */
  requests: number;
  faults: { reason: string; detail: string; downMs: number }[];
}

/** The JSON summary of DESIGN.md (CLI ⚑), for one guest. */
export interface RunSummary {
  scenario: string;
  decider: DeciderName;
  guest: { outcome: GuestOutcome; restarts: number; exitCode: number | null };
  integrity: { protectedBytes: number; intact: boolean };
  healthVm: HealthVmSummary;
  events: SummaryEvent[];
}

/** What a soak run (--duration) did, over every round of every guest. */
export interface SoakSummary {
  durationS: number;
  /** Scenario runs that completed, and those whose checks failed (with the first problems). */
  rounds: number;
  roundsFailed: number;
  problems: string[];
  /** Events by who decided them. */
  events: Record<string, number>;
  /** Requests the guests published to the health VM, and those settled (answered or failed safe) once each. */
  requests: { published: number; settled: number };
  hmRestarts: number;
  /** Every protected region of every round intact at its end. */
  intact: boolean;
  /** The VMM process's resident set size after the first round and at the end. */
  rssMiB: { start: number; end: number };
}

/** With several guests: the single-guest fields per guest; healthVm stays top-level. */
export interface MultiRunSummary {
  decider: DeciderName;
  guests: (Omit<RunSummary, "decider" | "healthVm"> & { vm: string })[];
  healthVm: HealthVmSummary;
  soak?: SoakSummary;
}

export interface RunReport {
  summary: RunSummary;
  /** Why the guest stopped, in words. */
  detail: string;
  /** The scenario's GV-RESULT pairs, when it printed one. */
  result: Record<string, string> | undefined;
  /** Problems found when checking a built-in scenario's expectations; empty = pass. */
  problems: string[];
  serial: string[];
  stats: DispatchStats | undefined;
  changedRegions: string[];
  /** Exceptions the guest reported handling that the VMM never captured (a guest that lies, or capture off). */
  unmatchedGuestReports: number;
}

export interface MultiRunReport {
  summary: MultiRunSummary;
  guests: RunReport[];
}

/**
 * The checks a run makes before it needs KVM (scenarios, guest count, memory
 * size, the kernel file): the CLI makes them on the host before it moves a
 * run into the lab.
 */
