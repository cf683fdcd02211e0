/**
 * Test support: a stand-in for a guest's vCPU thread. It runs the real
 * hm-vm decider on its own thread (deciders block while they wait) over
 * `count` generated contexts and reports every decision.
 */
import { parentPort, workerData } from "node:worker_threads";
import { HmVmDecider } from "../../src/decide/hm-vm-decider.js";
import type { CompiledPolicy } from "../../src/decide/policy.js";
import { PolicyMailbox } from "../../src/decide/policy-mailbox.js";
import { acceptedPolicyOf } from "../../src/decide/rule-table.js";
import { IdcHostCounters, IdcRegion } from "../../src/idc/channel.js";
import { HmControl } from "../../src/idc/hm-control.js";
import { GuestMemory } from "../../src/kvm/guest-memory.js";
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
}

const d = workerData as DeciderWorkerData;
const port = parentPort;
if (port) {
  const mem = GuestMemory.attach(d.decider.idc.memory);
  const region = new IdcRegion(
    mem.bytes.buffer as ArrayBuffer,
    d.decider.idc.layout,
    new IdcHostCounters(d.decider.idc.counters),
  );
  const mailbox = d.mailbox ? new PolicyMailbox(d.mailbox) : undefined;
  const control = new HmControl(d.decider.idc.control);
  // Reloads are taken only when an answer names an unknown policy: the race a vCPU thread can meet.
  const decider: HmVmDecider = new HmVmDecider(
    d.policy,
    region.channel(d.decider.guest, acceptedPolicyOf(d.policy.table)),
    control,
    {
      timeoutMs: d.decider.timeoutMs,
      spinUs: d.decider.spinUs,
      refresh: () => {
        const p = mailbox?.take();
        if (p) decider.reload(p);
      },
    },
    (fault) => port.postMessage({ type: "fault", fault }),
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
    });
  }
  port.postMessage({ type: "done", decisions: out });
}
