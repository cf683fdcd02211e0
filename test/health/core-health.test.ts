/**
 * Core health management against a misbehaving engine: crash, hang, garbage
 * and late answers, with the guests' deciders on worker threads. The engine
 * runs in the health VM (needs /dev/kvm) and as a host process (the same C
 * source, guest/out/hm-host), so this runs with or without KVM;
 * test/kvm/health-vm.test.ts runs whole guests against the health VM.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { ABI_CONSTANTS as C } from "../../src/abi/guest-abi.js";
import { compilePolicy, DEFAULT_POLICY, FAILSAFE_DEFAULTS } from "../../src/decide/policy.js";
import { PolicyMailbox } from "../../src/decide/policy-mailbox.js";
import { HealthManager, HM_TIMEOUT_RANGE } from "../../src/health/health-manager.js";
import type { InjectSpec } from "../../src/idc/channel.js";
import { makeRegions } from "../../src/model/regions.js";
import { scaled } from "../../src/time-scale.js";
import type { DeciderWorkerData, Decision } from "../support/decider-worker.js";
import { ENGINE_FILTER, ENGINES, type EngineKind, HOSTED_ENGINE } from "../support/engines.js";

const regions = makeRegions([{ name: ".text", start: 0x100000, end: 0x101000 }], 1 << 24);
const policy = compilePolicy(DEFAULT_POLICY, regions);

/** Run `count` decisions on a worker thread for each guest; faults go to core health management. */
function decideOn(
  hm: HealthManager,
  guests: number,
  count: number,
  extra: Partial<DeciderWorkerData> = {},
  onPaused?: () => void,
): Promise<Decision[][]> {
  return Promise.all(
    Array.from({ length: guests }, (_, g) => {
      hm.installRules(g, policy.table);
      const data: DeciderWorkerData = {
        decider: hm.deciderFor(g) as DeciderWorkerData["decider"],
        policy,
        count,
        ...extra,
      };
      const w = new Worker(new URL("../support/decider-worker.js", import.meta.url), { workerData: data });
      return new Promise<Decision[]>((resolve, reject) => {
        w.on("message", (m) => {
          if (m.type === "fault") hm.reportFault(m.fault);
          else if (m.type === "paused") onPaused?.();
          else if (m.type === "done") resolve(m.decisions);
        });
        w.on("error", reject);
      });
    }),
  );
}

async function withHealth<T>(
  engine: EngineKind,
  inject: InjectSpec | undefined,
  guests: number,
  fn: (hm: HealthManager) => Promise<T>,
  restartLimit?: number,
  timeoutMs = scaled(100),
) {
  const { backend, close } = engine.make();
  try {
    const hm = await HealthManager.start({ backend, nguests: guests, inject, timeoutMs, restartLimit });
    try {
      return await fn(hm);
    } finally {
      await hm.stop();
    }
  } finally {
    close();
  }
}

const MODES: [string, InjectSpec, string][] = [
  ["crash", { mode: C.INJECT_CRASH, at: 1, slowUs: 0 }, "crash"],
  ["hang", { mode: C.INJECT_HANG, at: 1, slowUs: 0 }, "timeout|hang"],
  ["garbage", { mode: C.INJECT_GARBAGE, at: 1, slowUs: 0 }, "garbage"],
  // Answers 4x the default deadline late (both scale together).
  ["slow", { mode: C.INJECT_SLOW, at: 1, slowUs: scaled(400) * 1000 }, "timeout|hang"],
  // A hostile engine: every ring counter overwritten (2^63 published, nothing settled), then a crash.
  ["scribble", { mode: C.INJECT_SCRIBBLE, at: 1, slowUs: 0 }, "garbage|crash"],
];

