/**
 * The IDC round trip at native speed: a request published on the real IDC
 * ring, answered by the health-management engine running as a host process
 * (guest/out/hm-host: the health VM's engine, the same C source), the answer
 * validated. Timed around the real `hm-vm` decider's decide(): submit (the
 * context record encoded into the request slot), the doorbell, polling,
 * validation of the answer, settling the request and naming its rule.
 */
import type { DecisionResult } from "../decide/decider.js";
import { createHmVmDecider } from "../decide/hm-vm-decider.js";
import type { CompiledPolicy } from "../decide/policy.js";
import { GuardvisorError } from "../errors.js";
import { ProcessEngineBackend } from "../health/backends.js";
import { HealthManager } from "../health/health-manager.js";
import type { InjectSpec } from "../idc/channel.js";
import type { ContextRecord } from "../model/context.js";
import type { DeciderInit } from "../vmm/vcpu-protocol.js";
import { Samples } from "./stats.js";

export interface IdcRoundTrips {
  samples: Samples;
  decidedBy: Record<DecisionResult["decidedBy"], number>;
  verdicts: Record<string, number>;
  /** Requests the engine says it answered. */
  engineAnswered: number;
}

export interface IdcBenchOptions {
  samples: number;
  warmup: number;
  policy: CompiledPolicy;
  /** The request: a context record as the dispatcher captured it. */
  context: ContextRecord;
  /** Make the engine misbehave (the refusal of a run with fail-safe verdicts is tested with it). */
  inject?: InjectSpec;
  /** The hosted engine binary (default guest/out/hm-host). */
  enginePath?: string;
}

/** Round trips in batches; the event loop runs between batches (the health manager's watchdog lives there). */
const BATCH = 512;

export async function idcRoundTrips(o: IdcBenchOptions): Promise<IdcRoundTrips> {
  const hm = await HealthManager.start({
    backend: new ProcessEngineBackend(o.enginePath),
    nguests: 1,
    inject: o.inject,
  });
  try {
    hm.installRules(0, o.policy.table);
    const init = hm.deciderFor(0) as Extract<DeciderInit, { kind: "hm-vm" }>;
    const { decider } = createHmVmDecider(init, o.policy, (f) => hm.reportFault(f));
    const samples = new Samples();
    const decidedBy: IdcRoundTrips["decidedBy"] = { vmm: 0, "hm-vm": 0, failsafe: 0 };
    const verdicts: Record<string, number> = {};
    const total = o.warmup + o.samples;
    for (let i = 0; i < total; ) {
      for (const end = Math.min(total, i + BATCH); i < end; i++) {
        const t0 = process.hrtime.bigint();
        const d = decider.decide(o.context);
        const us = Number(process.hrtime.bigint() - t0) / 1000;
        decidedBy[d.decidedBy]++;
        verdicts[d.verdict] = (verdicts[d.verdict] ?? 0) + 1;
        if (d.decidedBy === "failsafe") {
          // A fail-safe verdict is no round trip: the run is not a measurement (and the engine is being replaced).
          throw new GuardvisorError("GUEST_FAULT", `IDC round trip ${i + 1}: fail-safe verdict (${d.reason})`);
        }
        if (i >= o.warmup) samples.push(us);
      }
      await new Promise((r) => setImmediate(r));
    }
    return { samples, decidedBy, verdicts, engineAnswered: hm.status().requests };
  } finally {
    await hm.stop();
  }
}
