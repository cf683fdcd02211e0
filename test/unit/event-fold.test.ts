import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RepeatLog, sameEvent } from "../../src/event-fold.js";
import type { SummaryEvent } from "../../src/runner.js";

const ud: SummaryEvent = {
  seq: 1,
  kind: "cpu-exception",
  vector: 6,
  region: null,
  symbol: "user_storm_task+0x12",
  verdict: "log",
  decidedBy: "hm-vm",
  latencyUs: 80,
};

describe("folding repeated events", () => {
  it("is the same event when only the number and timing differ", () => {
    assert.ok(sameEvent(ud, { ...ud, seq: 2, latencyUs: 12 }));
    for (const d of [{ vector: 13 }, { symbol: "x" }, { verdict: "deny" as const }, { decidedBy: "failsafe" }]) {
      assert.ok(!sameEvent(ud, { ...ud, ...d }), JSON.stringify(d));
    }
  });

  it("writes one repeat record per run of repeats, per guest, with the count", () => {
    const out: [number, number, number][] = [];
    const log = new RepeatLog((g, ev, count) => out.push([g, ev.seq, count]));
    const other = { ...ud, seq: 7 };
    for (let i = 0; i < 9999; i++) log.note(0, ud, i);
    log.note(1, other, 0);
    log.note(0, other, 10_000); // a new run on guest 0 ends the first
    log.flush(0);
    log.flush(1);
    log.flush(1); // nothing pending: nothing written
    assert.deepEqual(out, [
      [0, 1, 9999],
      [0, 7, 1],
      [1, 7, 1],
    ]);
  });
});
