/** The run's control socket without KVM: a fake run behind the real server and client. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { answer, type ControlTarget, request, startControlServer } from "../../src/control/socket.js";

const dir = mkdtempSync(join(tmpdir(), "gv-control-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Two guests: guest0 paused by a verdict, guest1 running. */
function fakeRun(): ControlTarget & { resumed: number[] } {
  const state = ["paused", "running"] as ("running" | "paused" | "stopped")[];
  const resumed: number[] = [];
  return {
    resumed,
    guests: () =>
      state.map((s, g) => ({ guest: g, state: s, ...(s === "paused" ? { detail: "write: paused by verdict" } : {}) })),
    resume: (g) => {
      if (state[g] !== "paused") return false;
      state[g] = "running";
      resumed.push(g);
      return true;
    },
  };
}

describe("control socket", () => {
  it("answers guests and resume, and refuses what is not a request", () => {
    const run = fakeRun();
    assert.deepEqual(answer(run, '{"op":"guests"}'), {
      ok: true,
      guests: [
        { name: "guest0", state: "paused", detail: "write: paused by verdict" },
        { name: "guest1", state: "running" },
      ],
    });
    assert.deepEqual(answer(run, '{"op":"resume","guest":"guest1"}'), {
      ok: false,
      error: "guest1 is running, not paused",
    });
    assert.equal(answer(run, '{"op":"resume","guest":"guest7"}').ok, false);
    const r = answer(run, '{"op":"resume","guest":"guest0"}');
    assert.equal(r.ok, true);
    assert.deepEqual(run.resumed, [0]);
    for (const bad of [
      "nope",
      "[]",
      '{"op":"stop"}',
      '{"op":"resume"}',
      '{"op":"resume","guest":"../x"}',
      '{"op":"guests","x":1}',
    ]) {
      const a = answer(run, bad);
      assert.equal(a.ok, false, bad);
    }
  });

  it("serves the client over a Unix socket made for its owner only, and closes with a client still connected", async () => {
    const path = join(dir, "a.sock");
    const run = fakeRun();
    const server = await startControlServer(path, run);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const list = await request(path, { op: "guests" });
    assert.equal(list.ok && list.guests[0]?.state, "paused");
    assert.equal((await request(path, { op: "resume", guest: "guest0" })).ok, true);
    // A second run on the same path is refused while this one answers.
    await assert.rejects(startControlServer(path, run), /another run is listening/);
    const idle = createConnection(path); // an operator's connection left open
    await new Promise((res) => idle.once("connect", res));
    await server.close();
    await assert.rejects(request(path, { op: "guests" }, 1000), { code: "CONTROL_UNAVAILABLE" });
  });

  it("replaces a stale socket file, refuses any other file, and cuts an overlong request", async () => {
    const file = join(dir, "not-a-socket");
    writeFileSync(file, "x");
    await assert.rejects(startControlServer(file, fakeRun()), /--control: .* is not a socket/);
    const path = join(dir, "b.sock");
    const first = await startControlServer(path, fakeRun());
    await first.close(); // node removes the file; a crashed run would leave it
    const again = await startControlServer(path, fakeRun());
    const reply = await new Promise<string>((res) => {
      const s = createConnection(path, () => s.write("x".repeat(4096)));
      let buf = "";
      s.setEncoding("utf8");
      s.on("data", (d: string) => {
        buf += d;
      });
      s.on("close", () => res(buf));
    });
    assert.deepEqual(JSON.parse(reply), { ok: false, error: "request too long" });
    await again.close();
  });
});
