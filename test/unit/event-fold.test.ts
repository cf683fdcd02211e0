import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RepeatLog, sameEvent } from "../../src/run/event-fold.js";
import type { SummaryEvent } from "../../src/run/options.js";
import { syntheticEvent } from "../support/audit.js";

const ud: SummaryEvent = {
  seq: 1,
  kind: "cpu-exception",
  vector: 6,
  region: null,
  symbol: "user_storm_task+0x12",
  rip: "0x200012",
  verdict: "log",
  decidedBy: "hm-vm",
  latencyUs: 80,
};

describe("folding repeated events", () => {
  it("is the same event only when the same instruction does the same thing to the same place", () => {
    const w = syntheticEvent(1);
    assert.ok(sameEvent(w, { ...w, seq: 2, latencyUs: 3, timeMs: w.timeMs + 5 }));
    const changes = [
      { rip: w.rip + 4n }, // another instruction writing the same place (text-patch's 1- then 8-byte write)
      { gpa: w.gpa + 4 },
      { regionId: 2 },
      { kind: "cpu-exception" as const },
      { vector: 13 },
      { msrIndex: 0xc0000082 },
      { verdict: "allow" as const },
      { decidedBy: "failsafe" as const },
      { note: "frame rejected" },
    ];
    for (const d of changes)
      assert.ok(
        !sameEvent(w, { ...w, ...d }),
        JSON.stringify(d, (_k, v) => (typeof v === "bigint" ? `${v}` : v)),
      );
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