for (const engine of ENGINES)
  describe(`core health management: ${engine.name}`, { skip: engine.skip }, () => {
    it("answers every request through the engine when nothing goes wrong", async () => {
      await withHealth(engine, undefined, 1, async (hm) => {
        const [d] = await decideOn(hm, 1, 50);
        assert.equal(d?.length, 50);
        assert.ok(
          d?.every((x) => x.decidedBy === "hm-vm" && x.verdict === "deny" && x.rule === "protect-kernel-regions"),
        );
        assert.equal(hm.status().restarts, 0);
        assert.equal(hm.status().requests, 50);
      });
    });

    it("a longer answer deadline: an answer later than the default one but within it is taken", async () => {
      // Later than the default deadline, well within the one given (all three scale together).
      const late = { mode: C.INJECT_SLOW, at: 1, slowUs: scaled(250) * 1000 };
      await withHealth(
        engine,
        late,
        1,
        async (hm) => {
          const [d] = await decideOn(hm, 1, 3);
          assert.equal(d?.length, 3);
          assert.ok(d?.every((x) => x.decidedBy === "hm-vm" && x.verdict === "deny"));
          assert.equal(hm.status().restarts, 0);
        },
        undefined,
        Math.min(scaled(2000), HM_TIMEOUT_RANGE.max), // a busy lab can scale past the largest deadline
      );
    });

    for (const [name, inject, reason] of MODES) {
      it(`${name}@1: fails safe on the first request, restarts the engine, then decides again`, async () => {
        await withHealth(engine, inject, 1, async (hm) => {
          const [d] = await decideOn(hm, 1, 5);
          assert.ok(d);
          assert.deepEqual(
            { verdict: d[0]?.verdict, decidedBy: d[0]?.decidedBy, rule: d[0]?.rule },
            { verdict: "deny", decidedBy: "failsafe", rule: "failsafe" },
          );
          assert.ok(
            d.slice(1).every((x) => x.decidedBy === "hm-vm" && x.verdict === "deny"),
            JSON.stringify(d),
          );
          // No later verdict comes from the engine that failed (the one the first request went to):
          // only from its restarted successor. (When the first decision returns, the successor may
          // be up already: its generation then is not the failed one's.)
          const failedGeneration = d[0]?.sentToGeneration ?? Number.NaN;
          assert.ok(
            d.slice(1).every((x) => x.generation > failedGeneration),
            JSON.stringify(d.map((x) => [x.decidedBy, x.sentToGeneration, x.generation])),
          );
          const s = hm.status();
          assert.ok(s.restarts >= 1, "restarted");
          assert.match(s.faults[0]?.reason ?? "", new RegExp(`^(${reason})$`));
          assert.equal(s.failed, false);
          // Nothing left in flight: every request settled exactly once.
          const ch = hm.region.channel(0);
          assert.equal(ch.settled, ch.published);
          assert.equal(ch.published, 5n);
        });
      });
    }

    it("loses no request and doubles none when the engine crashes with two guests' requests in flight", async () => {
      // A deadline long enough that the other guest's request in flight meets the crash (re-sent to the
      // new engine), not its own deadline, even on a loaded host.
      const deadline = scaled(1000);
      await withHealth(
        engine,
        { mode: C.INJECT_CRASH, at: 37, slowUs: 0 },
        2,
        async (hm) => {
          const all = await decideOn(hm, 2, 60);
          const flat = all.flat();
          assert.equal(flat.length, 120);
          const failsafe = flat.filter((x) => x.decidedBy === "failsafe");
          assert.equal(
            failsafe.length,
            1,
            `only the request it died on fails safe: ${failsafe.map((x) => x.reason).join(" | ")}; restarts: ${hm
              .status()
              .faults.map((f) => `${f.reason}: ${f.detail}`)
              .join(" | ")}`,
          );
          assert.ok(flat.every((x) => x.verdict === "deny"));
          assert.equal(hm.status().restarts, 1);
          for (let g = 0; g < 2; g++) {
            const ch = hm.region.channel(g);
            assert.equal(ch.published, 60n);
            assert.equal(ch.settled, 60n);
          }
          // The engine answered every request but the poisoned one (re-sent ones count once more at most).
          assert.ok(hm.status().requests >= 119, `${hm.status().requests} answered`);
        },
        undefined,
        deadline,
      );
    });

    it("hot reload: answers switch to the new policy mid-run, none lost or failed safe", async () => {
      const allow = compilePolicy(
        {
          name: "allow-text",
          defaults: FAILSAFE_DEFAULTS,
          rules: [{ name: "patching-window", kinds: ["protected-write"], verdict: "allow", reason: "maintenance" }],
        },
        regions,
      );
      await withHealth(engine, undefined, 1, async (hm) => {
        const mailbox = new PolicyMailbox();
        const gate = new SharedArrayBuffer(4);
        const [d] = await decideOn(hm, 1, 20, { pauseAfter: 10, gate, mailbox: mailbox.buffer }, () => {
          // As the runner does: the vCPU thread's mailbox first, then the health VM's table.
          mailbox.post(allow);
          hm.installRules(0, allow.table);
          Atomics.store(new Int32Array(gate), 0, 1);
          Atomics.notify(new Int32Array(gate), 0);
        });
        assert.ok(d);
        assert.ok(
          d.every((x) => x.decidedBy === "hm-vm"),
          JSON.stringify(d),
        );
        assert.deepEqual(
          d.map((x) => x.verdict),
          [...Array(10).fill("deny"), ...Array(10).fill("allow")],
        );
        assert.equal(d[10]?.rule, "patching-window");
        assert.equal(hm.status().restarts, 0);
      });
    });

    it("gives up after the restart limit: every decision fails safe at once", async () => {
      await withHealth(
        engine,
        { mode: C.INJECT_CRASH, at: 1, slowUs: 0 },
        1,
        async (hm) => {
          const [d] = await decideOn(hm, 1, 3);
          assert.ok(
            d?.every((x) => x.decidedBy === "failsafe" && x.verdict === "deny"),
            JSON.stringify(d),
          );
          assert.equal(hm.status().failed, true);
        },
        0,
      );
    });
  });

// Option checking, with the hosted engine: not repeated where only the health VM is tested.
if (ENGINE_FILTER !== "vm")
  describe("health VM answer deadline", () => {
    for (const timeoutMs of [0, -5, 1.5, 60_001])
      it(`rejects ${timeoutMs} ms, naming the field`, async () => {
        const { backend, close } = HOSTED_ENGINE.make();
        try {
          await assert.rejects(HealthManager.start({ backend, nguests: 1, timeoutMs }), (e: Error) => {
            assert.match(e.message, /^timeoutMs: .*1\.\.60000 ms/);
            return true;
          });
        } finally {
          close();
        }
      });
  });
