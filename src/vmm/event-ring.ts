/**
 * The events a vCPU thread captures, handed to the VM's owner through shared
 * memory instead of one structured-clone message each (the clone was one of
 * the largest single costs of a verdict's software path: docs/performance.md).
 * One producer (the vCPU thread), one consumer (the owner's thread).
 *
 * The ring is fixed-size slots in a SharedArrayBuffer: the producer writes a
 * slot, then publishes it by moving `head`; the consumer reads slots up to
 * `head`, then moves `tail`. The producer posts a doorbell message only when
 * the consumer had caught up before this event (it may be idle); the owner
 * drains the ring before every message it handles, so events keep their
 * order with everything else the thread says. An event that does not fit a
 * slot, or finds the ring full, goes as a message of its own (`overflow`);
 * after one, events keep going that way until the owner has handled every
 * such message, so order holds across both ways too.
 */
import { EVENT_KINDS, type EventKind, VERDICTS, type Verdict, verdictOf } from "../abi/guest-abi.js";
import { ByteSlab } from "../byte-slab.js";
import type { DecidedBy } from "../decide/decider.js";
import type { CapturedEvent } from "./dispatcher.js";

/** Header words: head (events published), tail (events consumed), overflow messages handled. */
const HEAD = 0;
const TAIL = 1;
const OVERFLOW_SEEN = 2;
const HEADER_BYTES = 16;

export const EVENT_SLOT_BYTES = 4096;
export const DEFAULT_EVENT_SLOTS = 256;

/** Slot layout (bytes from the slot's start). */
const S = {
  seq: 0, // f64
  gpa: 8, // f64
  rip: 16, // u64
  latencyUs: 24, // f64
  timeMs: 32, // f64
  vmId: 40, // u32
  vcpu: 44, // u32
  regionId: 48, // u32
  vector: 52, // u32
  object: 56, // u32
  msrIndex: 60, // u32
  kind: 64, // u8
  verdict: 65, // u8
  decidedBy: 66, // u8
  hasNote: 67, // u8
  recordLen: 68, // u16
  data: 72, // the record, then rule, reason and note, each u16 length + UTF-8
} as const;

const DECIDED_BY: readonly DecidedBy[] = ["vmm", "hm-vm", "failsafe"];
const KIND_BY_NUMBER = new Map<number, EventKind>(Object.entries(EVENT_KINDS).map(([k, v]) => [v, k as EventKind]));

/** What write() did: published (and whether the consumer may be idle: ring the doorbell), or refused. */
export type RingWrite = "published" | "published-idle" | "refused";

