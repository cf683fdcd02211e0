/**
 * The metrics endpoint: loopback only, GET /metrics, scraped while events
 * come in (a run without KVM: synthetic events on a timer), a clear error for
 * a port in use, and nothing left keeping the process alive after close.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { connect } from "node:net";
import { networkInterfaces } from "node:os";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { GuardvisorError } from "../../src/errors.js";
import { Metrics } from "../../src/metrics/metrics.js";
import { startMetricsServer, validateMetricsPort } from "../../src/metrics/server.js";
import { sample } from "../support/prom.js";

const EVENTS = { vm: "guest0", kind: "protected-write", verdict: "deny", decided_by: "hm-vm" };

async function scrape(url: string): Promise<string> {
  const r = await fetch(url);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return r.text();
}

function isConfigError(field: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof GuardvisorError, String(e));
    assert.equal(e.code, "CONFIG_INVALID");
    assert.match(e.message, field);
    return true;
  };
}

describe("metrics server", () => {
  it("binds 127.0.0.1 on a free port when given 0, and reports it", async () => {
    const s = await startMetricsServer(new Metrics(), 0);
    try {
      assert.match(s.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      assert.ok(s.port > 0);
      assert.equal(s.url, `http://127.0.0.1:${s.port}/metrics`);
      const text = await scrape(s.url);
      assert.match(text, /^# HELP guardvisor_guests_running /m);
      assert.equal(sample(await scrape(`${s.url}?x=1`), "guardvisor_guests_running"), 0);
    } finally {
      await s.close();
    }
  });

  it("answers 404 to everything but GET /metrics", async () => {
    const s = await startMetricsServer(new Metrics(), 0);
    try {
      const base = `http://127.0.0.1:${s.port}`;
      for (const path of ["/", "/metrics/", "/metricsx", "/favicon.ico"]) {
        const r = await fetch(`${base}${path}`);
        assert.equal(r.status, 404, path);
        await r.text();
      }
      const post = await fetch(s.url, { method: "POST", body: "x" });
      assert.equal(post.status, 404);
      await post.text();
    } finally {
      await s.close();
    }
  });

  it("is not reachable on other interfaces", async (t) => {
    const other = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === "IPv4" && !a.internal)?.address;
    if (!other) {
      t.skip("no non-loopback IPv4 address on this machine");
      return;
    }
    const s = await startMetricsServer(new Metrics(), 0);
    try {
      const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
        const sock = connect({ host: other, port: s.port });
        sock.once("connect", () => {
          sock.destroy();
          resolve(undefined);
        });
        sock.once("error", (e) => resolve(e));
      });
      assert.equal(err?.code, "ECONNREFUSED", `connected on ${other}`);
    } finally {
      await s.close();
    }
  });

  it("is scraped during a run: the counters grow between two scrapes", async () => {
    const m = new Metrics();
    const s = await startMetricsServer(m, 0);
    let seq = 0;
    let exits = 0;
    m.guestState("guest0", "running");
    // A run without KVM: events and exit-count samples arrive on a timer.
    const run = setInterval(() => {
      seq++;
      m.event({
        vm: "guest0",
        kind: "protected-write",
        verdict: "deny",
        decidedBy: "hm-vm",
        latencyUs: 40 + (seq % 30),
      });
      exits += 1000;
      m.exits("guest0", exits);
      if (seq === 1) m.healthVmRestart("timeout");
    }, 5);
    try {
      await new Promise((r) => setTimeout(r, 60));
      const first = await scrape(s.url);
      await new Promise((r) => setTimeout(r, 80));
      const second = await scrape(s.url);
      const e1 = sample(first, "guardvisor_events_total", EVENTS) ?? 0;
      const e2 = sample(second, "guardvisor_events_total", EVENTS) ?? 0;
      assert.ok(e1 >= 1, `first scrape saw ${e1} events`);
      assert.ok(e2 > e1, `events grew: ${e1} -> ${e2}`);
      const c1 = sample(first, "guardvisor_verdict_latency_seconds_count", { decider: "hm-vm" });
      const c2 = sample(second, "guardvisor_verdict_latency_seconds_count", { decider: "hm-vm" }) ?? 0;
      assert.equal(c1, e1);
      assert.equal(c2, e2);
      const x1 = sample(first, "guardvisor_vm_exits_total", { vm: "guest0" }) ?? 0;
      const x2 = sample(second, "guardvisor_vm_exits_total", { vm: "guest0" }) ?? 0;
      assert.ok(x2 > x1 && x1 > 0, `exits grew: ${x1} -> ${x2}`);
      assert.ok((sample(second, "guardvisor_vm_exits_per_second", { vm: "guest0" }) ?? 0) > 0);
      assert.ok((sample(second, "guardvisor_health_vm_restarts_total", { reason: "timeout" }) ?? 0) >= 1);
      assert.equal(sample(second, "guardvisor_guests_running"), 1);
    } finally {
      clearInterval(run);
      await s.close();
    }
  });

  it("refuses a port in use with an error naming --metrics-port", async () => {
    const a = await startMetricsServer(new Metrics(), 0);
    try {
      await assert.rejects(
        startMetricsServer(new Metrics(), a.port),
        isConfigError(/^--metrics-port: \d+: already in use on 127\.0\.0\.1$/),
      );
    } finally {
      await a.close();
    }
  });

  for (const bad of [-1, 65536, 1.5, Number.NaN, "9100" as unknown as number]) {
    it(`refuses port ${String(bad)} naming --metrics-port`, async () => {
      assert.throws(() => validateMetricsPort(bad), isConfigError(/^--metrics-port: .*0\.\.65535/));
      await assert.rejects(startMetricsServer(new Metrics(), bad), isConfigError(/^--metrics-port: /));
    });
  }

  it("frees its port on close, and close can be called twice", async () => {
    const a = await startMetricsServer(new Metrics(), 0);
    await scrape(a.url);
    await Promise.all([a.close(), a.close()]);
    const b = await startMetricsServer(new Metrics(), a.port);
    await b.close();
    await assert.rejects(fetch(a.url));
  });

  it("does not keep the process alive: after close, or even when left open", () => {
    const server = fileURLToPath(new URL("../../src/metrics/server.js", import.meta.url));
    const metrics = fileURLToPath(new URL("../../src/metrics/metrics.js", import.meta.url));
    for (const closeIt of [true, false]) {
      const code = `
        const { startMetricsServer } = await import(${JSON.stringify(server)});
        const { Metrics } = await import(${JSON.stringify(metrics)});
        const s = await startMetricsServer(new Metrics(), 0);
        const r = await fetch(s.url, { keepalive: true });
        await r.text();
        if (${closeIt}) await s.close();
        console.log("done", r.status);`;
      const t0 = Date.now();
      const r = spawnSync(process.execPath, ["--input-type=module", "-e", code], { encoding: "utf8", timeout: 20_000 });
      assert.equal(r.signal, null, `the process did not end by itself (close: ${closeIt}): ${r.stderr}`);
      // Well before the server's 5 s keep-alive timeout would have dropped the connection.
      assert.ok(Date.now() - t0 < 4000, `took ${Date.now() - t0} ms (close: ${closeIt})`);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), "done 200");
    }
  });
});
