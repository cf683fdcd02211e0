/** The metrics series, driven by synthetic events (no KVM needed). */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { register as globalRegistry } from "prom-client";
import { LATENCY_BUCKETS_S, Metrics, type MetricsEvent } from "../../src/metrics/metrics.js";
import { guestName } from "../../src/names.js";
import { parseProm, sample } from "../support/prom.js";

const deny = (vm: string, latencyUs: number, decidedBy = "hm-vm"): MetricsEvent => ({
  vm,
  kind: "protected-write",
  verdict: "deny",
  decidedBy,
  latencyUs,
});

describe("metrics: events and verdict latency", () => {
  it("counts events by guest, kind, verdict and decider", async () => {
    const m = new Metrics();
    m.event(deny("guest0", 58));
    m.event(deny("guest0", 61));
    m.event(deny("guest1", 40));
    m.event({ vm: "guest0", kind: "msr-write", verdict: "deny-fault", decidedBy: "vmm", latencyUs: 3 });
    m.event(deny("guest0", 100_000, "failsafe"));
    const text = await m.text();
    const ev = (vm: string, kind: string, verdict: string, decided_by: string) =>
      sample(text, "guardvisor_events_total", { vm, kind, verdict, decided_by });
    assert.equal(ev("guest0", "protected-write", "deny", "hm-vm"), 2);
    assert.equal(ev("guest1", "protected-write", "deny", "hm-vm"), 1);
    assert.equal(ev("guest0", "msr-write", "deny-fault", "vmm"), 1);
    assert.equal(ev("guest0", "protected-write", "deny", "failsafe"), 1);
    assert.match(text, /^# TYPE guardvisor_events_total counter$/m);
  });

  it("observes latency in seconds per decider, in buckets from 5 µs to 1 s", async () => {
    const m = new Metrics();
    for (const us of [4, 58, 61, 900]) m.event(deny("guest0", us));
    m.event(deny("guest0", 100_000, "failsafe"));
    const text = await m.text();
    const bucket = (decider: string, le: string) =>
      sample(text, "guardvisor_verdict_latency_seconds_bucket", { decider, le });
    assert.match(text, /^# TYPE guardvisor_verdict_latency_seconds histogram$/m);
    assert.equal(bucket("hm-vm", "0.000005"), 1);
    assert.equal(bucket("hm-vm", "0.00005"), 1);
    assert.equal(bucket("hm-vm", "0.0001"), 3);
    assert.equal(bucket("hm-vm", "0.001"), 4);
    assert.equal(bucket("hm-vm", "+Inf"), 4);
    assert.equal(sample(text, "guardvisor_verdict_latency_seconds_count", { decider: "hm-vm" }), 4);
    const sum = sample(text, "guardvisor_verdict_latency_seconds_sum", { decider: "hm-vm" }) ?? Number.NaN;
    assert.ok(Math.abs(sum - 1023e-6) < 1e-9, String(sum));
    assert.equal(bucket("failsafe", "0.05"), 0);
    assert.equal(bucket("failsafe", "0.1"), 1);
    const les = parseProm(text)
      .filter((s) => s.name === "guardvisor_verdict_latency_seconds_bucket" && s.labels.decider === "hm-vm")
      .map((s) => s.labels.le);
    assert.deepEqual(les, [...LATENCY_BUCKETS_S.map(String), "+Inf"]);
    assert.equal(LATENCY_BUCKETS_S[0], 5e-6);
    assert.equal(LATENCY_BUCKETS_S.at(-1), 1);
  });

  it("ignores a latency that is not a number but still counts the event", async () => {
    const m = new Metrics();
    m.event(deny("guest0", Number.NaN));
    const text = await m.text();
    assert.equal(
      sample(text, "guardvisor_events_total", {
        vm: "guest0",
        kind: "protected-write",
        verdict: "deny",
        decided_by: "hm-vm",
      }),
      1,
    );
    assert.equal(sample(text, "guardvisor_verdict_latency_seconds_count", { decider: "hm-vm" }), undefined);
  });

  it("uses its own registry, never the global one", async () => {
    const a = new Metrics();
    const b = new Metrics();
    a.event(deny("guest0", 10));
    assert.equal(
      sample(await b.text(), "guardvisor_events_total", {
        vm: "guest0",
        kind: "protected-write",
        verdict: "deny",
        decided_by: "hm-vm",
      }),
      undefined,
    );
    assert.equal(globalRegistry.getSingleMetric("guardvisor_events_total"), undefined);
    assert.match(a.contentType, /^text\/plain; version=0\.0\.4/);
  });

  it("names guests as the summary and the audit log do", () => {
    assert.equal(guestName(0), "guest0");
    assert.equal(guestName(15), "guest15");
  });
});

describe("metrics: health VM, exits, guests", () => {
  it("counts health-VM restarts by reason", async () => {
    const m = new Metrics();
    m.healthVmRestart("crash");
    m.healthVmRestart("crash");
    m.healthVmRestart("timeout");
    const text = await m.text();
    assert.equal(sample(text, "guardvisor_health_vm_restarts_total", { reason: "crash" }), 2);
    assert.equal(sample(text, "guardvisor_health_vm_restarts_total", { reason: "timeout" }), 1);
  });

  it("turns cumulative exit-count samples into a counter and a rate", async () => {
    let t = 0;
    const m = new Metrics({ now: () => t });
    const exits = async () => {
      const text = await m.text();
      return [
        sample(text, "guardvisor_vm_exits_total", { vm: "guest0" }),
        sample(text, "guardvisor_vm_exits_per_second", { vm: "guest0" }),
      ];
    };
    m.exits("guest0", 100);
    assert.deepEqual(await exits(), [100, 0]);
    t = 500;
    m.exits("guest0", 600);
    assert.deepEqual(await exits(), [600, 1000]);
    t = 1500;
    m.exits("guest0", 600);
    assert.deepEqual(await exits(), [600, 0]);
    // A smaller total: the count started again (a restarted guest).
    t = 2500;
    m.exits("guest0", 40);
    assert.deepEqual(await exits(), [640, 40]);
    // Samples at the same instant move the counter but leave the rate alone.
    m.exits("guest0", 50);
    assert.deepEqual(await exits(), [650, 40]);
    m.exits("guest0", -1);
    m.exits("guest0", Number.NaN);
    assert.deepEqual(await exits(), [650, 40]);
  });

  it("samples exit counts on a timer until stopped", async () => {
    const m = new Metrics();
    let n = 0;
    const stop = m.sampleExits(() => {
      n += 1000;
      return [["guest0", n] as const];
    }, 20);
    assert.equal(n, 1000, "the first sample at once");
    // Wait for two timer samples (generous: a loaded machine delays timers).
    for (const until = Date.now() + 5000; n < 3000 && Date.now() < until; ) await new Promise((r) => setTimeout(r, 5));
    stop();
    const seen = n;
    const total = sample(await m.text(), "guardvisor_vm_exits_total", { vm: "guest0" });
    assert.equal(total, seen);
    assert.ok(seen >= 3000, `sampled ${seen / 1000} times`);
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(n, seen, "no sample after stop");
  });

  it("tracks running guests; a stopped guest's exit rate is 0", async () => {
    let t = 0;
    const m = new Metrics({ now: () => t });
    assert.equal(sample(await m.text(), "guardvisor_guests_running"), 0);
    m.guestState("guest0", "running");
    m.guestState("guest1", "running");
    m.guestState("guest1", "running");
    m.exits("guest0", 0);
    t = 1000;
    m.exits("guest0", 5000);
    assert.equal(sample(await m.text(), "guardvisor_guests_running"), 2);
    assert.equal(sample(await m.text(), "guardvisor_vm_exits_per_second", { vm: "guest0" }), 5000);
    m.guestState("guest0", "stopped");
    const text = await m.text();
    assert.equal(sample(text, "guardvisor_guests_running"), 1);
    assert.equal(sample(text, "guardvisor_vm_exits_per_second", { vm: "guest0" }), 0);
    assert.equal(sample(text, "guardvisor_vm_exits_total", { vm: "guest0" }), 5000);
  });
});
