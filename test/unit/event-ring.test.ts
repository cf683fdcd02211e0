/**
 * The event ring between a vCPU thread and the VM's owner (src/vmm/event-ring.ts):
 * every field survives the trip, order holds, a doorbell is rung only when
 * the owner may be idle, and events that cannot go through the ring go as
 * messages without losing their place, including across threads.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MessageChannel, Worker } from "node:worker_threads";
import type { CapturedEvent } from "../../src/vmm/dispatcher.js";
import { EVENT_SLOT_BYTES, EventRing, ringEventSender } from "../../src/vmm/event-ring.js";
import type { WorkerMessage } from "../../src/vmm/vcpu-protocol.js";

function event(seq: number, o: Partial<CapturedEvent> = {}): CapturedEvent {
  return {
    seq,
    kind: "protected-write",
    vmId: 7,
    vcpu: 1,
    regionId: 3,
    gpa: 0x1000100 + seq,
    rip: 0xffffffff81000123n,
    vector: 0,
    object: 0,
    msrIndex: 0,
    note: `note ${seq}: äöü`,
    verdict: "deny-fault",
    decidedBy: "hm-vm",
    rule: "protect-kernel-regions",
    reason: "write to the sealed kernel",
    latencyUs: 3.25,
    timeMs: 1_700_000_000_123,
    record: Uint8Array.from({ length: 200 }, (_, i) => (i * 7 + seq) & 0xff),
    ...o,
  };
}

describe("the event ring (EventRing)", () => {
  it("carries every field of an event, a note or none, in order", () => {
    const ring = EventRing.create(4);
    const a = event(1);
    const b = event(2, {
      kind: "cpu-exception",
      vector: 14,
      object: 0,
      msrIndex: 0,
      verdict: "log",
      decidedBy: "failsafe",
      rip: 0xffffffffffffffffn,
      gpa: 2 ** 40,
    });
    delete b.note; // no note at all
    const c = event(3, { kind: "msr-write", msrIndex: 0xc0000082, decidedBy: "vmm", verdict: "allow", note: "" });
    assert.equal(ring.write(a), "published-idle", "the owner had taken everything: ring the doorbell");
    assert.equal(ring.write(b), "published", "the owner has not taken the first yet: no doorbell");
    assert.equal(ring.write(c), "published");
    assert.deepEqual(ring.drain(), [a, b, c]);
    assert.deepEqual(ring.drain(), []);
    assert.equal(ring.write(event(4)), "published-idle");
  });

  it("reads back texts that change, repeat or differ only in their bytes (the owner keeps the last of each)", () => {
    const ring = EventRing.create(8);
    const texts = ["rule-a", "rule-b", "rule-b", "rule-a", "rule-ä", "rule-ö", "", "rule-a"];
    const sent = texts.map((t, i) => event(i + 1, { rule: t, reason: texts[texts.length - 1 - i] as string, note: t }));
    for (const e of sent) assert.notEqual(ring.write(e), "refused");
    const got = ring.drain();
    assert.deepEqual(got, sent);
    got[0]?.record.fill(0xee);
    assert.notDeepEqual(got[1]?.record, got[0]?.record, "each event has a record of its own");
  });

  it("wraps around its slots", () => {
    const ring = EventRing.create(3);
    for (let round = 0; round < 5; round++) {
      const batch = [1, 2, 3].map((i) => event(round * 3 + i));
      for (const e of batch) assert.notEqual(ring.write(e), "refused");
      assert.deepEqual(ring.drain(), batch);
    }
  });

  it("refuses an event when full or too big for a slot, and keeps refusing until the owner has handled those", () => {
    const ring = EventRing.create(2);
    const sent: WorkerMessage[] = [];
    const send = ringEventSender(ring, (m) => sent.push(m));
    send(event(1));
    send(event(2));
    send(event(3)); // full: a message
    const big = event(4, { note: "x".repeat(EVENT_SLOT_BYTES) });
    send(big); // would not fit anyway
    ring.drain(); // the owner takes the ring's two…
    send(event(5)); // …but has not handled the messages yet: this one follows them as a message too
    assert.deepEqual(
      sent.map((m) => (m.type === "event" ? m.event.seq : m.type)),
      ["events", 3, 4, 5],
    );
    assert.equal((sent[2] as { event: CapturedEvent }).event.note, big.note, "a message carries the event whole");
    for (let i = 0; i < 3; i++) ring.overflowHandled();
    send(event(6));
    assert.deepEqual(
      sent.slice(4).map((m) => m.type),
      ["events"],
      "the ring again, once every message was handled",
    );
    assert.deepEqual(
      ring.drain().map((e) => e.seq),
      [6],
    );
  });

  it("between threads: a producer's 20,000 events reach the owner all, once, in order, through ring and messages", async () => {
    const ring = EventRing.create(8); // small: the producer overflows often
    const { port1, port2 } = new MessageChannel();
    const got: number[] = [];
    const take = () => {
      for (const e of ring.drain()) got.push(e.seq);
    };
    const done = new Promise<void>((resolve) => {
      port2.on("message", (m: WorkerMessage | { type: "done" }) => {
        take();
        if (m.type === "event") {
          got.push(m.event.seq);
          ring.overflowHandled();
        }
        if (m.type === "done") resolve();
      });
    });
    const producer = new Worker(
      `
      const { workerData } = require("node:worker_threads");
      import(workerData.ringModule).then(({ EventRing, ringEventSender }) => {
        const ring = new EventRing(workerData.buffer);
        const send = ringEventSender(ring, (m) => workerData.port.postMessage(m));
        const record = new Uint8Array(16);
        for (let seq = 1; seq <= 20000; seq++) {
          send({ seq, kind: "hang", vmId: 0, vcpu: 0, regionId: 0, gpa: 0, rip: 0n, vector: 0, object: 0, msrIndex: 0,
            verdict: "restart", decidedBy: "vmm", rule: "r", reason: "", latencyUs: 0, timeMs: 0, record });
        }
        workerData.port.postMessage({ type: "done" });
      });
      `,
      {
        eval: true,
        workerData: {
          buffer: ring.buffer,
          port: port1,
          ringModule: new URL("../../src/vmm/event-ring.js", import.meta.url).href,
        },
        transferList: [port1],
      },
    );
    await done;
    await producer.terminate();
    port2.close();
    take();
    assert.equal(got.length, 20000);
    assert.ok(
      got.every((s, i) => s === i + 1),
      "in order, none twice",
    );
  });
});
