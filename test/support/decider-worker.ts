/**
 * Test support: a stand-in for a guest's vCPU thread. It runs the real
 * hm-vm decider on its own thread (deciders block while they wait) over
 * `count` generated contexts and reports every decision.
 */
import { parentPort, workerData } from "node:worker_threads";
import { createHmVmDecider } from "../../src/decide/hm-vm-decider.js";
import type { CompiledPolicy } from "../../src/decide/policy.js";
import { PolicyMailbox } from "../../src/decide/policy-mailbox.js";
import { emptyContext } from "../../src/model/context.js";
import type { DeciderInit } from "../../src/vmm/vcpu-protocol.js";

export interface DeciderWorkerData {
  decider: Extract<DeciderInit, { kind: "hm-vm" }>;
  policy: CompiledPolicy;
  count: number;
  /** Hot reload: after this many decisions, post "paused" and wait until gate[0] is set. */
  pauseAfter?: number;
  gate?: SharedArrayBuffer;
  mailbox?: SharedArrayBuffer;
}

export interface Decision {
  n: number;
  verdict: string;
  decidedBy: string;
  rule: string;
  reason: string;
  us: number;
  /** The health VM's generation (launch number) when the decision returned. */
  generation: number;
  /** Its generation when the request was made (the instance it went to). */
  sentToGeneration: number;
}

const d = workerData as DeciderWorkerData;
const port = parentPort;
if (port) {
  const mailbox = d.mailbox ? new PolicyMailbox(d.mailbox) : undefined;
  // Reloads are taken only when an answer names an unknown policy: the race a vCPU thread can meet.
  const { decider, control } = createHmVmDecider(
    d.decider,
    d.policy,
    (fault) => port.postMessage({ type: "fault", fault }),
    () => mailbox?.take(),
  );
  const out: Decision[] = [];
  for (let n = 1; n <= d.count; n++) {
    if (n - 1 === d.pauseAfter && d.gate) {
      const gate = new Int32Array(d.gate);
      port.postMessage({ type: "paused" });
      while (Atomics.load(gate, 0) === 0) Atomics.wait(gate, 0, 0, 1000);
    }
    const c = emptyContext("protected-write");
    c.seq = n;
    c.regionId = 1;
    c.gpa = 0x100000 + n;
    const sentToGeneration = control.generation;
    const t = process.hrtime.bigint();
    const r = decider.decide(c);
    out.push({
      n,
      verdict: r.verdict,
      decidedBy: r.decidedBy,
      rule: r.rule,
      reason: r.reason,
      us: Number(process.hrtime.bigint() - t) / 1e3,
      generation: control.generation,
      sentToGeneration,
    });
  }
  port.postMessage({ type: "done", decisions: out });
}
