/**
 * Folding repeats: the same event again and again (an exception storm) is one
 * summary event with a count, and one audit "repeat" record when the run of
 * repeats ends, so memory and the audit log stay bounded.
 */
import type { SummaryEvent } from "../model/summary-event.js";
import type { CapturedEvent } from "../vmm/dispatcher.js";

/**
 * The same event again: the same instruction doing the same thing to the same
 * place, with the same verdict from the same decider. Only the sequence number,
 * the time and the latency may differ; anything else is new evidence, kept.
 */
export function sameEvent(a: CapturedEvent, b: CapturedEvent): boolean {
  return (
    a.kind === b.kind &&
    a.rip === b.rip &&
    a.gpa === b.gpa &&
    a.regionId === b.regionId &&
    a.vector === b.vector &&
    a.object === b.object &&
    a.msrIndex === b.msrIndex &&
    a.verdict === b.verdict &&
    a.decidedBy === b.decidedBy &&
    a.note === b.note
  );
}

/** Repeats of one event folded into the audit log: one "repeat" record with the count when the run ends. */
export class RepeatLog {
  private readonly pending = new Map<number, { ev: SummaryEvent; count: number; lastMs: number }>();
  constructor(private readonly write: (g: number, ev: SummaryEvent, count: number, lastMs: number) => void) {}

  note(g: number, ev: SummaryEvent, timeMs: number): void {
    const p = this.pending.get(g);
    if (p && p.ev === ev) {
      p.count++;
      p.lastMs = timeMs;
    } else {
      this.flush(g);
      this.pending.set(g, { ev, count: 1, lastMs: timeMs });
    }
  }

  flush(g: number): void {
    const p = this.pending.get(g);
    if (!p) return;
    this.pending.delete(g);
    this.write(g, p.ev, p.count, p.lastMs);
  }
}
