/** The run observers behind the runner's callbacks: live view and metrics together, no KVM needed. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { LiveEvent } from "../../src/cli/live.js";
import { startRunObservers } from "../../src/cli/observe.js";
import { GuardvisorError } from "../../src/errors.js";
import { sample } from "../support/prom.js";
import { FakeStream } from "../support/terminal.js";

const ev = (seq: number, over: Partial<LiveEvent> = {}): LiveEvent => ({
  seq,
  kind: "protected-write",
  region: ".text",
  symbol: "gv_check_credentials",
  rip: "0x100123",
  verdict: "deny",
  decidedBy: "hm-vm",
  latencyUs: 50,
  ...over,
});

describe("run observers", () => {
  it("feed the live view and the metrics endpoint from the runner's callbacks", async () => {
    const out = new FakeStream(false);
    const notice = new FakeStream(false);
    const obs = await startRunObservers({ live: out, metricsPort: 0, notice });
    try {
      assert.match(obs.metricsUrl ?? "", /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      assert.equal(notice.text, `guardvisor: metrics at ${obs.metricsUrl}\n`);
      obs.onGuestState(0, "running");
      obs.onGuestState(1, "running");
      obs.onEvent(ev(1), 0);
      obs.onRepeat(ev(1, { latencyUs: 70 }), 0);
      obs.onRepeat(ev(1, { latencyUs: 900 }), 0);
      obs.onEvent(ev(1, { decidedBy: "failsafe" }), 1);
      obs.onHmRestart({ reason: "garbage", detail: "request 1 of guest 1: verdict 153 out of range", downMs: 30 });
      obs.onExits(0, 1234);
      obs.onGuestState(0, "completed");
      const text = await (await fetch(obs.metricsUrl as string)).text();
      const events = (vm: string, decided_by: string) =>
        sample(text, "guardvisor_events_total", { vm, kind: "protected-write", verdict: "deny", decided_by });
      assert.equal(events("guest0", "hm-vm"), 3);
      assert.equal(sample(text, "guardvisor_verdict_latency_seconds_count", { decider: "hm-vm" }), 3);
      assert.equal(sample(text, "guardvisor_verdict_latency_seconds_bucket", { decider: "hm-vm", le: "0.0001" }), 2);
      assert.equal(events("guest1", "failsafe"), 1);
      assert.equal(sample(text, "guardvisor_health_vm_restarts_total", { reason: "garbage" }), 1);
      assert.equal(sample(text, "guardvisor_vm_exits_total", { vm: "guest0" }), 1234);
      assert.equal(sample(text, "guardvisor_guests_running"), 1);
    } finally {
      await obs.close();
      await obs.close();
    }
    const lines = out.lines.map((l) => l.slice(13));
    assert.deepEqual(lines, [
      "guest0 #1 protected-write .text gv_check_credentials → deny (hm-vm, 50 µs)",
      "guest1 #1 protected-write .text gv_check_credentials → deny (failsafe, 50 µs)",
      "guest0 #1 protected-write .text gv_check_credentials → deny (hm-vm, 900 µs) ×3",
      "health VM restarted after garbage: request 1 of guest 1: verdict 153 out of range (down 30 ms)",
    ]);
    await assert.rejects(fetch(obs.metricsUrl as string));
  });

  it("without a port or a live stream they do nothing, and print passes lines through", async () => {
    const obs = await startRunObservers({});
    assert.equal(obs.metrics, undefined);
    assert.equal(obs.metricsUrl, undefined);
    obs.onEvent(ev(1), 0);
    obs.onHmRestart({ reason: "crash", detail: "x", downMs: 1 });
    obs.onGuestState(0, "completed");
    obs.onExits(0, 10);
    const err = new FakeStream(true);
    obs.print("guest0| hello", err);
    assert.equal(err.text, "guest0| hello\n");
    await obs.close();
  });

  it("print goes through the live view only when its stream is a terminal too", async () => {
    const term = new FakeStream(true);
    const obs = await startRunObservers({ live: term, env: { NO_COLOR: "1" } });
    const pipe = new FakeStream(false);
    obs.print("guest0| to a file", pipe);
    obs.print("guest0| to the terminal", new FakeStream(true));
    await obs.close();
    assert.equal(pipe.text, "guest0| to a file\n");
    assert.match(term.text, /guest0\| to the terminal\n/);
  });

  it("a bad port fails before anything starts", async () => {
    const out = new FakeStream(true);
    await assert.rejects(
      startRunObservers({ live: out, metricsPort: 70000 }),
      (e: unknown) => e instanceof GuardvisorError && e.code === "CONFIG_INVALID" && /--metrics-port/.test(e.message),
    );
    assert.equal(out.text, "");
  });
});
