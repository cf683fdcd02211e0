/**
 * Metrics and the live view fed by a real run: the runner's onEvent drives a
 * Metrics instance served on a loopback port, scraped while the guest runs
 * and once more at the end, and a live view on a pipe.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLiveView } from "../../src/cli/live.js";
import { Metrics } from "../../src/metrics/metrics.js";
import { startMetricsServer } from "../../src/metrics/server.js";
import { guestName } from "../../src/names.js";
import type { RunOptions, SummaryEvent } from "../../src/run/options.js";
import { runGuest } from "../../src/run/run-guests.js";
import { skipWithoutKvm } from "../support/kvm.js";
import { sample } from "../support/prom.js";
import { FakeStream } from "../support/terminal.js";

describe("metrics on KVM", { skip: skipWithoutKvm }, () => {
  it("text-patch: the endpoint is scraped during the run and counts every event", async () => {
    const metrics = new Metrics();
    const server = await startMetricsServer(metrics, 0);
    const out = new FakeStream(false);
    const live = createLiveView({ stream: out });
    const scrapes: Promise<string>[] = [];
    const scrape = () =>
      fetch(server.url)
        .then((r) => r.text())
        .catch((e: unknown) => `scrape failed: ${String(e)}`);
    // Scrape on a timer and right after each event, while the guest runs.
    const timer = setInterval(() => scrapes.push(scrape()), 10);
    try {
      metrics.guestState(guestName(0), "running");
      // Every occurrence the runner reports: stored events, and repeats where the runner reports them.
      const delivered: SummaryEvent[] = [];
      const occurrence = (e: SummaryEvent, g: number) => {
        delivered.push(e);
        metrics.event({ vm: guestName(g), ...e });
        live.event(g, e);
        scrapes.push(scrape());
      };
      const opts: RunOptions & { onRepeat?: RunOptions["onEvent"] } = {
        scenario: "text-patch",
        onEvent: occurrence,
        onRepeat: occurrence,
      };
      const r = await runGuest(opts);
      clearInterval(timer);
      metrics.guestState(guestName(0), "stopped");
      live.close();
      assert.deepEqual(r.problems, []);
      const events = r.summary.events;
      assert.ok(events.length >= 3);
      assert.ok(delivered.length >= events.length);
      assert.ok(delivered.length <= events.reduce((n, e) => n + (e.count ?? 1), 0));

      const during = await Promise.all(scrapes);
      const seen = during.map(
        (t) =>
          sample(t, "guardvisor_events_total", {
            vm: "guest0",
            kind: "protected-write",
            verdict: "deny",
            decided_by: "hm-vm",
          }) ?? 0,
      );
      assert.ok(
        seen.some((n) => n >= 1),
        `scrapes during the run saw ${seen.join(",")}`,
      );
      assert.ok(
        during.some((t) => sample(t, "guardvisor_guests_running") === 1),
        "a scrape while the guest ran",
      );

      const end = await scrape();
      for (const e of delivered) {
        const want = delivered.filter(
          (o) => o.kind === e.kind && o.verdict === e.verdict && o.decidedBy === e.decidedBy,
        ).length;
        const labels = { vm: "guest0", kind: e.kind, verdict: e.verdict, decided_by: e.decidedBy };
        assert.equal(sample(end, "guardvisor_events_total", labels), want);
      }
      const observed = ["hm-vm", "vmm", "failsafe"].reduce(
        (n, decider) => n + (sample(end, "guardvisor_verdict_latency_seconds_count", { decider }) ?? 0),
        0,
      );
      assert.equal(observed, delivered.length);
      assert.equal(sample(end, "guardvisor_guests_running"), 0);

      // The live view printed every event, folded or not.
      assert.ok(out.lines.length >= 1 && out.lines.length <= delivered.length * 2, out.text);
      assert.match(out.text, /guest0 #1 protected-write \.text gv_check_credentials/);
    } finally {
      clearInterval(timer);
      live.close();
      await server.close();
    }
  });
});
