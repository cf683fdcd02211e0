/** The live event stream of `guardvisor run`: pipes, terminals, colours, folding, progress. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLiveView, FOLD_FLUSH_MS, formatLatency, type LiveEvent } from "../../src/cli/live.js";
import { ANY_ESCAPE, ESC, FakeStream, SGR, screen } from "../support/terminal.js";

const TIME = /\d\d:\d\d:\d\d\.\d{3}/.source;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function ev(seq: number, over: Partial<LiveEvent> = {}): LiveEvent {
  return {
    seq,
    kind: "protected-write",
    region: ".text",
    symbol: "gv_check_credentials+0x4",
    rip: "0x100123",
    verdict: "deny",
    decidedBy: "hm-vm",
    latencyUs: 58.2,
    ...over,
  };
}

describe("live view on a pipe", () => {
  it("prints one plain line per event, without escape codes", () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out, env: {} });
    v.event(0, ev(3));
    v.event(0, ev(4, { symbol: "gv_check_credentials", latencyUs: 4.25 }));
    v.event(
      1,
      ev(1, { kind: "cpu-exception", region: null, symbol: "user_task+0x12", vector: 13, verdict: "kill-task" }),
    );
    v.event(0, ev(5, { kind: "msr-write", region: null, symbol: "evil+0x3", msr: "0xc0000082", decidedBy: "vmm" }));
    v.event(0, ev(6, { decidedBy: "failsafe", latencyUs: 100_400 }));
    v.close();
    assert.doesNotMatch(out.text, ANY_ESCAPE);
    const want = [
      "guest0 #3 protected-write .text gv_check_credentials+0x4 → deny (hm-vm, 58 µs)",
      "guest0 #4 protected-write .text gv_check_credentials → deny (hm-vm, 4.3 µs)",
      "guest1 #1 cpu-exception #GP user_task+0x12 → kill-task (hm-vm, 58 µs)",
      "guest0 #5 msr-write MSR LSTAR evil+0x3 → deny (vmm, 58 µs)",
      "guest0 #6 protected-write .text gv_check_credentials+0x4 → deny (failsafe, 100.4 ms)",
    ];
    assert.equal(out.lines.length, want.length, out.text);
    out.lines.forEach((l, i) => {
      assert.match(l, new RegExp(`^${TIME} `));
      assert.equal(l.slice(13), want[i]);
    });
  });

  it("names integrity objects, unknown vectors and MSRs, and shows the VMM's note", () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out });
    v.event(0, ev(1, { kind: "integrity", region: null, symbol: "evil+0x1", object: "idtr", verdict: "halt" }));
    v.event(0, ev(2, { kind: "integrity", region: null, symbol: "evil+0x2", object: "cr4", verdict: "halt" }));
    v.event(0, ev(3, { kind: "cpu-exception", region: null, symbol: "task+0x1", vector: 9 }));
    v.event(0, ev(4, { kind: "msr-write", region: null, symbol: null, msr: "0x10" }));
    v.event(0, ev(5, { kind: "cpu-exception", region: null, symbol: "task+0x1", vector: 14, note: "hostile frame" }));
    v.close();
    assert.deepEqual(
      out.lines.map((l) => l.slice(13).replace(/ \(hm-vm, 58 µs\)/, "")),
      [
        "guest0 #1 integrity IDTR evil+0x1 → halt",
        "guest0 #2 integrity CR4 evil+0x2 → halt",
        "guest0 #3 cpu-exception vector 9 task+0x1 → deny",
        "guest0 #4 msr-write MSR 0x10 → deny",
        "guest0 #5 cpu-exception #PF task+0x1 → deny — hostile frame",
      ],
    );
  });

  it("prints health-VM restarts", () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out });
    v.healthVm({ reason: "crash", detail: "request 1 of guest 0: engine fault, vector 13", downMs: 1234 });
    v.close();
    assert.equal(out.lines.length, 1);
    assert.match(
      out.lines[0] as string,
      new RegExp(
        `^${TIME} health VM restarted after crash: request 1 of guest 0: engine fault, vector 13 \\(down 1,234 ms\\)$`,
      ),
    );
  });

  it("folds the repeats of one event into one line with a count", () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out });
    for (let s = 1; s <= 2431; s++) v.event(0, ev(1)); // the runner reports a repeat with the first occurrence's seq
    assert.equal(out.lines.length, 1, "the first event at once, the repeats held");
    v.event(0, ev(2, { verdict: "allow" }));
    v.close();
    assert.equal(out.lines.length, 3, out.text);
    assert.match(out.lines[0] as string, /guest0 #1 protected-write .* → deny \(hm-vm, 58 µs\)$/);
    assert.match(
      out.lines[1] as string,
      new RegExp(
        `^${TIME} guest0 #1 protected-write \\.text gv_check_credentials\\+0x4 → deny \\(hm-vm, 58 µs\\) ×2,431$`,
      ),
    );
    assert.match(out.lines[2] as string, /guest0 #2 .* → allow /);
  });

  it("folds what the runner folded, not a new event that looks the same", () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out });
    v.event(0, ev(1));
    v.event(0, ev(1));
    v.event(0, ev(2)); // the same line of text, but another event (another instruction, say): its own line
    v.event(0, ev(2));
    v.close();
    assert.equal(out.lines.length, 4, out.text);
    assert.deepEqual(
      out.lines.map((l) => l.match(/#(\d+) .*?( ×2)?$/)?.slice(1, 3)),
      [
        ["1", undefined],
        ["1", " ×2"],
        ["2", undefined],
        ["2", " ×2"],
      ],
    );
  });

  it("keeps one run per guest, so two guests' storms fold too", () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out });
    for (let s = 1; s <= 1000; s++) {
      v.event(0, ev(1));
      v.event(1, ev(1, { region: ".rodata", symbol: "syscall_table+0x10" }));
    }
    v.guestState(0, "completed");
    assert.equal(out.lines.length, 3);
    assert.match(out.lines[2] as string, /guest0 #1 .* ×1,000$/);
    v.close();
    assert.equal(out.lines.length, 4);
    assert.match(out.lines[3] as string, /guest1 #1 protected-write \.rodata syscall_table\+0x10 .* ×1,000$/);
  });

  it("shows a long run of repeats now and then, and what came before a health-VM restart before it", () => {
    let t = 1_000_000;
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out, now: () => t });
    v.event(0, ev(1));
    t += FOLD_FLUSH_MS - 1;
    v.event(0, ev(1));
    assert.equal(out.lines.length, 1);
    t += 1;
    v.event(0, ev(1));
    assert.equal(out.lines.length, 2);
    assert.match(out.lines[1] as string, /#1 .* ×3$/);
    v.event(0, ev(1));
    v.healthVm({ reason: "hang", detail: "busy", downMs: 5 });
    v.event(0, ev(5));
    v.close();
    assert.deepEqual(
      out.lines.slice(2).map((l) => l.slice(13).replace(/ protected-write.*→/, " →")),
      [
        "guest0 #1 → deny (hm-vm, 58 µs) ×4",
        "health VM restarted after hang: busy (down 5 ms)",
        "guest0 #5 → deny (hm-vm, 58 µs)",
      ],
    );
  });

  it("never draws a progress line", async () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out, progressAfterMs: 0, refreshMs: 200 });
    v.guestState(0, "running");
    v.event(0, ev(1));
    await sleep(450);
    v.close();
    assert.equal(out.lines.length, 1);
    assert.doesNotMatch(out.text, /events|\r/);
  });

  it("ignores everything after close, and close twice", () => {
    const out = new FakeStream(false);
    const v = createLiveView({ stream: out });
    v.event(0, ev(1));
    v.close();
    v.close();
    v.event(0, ev(2, { verdict: "allow" }));
    v.healthVm({ reason: "crash", detail: "x", downMs: 1 });
    assert.equal(out.lines.length, 1);
  });
});

describe("live view on a terminal", () => {
  it("colours by verdict: deny red, allow and log green, failsafe yellow, restart and halt magenta", () => {
    const out = new FakeStream(true);
    const v = createLiveView({ stream: out, env: {} });
    const colourOf = (over: Partial<LiveEvent>) => {
      const before = out.text.length;
      v.event(0, ev(Math.floor(Math.random() * 1e9), { ...over, symbol: String(Math.random()) }));
      const drawn = out.text.slice(before);
      // The last line drawn is the new event's (the one before it is committed in the same write).
      return [...drawn.matchAll(new RegExp(`${ESC}\\[(3\\d)m→ `, "g"))].at(-1)?.[1];
    };
    assert.equal(colourOf({ verdict: "deny" }), "31");
    assert.equal(colourOf({ verdict: "deny-fault" }), "31");
    assert.equal(colourOf({ verdict: "allow" }), "32");
    assert.equal(colourOf({ verdict: "log" }), "32");
    assert.equal(colourOf({ verdict: "deny", decidedBy: "failsafe" }), "33");
    assert.equal(colourOf({ verdict: "restart" }), "35");
    assert.equal(colourOf({ verdict: "halt" }), "35");
    v.healthVm({ reason: "crash", detail: "x", downMs: 1 });
    assert.match(out.text, new RegExp(`${ESC}\\[35m.*health VM restarted`));
    v.close();
  });

  it("has no colours with NO_COLOR set, or when told so", () => {
    for (const opts of [{ env: { NO_COLOR: "1" } }, { env: {}, color: false }]) {
      const out = new FakeStream(true);
      const v = createLiveView({ stream: out, ...opts });
      v.event(0, ev(1));
      v.healthVm({ reason: "crash", detail: "x", downMs: 1 });
      v.close();
      assert.doesNotMatch(out.text, SGR);
      assert.equal(screen(out.text, out.columns).length, 2);
    }
    // An empty NO_COLOR does not count (no-color.org).
    const out = new FakeStream(true);
    const v = createLiveView({ stream: out, env: { NO_COLOR: "" } });
    v.event(0, ev(1));
    v.close();
    assert.match(out.text, SGR);
  });

  it("updates a folded line in place and leaves exactly the lines on screen", async () => {
    const out = new FakeStream(true, 92);
    const v = createLiveView({ stream: out, env: {}, progressAfterMs: 60_000 });
    v.event(0, ev(1, { symbol: "gv_check_credentials" }));
    for (let s = 2; s <= 5000; s++) v.event(0, ev(2));
    await sleep(260);
    // The folded line is wider than the terminal: it wraps over two rows, and is still replaced whole.
    const during = screen(out.text, out.columns);
    assert.equal(during.length, 3, during.join("\n"));
    assert.match(`${during[1]}${during[2]}`, /^.{12} guest0 #2 protected-write .*×4,999$/);
    for (let s = 5001; s <= 6000; s++) v.event(0, ev(2));
    v.event(0, ev(3, { verdict: "allow", symbol: "gv_check_credentials" }));
    v.close();
    const final = screen(out.text, out.columns);
    assert.equal(final.length, 4, final.join("\n"));
    assert.match(final[0] as string, /guest0 #1 protected-write \.text gv_check_credentials → deny/);
    assert.match(`${final[1]}${final[2]}`, /^.{12} guest0 #2 protected-write .*×5,999$/);
    assert.match(final[3] as string, /guest0 #3 .* → allow/);
    assert.ok(out.chunks.length < 60, `${out.chunks.length} writes for 6,001 events`);
  });

  it("draws a progress line for long runs, at most every 200 ms, and removes it at close", async () => {
    const out = new FakeStream(true, 120);
    const v = createLiveView({ stream: out, env: {}, progressAfterMs: 0, refreshMs: 50 });
    v.guestState(0, "running");
    v.guestState(1, "running");
    v.event(0, ev(1));
    await sleep(30);
    assert.doesNotMatch(out.text, / · /, "nothing before the first refresh");
    await sleep(600);
    v.guestState(1, "completed");
    const frames = out.chunks.filter((c) => c.includes(" · ")).length;
    assert.ok(frames >= 1 && frames <= 4, `${frames} progress frames in 630 ms`);
    const shown = screen(out.text, out.columns);
    assert.match(shown.at(-1) as string, /^\d+\.\d s · 1 event · guest0 running \(1\) · guest1 running \(0\)$/);
    v.print("guest1| serial line");
    v.close();
    const final = screen(out.text, out.columns);
    assert.equal(final.length, 2, final.join("\n"));
    assert.match(final[0] as string, /guest0 #1 /);
    assert.equal(final[1], "guest1| serial line");
  });

  it("keeps a progress line on one row however many guests there are", async () => {
    const out = new FakeStream(true, 40);
    const v = createLiveView({ stream: out, env: {}, progressAfterMs: 0 });
    for (let g = 0; g < 16; g++) v.guestState(g, "running");
    await sleep(250);
    const shown = screen(out.text, out.columns);
    assert.equal(shown.length, 1);
    assert.ok((shown[0] as string).endsWith("…"));
    v.close();
    assert.deepEqual(screen(out.text, out.columns), []);
  });
});

describe("live view formatting", () => {
  it("formats latencies from microseconds to seconds", () => {
    assert.equal(formatLatency(4.25), "4.3 µs");
    assert.equal(formatLatency(58.2), "58 µs");
    assert.equal(formatLatency(999.4), "999 µs");
    assert.equal(formatLatency(1250), "1.25 ms");
    assert.equal(formatLatency(100_400), "100.4 ms");
    assert.equal(formatLatency(2_500_000), "2.50 s");
    assert.equal(formatLatency(Number.NaN), "? µs");
  });
});
