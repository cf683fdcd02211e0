/** The diagnostics logger: JSON lines, level from GUARDVISOR_LOG_LEVEL, quiet by default. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { createLogger, DEFAULT_LOG_LEVEL, LOG_LEVEL_ENV } from "../../src/log.js";

function capture() {
  const lines: Record<string, unknown>[] = [];
  return { lines, destination: { write: (s: string) => lines.push(JSON.parse(s)) } };
}

describe("log", () => {
  it("writes JSON lines with level, time, name and component; warn by default", () => {
    const { lines, destination } = capture();
    const saved = process.env[LOG_LEVEL_ENV];
    delete process.env[LOG_LEVEL_ENV];
    try {
      const log = createLogger({ destination });
      assert.equal(log.level, DEFAULT_LOG_LEVEL);
      const health = log.child({ component: "health" });
      health.info("not shown at warn");
      health.warn({ generation: 2 }, "restarted");
      assert.equal(lines.length, 1);
      const [l] = lines;
      assert.equal(l?.msg, "restarted");
      assert.equal(l?.level, 40);
      assert.equal(l?.name, "guardvisor");
      assert.equal(l?.component, "health");
      assert.equal(l?.generation, 2);
      assert.equal(l?.pid, process.pid);
      assert.match(String(l?.time), /^\d{4}-\d\d-\d\dT/);
    } finally {
      if (saved !== undefined) process.env[LOG_LEVEL_ENV] = saved;
    }
  });

  it("takes its level from the option or the environment; an unknown level warns once", () => {
    const { lines, destination } = capture();
    assert.equal(createLogger({ level: "DEBUG", destination }).level, "debug");
    assert.equal(createLogger({ level: "silent", destination }).level, "silent");
    const bad = createLogger({ level: "loud", destination });
    assert.equal(bad.level, "warn");
    assert.equal(lines.length, 1);
    assert.match(String(lines[0]?.msg), /GUARDVISOR_LOG_LEVEL: unknown level, using warn/);
  });

  it("the process logger writes to stderr, never stdout", () => {
    const mod = fileURLToPath(new URL("../../src/log.js", import.meta.url));
    const code = `const { log, logFor } = await import(${JSON.stringify(mod)}); log.info("one"); logFor("metrics").debug("two");`;
    const run = (level: string | undefined) =>
      spawnSync(process.execPath, ["--input-type=module", "-e", code], {
        encoding: "utf8",
        env: { ...process.env, [LOG_LEVEL_ENV]: level },
      });
    const quiet = run(undefined);
    assert.equal(quiet.status, 0, quiet.stderr);
    assert.equal(quiet.stdout, "");
    assert.equal(quiet.stderr, "");
    const loud = run("debug");
    assert.equal(loud.stdout, "");
    const msgs = loud.stderr
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      msgs.map((m) => [m.msg, m.component]),
      [
        ["one", undefined],
        ["two", "metrics"],
      ],
    );
  });
});
