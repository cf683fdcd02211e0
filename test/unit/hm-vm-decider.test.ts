/**
 * The hm-vm decider's own rules (src/decide/hm-vm-decider.ts), with no
 * engine: the IDC region in host memory and the health VM's control word
 * driven by the test.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { HmVmDecider } from "../../src/decide/hm-vm-decider.js";
import { compilePolicy, DEFAULT_POLICY } from "../../src/decide/policy.js";
import { acceptedPolicyOf } from "../../src/decide/rule-table.js";
import { IdcRegion } from "../../src/idc/channel.js";
import { HmControl } from "../../src/idc/hm-control.js";
import { idcLayout } from "../../src/idc/layout.js";
import { emptyContext } from "../../src/model/context.js";
import { makeRegions } from "../../src/model/regions.js";

const policy = compilePolicy(DEFAULT_POLICY, makeRegions([{ name: ".text", start: 0x100000, end: 0x101000 }], 1 << 24));

/** A control word whose doorbell runs `onRing` (what happens while the deciding thread is not looking). */
class ScriptedControl extends HmControl {
  onRing: () => void = () => {};
  override ring(): void {
    super.ring();
    this.onRing();
  }
}

function setup(timeoutMs: number) {
  const layout = idcLayout(1, 8);
  const region = new IdcRegion(new ArrayBuffer(layout.size), layout);
  region.initialize([policy.table]);
  const control = new ScriptedControl();
  control.markUp();
  const faults: string[] = [];
  const decider = new HmVmDecider(
    policy,
    region.channel(0, acceptedPolicyOf(policy.table)),
    control,
    { timeoutMs, spinUs: 50, restartWaitMs: timeoutMs },
    (f) => faults.push(f.reason),
  );
  return { region, control, decider, faults };
}

function write() {
  const c = emptyContext("protected-write");
  c.regionId = 1;
  c.gpa = 0x100010;
  return c;
}

describe("the hm-vm decider", () => {
  it("fails safe at once on a request the health VM died on, though it never saw it down", () => {
    const timeoutMs = 20_000;
    const { region, control, decider, faults } = setup(timeoutMs);
    // The health VM dies on the request just published and is restarted, all before the thread looks.
    control.onRing = () => {
      control.onRing = () => {};
      control.markDown({ guest: 0, seq: region.counters.published(0) });
      control.markUp();
    };
    const t0 = Date.now();
    const d = decider.decide(write());
    assert.equal(d.decidedBy, "failsafe");
    assert.equal(d.verdict, "deny");
    assert.match(d.reason, /died on this request/);
    assert.ok(Date.now() - t0 < timeoutMs / 4, `no wait for the answer deadline: ${Date.now() - t0} ms`);
    assert.deepEqual(faults, [], "a death is reported by whoever saw it, not by the decider");
    assert.equal(region.channel(0).settled, 1n, "the request is settled");
  });

  it("a poison recorded before the request was sent does not count against it", () => {
    const { region, control, decider } = setup(300);
    control.markDown({ guest: 0, seq: 1n });
    control.markUp();
    // The instance before died on a request numbered 1; the request about to go out is numbered 1 too.
    const c = region.channel(0);
    assert.equal(c.published, 0n);
    const first = decider.decide(write());
    assert.equal(first.decidedBy, "failsafe");
    assert.match(first.reason, /no answer in/, "it went to the live instance: no answer is a timeout, not a death");
  });
});
