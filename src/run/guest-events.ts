/**
 * One guest's event pipeline, over all its incarnations: each captured event
 * (numbered once, by the VM that captured it: per guest, across restarts) is
 * folded when it repeats the one before, named once (symbols), and then
 * fanned out to the summary list, the audit log and the run's listeners. The guest's own reports of exceptions
 * are matched to the events here too.
 */
import { type AuditLog, type AuditVmView, auditRecord, nameEvent } from "../audit.js";
import type { SummaryEvent } from "../model/summary-event.js";
import { guestName } from "../names.js";
import { integrityObjectName } from "../policy/names.js";
import type { CapturedEvent, GuestReport } from "../vmm/dispatcher.js";
import { type RepeatLog, sameEvent } from "./event-fold.js";

export interface GuestEventSinks {
  audit?: AuditLog;
  repeats: RepeatLog;
  onEvent?: (e: SummaryEvent, guest: number) => void;
  onRepeat?: (e: SummaryEvent, guest: number) => void;
}

export class GuestEvents {
  /** The summary's events (a folded storm is one, with a count). */
  list: SummaryEvent[] = [];
  /** Exceptions the guest reported that the VMM never captured. */
  unmatchedReports = 0;
  /** This incarnation's events by sequence number (guest reports name those). */
  private readonly bySeq = new Map<number, SummaryEvent>();
  /** The last sequence number seen: the next VM of this guest numbers on from it. */
  lastSeq = 0;
  /** The previous event, to fold repeats (within one incarnation only). */
  private prev: { raw: CapturedEvent; summary: SummaryEvent } | undefined;

  constructor(
    private readonly guest: number,
    private readonly sinks: GuestEventSinks,
  ) {}

  /** A new VM for this guest (a restart): repeats fold within one VM only. */
  newIncarnation(): void {
    this.bySeq.clear();
    this.prev = undefined;
  }

  /** A new soak round: a new list and numbering (the counts are the soak's). */
  newRound(): void {
    this.list = [];
    this.lastSeq = 0;
    this.newIncarnation();
  }

  event(e: CapturedEvent, vm: AuditVmView): void {
    const g = this.guest;
    this.lastSeq = Math.max(this.lastSeq, e.seq);
    const names = nameEvent(e, vm);
    const s = toSummary(e, vm, names.target ?? names.rip);
    const prev = this.prev;
    if (prev && sameEvent(prev.raw, e)) {
      // A storm of one event: counted, not stored again (memory stays bounded).
      const folded = prev.summary;
      folded.count = (folded.count ?? 1) + 1;
      this.bySeq.set(e.seq, folded);
      this.sinks.repeats.note(g, folded, e.timeMs);
      this.sinks.onRepeat?.({ ...s, seq: folded.seq }, g);
      return;
    }
    this.sinks.repeats.flush(g);
    this.list.push(s);
    this.prev = { raw: e, summary: s };
    this.bySeq.set(e.seq, s);
    this.sinks.audit?.append(auditRecord(e, vm, guestName(g), names));
    this.sinks.onEvent?.(s, g);
  }

  /** Both views of one exception: what the VMM captured, what the guest says it did. */
  guestReport(r: GuestReport): void {
    const ev = r.seq === undefined ? undefined : this.bySeq.get(r.seq);
    if (ev) ev.guest = r.action;
    else this.unmatchedReports++;
    this.sinks.audit?.append({
      time: new Date().toISOString(),
      vm: guestName(this.guest),
      kind: "guest-report",
      seq: ev?.seq ?? null,
      vector: r.vector,
      rip: `0x${r.rip.toString(16)}`,
      action: r.action,
      matched: ev !== undefined,
    });
  }
}

function toSummary(e: CapturedEvent, vm: AuditVmView, symbol: string): SummaryEvent {
  return {
    seq: e.seq,
    kind: e.kind,
    ...(e.kind === "cpu-exception" ? { vector: e.vector } : {}),
    ...(e.kind === "integrity" ? { object: integrityObjectName(e.object)?.toLowerCase() ?? String(e.object) } : {}),
    ...(e.kind === "msr-write" ? { msr: `0x${e.msrIndex.toString(16)}` } : {}),
    ...(e.note ? { note: e.note } : {}),
    region: vm.regionName(e.regionId) ?? null,
    symbol,
    rip: `0x${e.rip.toString(16)}`,
    verdict: e.verdict,
    decidedBy: e.decidedBy,
    latencyUs: Math.round(e.latencyUs * 10) / 10,
  };
}
