/** One event as a run's summary, the live view, the metrics and the audit's repeat records show it. */
import type { EventKind, Verdict } from "../abi/guest-abi.js";

export interface SummaryEvent {
  seq: number;
  kind: EventKind;
  /** cpu-exception: the vector. */
  vector?: number;
  /** integrity: what changed, as the policy names it (cr0, cr4, idtr, gdtr, paging, cr3). */
  object?: string;
  /** msr-write: the MSR index. */
  msr?: string;
  /** What else the VMM noticed (a crash's cause, a hostile frame, …). */
  note?: string;
  /** What the guest's exception module said it did with this exception. */
  guest?: string;
  /** This event happened this many times in a row (absent: once). */
  count?: number;
  region: string | null;
  symbol: string | null;
  /** Where it happened (hex): for a protected write, the writing instruction when it was found. */
  rip: string;
  verdict: Verdict;
  decidedBy: string;
  latencyUs: number;
}
