/** The vCPU loop without KVM: scripted exits, a fake dispatcher, the real control-word protocol. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { VcpuExit } from "../../src/kvm/exits.js";
import type { ExitAction } from "../../src/vmm/dispatcher.js";
import { runVcpuLoop, type VcpuLoopDeps } from "../../src/vmm/vcpu-loop.js";
import {
  CMD_HANG,
  CMD_PAUSE,
  CMD_RUN,
  CMD_STOP,
  CTRL_CMD,
  CTRL_HANG_AT,
  CTRL_IN_RUN,
  CTRL_PROGRESS,
  CTRL_SLOTS,
} from "../../src/vmm/vcpu-protocol.js";

const CONTINUE: ExitAction = { kind: "continue" };
const io: VcpuExit = { kind: "io-out", port: 0x3f8, size: 1, count: 1, data: new Uint8Array(1) };
const kick: VcpuExit = { kind: "interrupted" };

/** A loop over `exits`; `onRun(i)` runs before the i-th KVM_RUN returns (the owner acting meanwhile). */
function harness(exits: VcpuExit[], over: Partial<VcpuLoopDeps> = {}, onRun?: (i: number, ctrl: Int32Array) => void) {
  const ctrl = new Int32Array(new SharedArrayBuffer(CTRL_SLOTS * 4));
  ctrl[CTRL_CMD] = CMD_RUN;
  const seen: VcpuExit[] = [];
  let runs = 0;
  let cleared = 0;
  let reloads = 0;
  const deps: VcpuLoopDeps = {
    ctrl,
    runOnce: () => {
      assert.equal(Atomics.load(ctrl, CTRL_IN_RUN), 1, "in KVM_RUN while it runs");
      onRun?.(runs, ctrl);
      const e = exits[runs++];
      if (!e) throw new Error("ran past the script");
      return e;
    },
    clearImmediateExit: () => {
      cleared++;
    },
    beforeDispatch: () => {
      reloads++;
    },
    dispatch: (e) => {
      seen.push(e);
      return e.kind === "hlt" ? { kind: "stop", outcome: "halt", detail: "halted" } : CONTINUE;
    },
    onHang: () => ({ kind: "stop", outcome: "restart", detail: "hang: restart" }),
    ...over,
  };
  return {
    ctrl,
    deps,
    seen,
    counts: () => ({ runs, cleared, reloads, progress: Atomics.load(ctrl, CTRL_PROGRESS) }),
  };
}

describe("the vCPU loop", () => {
  it("dispatches every exit until the dispatcher stops it; kicks are not progress", () => {
    const h = harness([io, kick, io, { kind: "hlt" }]);
    const end = runVcpuLoop(h.deps);
    assert.deepEqual(end, { outcome: "halt", code: undefined, detail: "halted" });
    assert.equal(h.seen.length, 4);
    assert.deepEqual(h.counts(), { runs: 4, cleared: 1, reloads: 4, progress: 3 });
    assert.equal(Atomics.load(h.ctrl, CTRL_IN_RUN), 0);
  });

  it("stops when the owner says stop, between two runs", () => {
    const h = harness([io, io, io], {}, (i, ctrl) => {
      if (i === 1) Atomics.store(ctrl, CTRL_CMD, CMD_STOP);
    });
    assert.deepEqual(runVcpuLoop(h.deps), { outcome: "stopped", detail: "stopped by the VMM" });
    assert.equal(h.counts().runs, 2);
  });

  it("waits while paused, and runs when resumed", () => {
    let waits = 0;
    const h = harness([{ kind: "hlt" }], {
      waitWhile: (v) => {
        assert.equal(v, CMD_PAUSE);
        waits++;
        Atomics.store(h.ctrl, CTRL_CMD, CMD_RUN); // the owner resumes it
      },
    });
    Atomics.store(h.ctrl, CTRL_CMD, CMD_PAUSE);
    assert.equal(runVcpuLoop(h.deps).outcome, "halt");
    assert.equal(waits, 1);
    assert.equal(h.counts().runs, 1);
  });

  it("a pause verdict parks the loop and tells the owner; it runs on when resumed, and a stop asked first wins", () => {
    const paused: string[] = [];
    let waits = 0;
    const h = harness([io, io, { kind: "hlt" }], {
      dispatch: (e) =>
        e.kind === "hlt"
          ? { kind: "stop", outcome: "halt", detail: "halted" }
          : h.counts().runs === 1
            ? { kind: "pause", detail: "write: paused by verdict" }
            : CONTINUE,
      onPause: (detail) => paused.push(detail),
      waitWhile: (v) => {
        assert.equal(v, CMD_PAUSE);
        assert.equal(Atomics.load(h.ctrl, CTRL_IN_RUN), 0, "parked outside KVM_RUN: the watchdog sees no hang");
        waits++;
        Atomics.store(h.ctrl, CTRL_CMD, CMD_RUN); // the owner resumes it
      },
    });
    assert.equal(runVcpuLoop(h.deps).outcome, "halt");
    assert.deepEqual(paused, ["write: paused by verdict"]);
    assert.equal(waits, 1);
    assert.equal(h.counts().runs, 3);

    // The owner asked to stop while the exit was being dispatched: the pause does not undo the stop.
    const s = harness([io], {
      dispatch: () => {
        Atomics.store(s.ctrl, CTRL_CMD, CMD_STOP);
        return { kind: "pause", detail: "paused" };
      },
      onPause: () => assert.fail("a stopped loop is not paused"),
    });
    assert.equal(runVcpuLoop(s.deps).outcome, "stopped");
  });

  it("a hang only when a kick ended a run with no exit since the watchdog looked", () => {
    // The watchdog saw progress 1 and asked; the next run was kicked with no exit in between: a hang.
    const hung = harness([io, kick, io], {}, (i, ctrl) => {
      if (i === 1) {
        Atomics.store(ctrl, CTRL_HANG_AT, 1);
        Atomics.store(ctrl, CTRL_CMD, CMD_HANG);
      }
    });
    assert.deepEqual(runVcpuLoop(hung.deps), { outcome: "restart", code: undefined, detail: "hang: restart" });
    assert.equal(hung.counts().runs, 2);

    // The run the watchdog asked about ended in an exit (progress): not a hang, the loop goes on.
    const busy = harness([io, io, { kind: "hlt" }], {}, (i, ctrl) => {
      if (i === 1) {
        Atomics.store(ctrl, CTRL_HANG_AT, 1);
        Atomics.store(ctrl, CTRL_CMD, CMD_HANG);
      }
    });
    assert.equal(runVcpuLoop(busy.deps).outcome, "halt");
    assert.equal(Atomics.load(busy.ctrl, CTRL_CMD), CMD_RUN, "the question is answered");
  });
});