export class EventRing {
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly slots: number;
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder();
  /** Producer: rule names, reasons and notes already encoded (they repeat from event to event). */
  private readonly encoded = new Map<string, Uint8Array>();
  /** Consumer: the last bytes and string read for each of rule, reason and note. */
  private readonly lastText: { bytes: Uint8Array; text: string }[] = [0, 1, 2].map(() => ({
    bytes: new Uint8Array(0),
    text: "",
  }));
  /** Consumer: where decoded records come from. */
  private readonly records = new ByteSlab();
  /** Producer side: overflow messages posted so far (only the producer needs it). */
  private overflowPosted = 0;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.slots = Math.floor((buffer.byteLength - HEADER_BYTES) / EVENT_SLOT_BYTES);
    if (this.slots < 1) throw new RangeError(`an event ring needs room for a slot: ${buffer.byteLength} bytes`);
    this.words = new Int32Array(buffer, 0, 3);
    this.bytes = new Uint8Array(buffer, HEADER_BYTES);
    this.view = new DataView(buffer, HEADER_BYTES);
  }

  static create(slots = DEFAULT_EVENT_SLOTS): EventRing {
    return new EventRing(new SharedArrayBuffer(HEADER_BYTES + slots * EVENT_SLOT_BYTES));
  }

  /**
   * Producer: publish `e`. "refused": the ring is full, the event does not
   * fit a slot, or earlier events went as messages the owner has not handled
   * yet; the caller posts it as a message and calls overflowed().
   */
  write(e: CapturedEvent): RingWrite {
    const w = this.words;
    if (Atomics.load(w, OVERFLOW_SEEN) !== this.overflowPosted) return "refused";
    const head = Atomics.load(w, HEAD);
    if (head - Atomics.load(w, TAIL) >= this.slots) return "refused";
    const base = (head % this.slots) * EVENT_SLOT_BYTES;
    if (!this.encode(base, e)) return "refused";
    Atomics.store(w, HEAD, head + 1);
    return Atomics.load(w, TAIL) === head ? "published-idle" : "published";
  }

  /** Producer: an event write() refused went as a message. */
  overflowed(): void {
    this.overflowPosted++;
  }

  /** Consumer: the published events, oldest first (none: an empty list). */
  drain(): CapturedEvent[] {
    const w = this.words;
    const out: CapturedEvent[] = [];
    for (;;) {
      const head = Atomics.load(w, HEAD);
      let tail = Atomics.load(w, TAIL);
      if (tail === head) return out;
      for (; tail !== head; tail++) out.push(this.decode((tail % this.slots) * EVENT_SLOT_BYTES));
      Atomics.store(w, TAIL, tail);
    }
  }

  /** Consumer: an event that came as a message has been handled. */
  overflowHandled(): void {
    Atomics.add(this.words, OVERFLOW_SEEN, 1);
  }

  private encode(base: number, e: CapturedEvent): boolean {
    const v = this.view;
    const end = base + EVENT_SLOT_BYTES;
    if (e.record.length > 0xffff || base + S.data + e.record.length > end) return false;
    v.setFloat64(base + S.seq, e.seq, true);
    v.setFloat64(base + S.gpa, e.gpa, true);
    v.setBigUint64(base + S.rip, BigInt.asUintN(64, e.rip), true);
    v.setFloat64(base + S.latencyUs, e.latencyUs, true);
    v.setFloat64(base + S.timeMs, e.timeMs, true);
    v.setUint32(base + S.vmId, e.vmId, true);
    v.setUint32(base + S.vcpu, e.vcpu, true);
    v.setUint32(base + S.regionId, e.regionId, true);
    v.setUint32(base + S.vector, e.vector, true);
    v.setUint32(base + S.object, e.object, true);
    v.setUint32(base + S.msrIndex, e.msrIndex, true);
    v.setUint8(base + S.kind, EVENT_KINDS[e.kind]);
    v.setUint8(base + S.verdict, VERDICTS[e.verdict]);
    v.setUint8(base + S.decidedBy, DECIDED_BY.indexOf(e.decidedBy) + 1);
    v.setUint8(base + S.hasNote, e.note === undefined ? 0 : 1);
    v.setUint16(base + S.recordLen, e.record.length, true);
    this.bytes.set(e.record, base + S.data);
    let at = base + S.data + e.record.length;
    for (const s of [e.rule, e.reason, e.note ?? ""]) {
      const b = this.utf8(s);
      if (at + 2 + b.length > end || b.length > 0xffff) return false; // does not fit: it goes as a message, whole
      v.setUint16(at, b.length, true);
      this.bytes.set(b, at + 2);
      at += 2 + b.length;
    }
    return true;
  }

  private utf8(s: string): Uint8Array {
    let b = this.encoded.get(s);
    if (b === undefined) {
      if (this.encoded.size >= 256) this.encoded.clear();
      b = this.encoder.encode(s);
      this.encoded.set(s, b);
    }
    return b;
  }

  private decode(base: number): CapturedEvent {
    const v = this.view;
    const recordLen = v.getUint16(base + S.recordLen, true);
    let at = base + S.data + recordLen;
    const text = (i: number): string => {
      const n = v.getUint16(at, true);
      const bytes = this.bytes.subarray(at + 2, at + 2 + n);
      at += 2 + n;
      const last = this.lastText[i] as { bytes: Uint8Array; text: string };
      if (!sameBytes(last.bytes, bytes)) {
        last.bytes = bytes.slice(); // (TextDecoder reads no shared memory: a copy)
        last.text = this.decoder.decode(last.bytes);
      }
      return last.text;
    };
    const rule = text(0);
    const reason = text(1);
    const note = text(2);
    const record = this.records.take(recordLen);
    record.set(this.bytes.subarray(base + S.data, base + S.data + recordLen));
    const e: CapturedEvent = {
      seq: v.getFloat64(base + S.seq, true),
      kind: KIND_BY_NUMBER.get(v.getUint8(base + S.kind)) as EventKind,
      vmId: v.getUint32(base + S.vmId, true),
      vcpu: v.getUint32(base + S.vcpu, true),
      regionId: v.getUint32(base + S.regionId, true),
      gpa: v.getFloat64(base + S.gpa, true),
      rip: v.getBigUint64(base + S.rip, true),
      vector: v.getUint32(base + S.vector, true),
      object: v.getUint32(base + S.object, true),
      msrIndex: v.getUint32(base + S.msrIndex, true),
      verdict: verdictOf(v.getUint8(base + S.verdict)) as Verdict,
      decidedBy: DECIDED_BY[v.getUint8(base + S.decidedBy) - 1] as DecidedBy,
      rule,
      reason,
      latencyUs: v.getFloat64(base + S.latencyUs, true),
      timeMs: v.getFloat64(base + S.timeMs, true),
      record,
    };
    if (v.getUint8(base + S.hasNote) === 1) e.note = note;
    return e;
  }
}

/** Element by element. Each hot path keeps its own copy: one shared by the three measured 5–8% slower at the replay's p90 (docs/performance.md). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The producer's side as one call: publish `e` in the ring, ring the doorbell
 * when the owner may be idle, or post it as a message of its own.
 */
export function ringEventSender(
  ring: EventRing,
  post: (m: { type: "events" } | { type: "event"; event: CapturedEvent }) => void,
): (e: CapturedEvent) => void {
  return (event) => {
    const w = ring.write(event);
    if (w === "published-idle") post({ type: "events" });
    else if (w === "refused") {
      ring.overflowed();
      post({ type: "event", event });
    }
  };
}
