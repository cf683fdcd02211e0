/** Test support: run the guardvisor CLI as a user would. */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { packageRoot } from "../../src/kvm/native.js";
import { scaled } from "../../src/time-scale.js";

export interface CliResult {
  status: number | null;
  /** The signal that ended it (SIGTERM: it ran past its time limit). */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run the CLI; `timeoutMs` (default 2 min) is scaled by GV_TIME_SCALE. */
export function cli(args: string[], timeoutMs = 120_000): CliResult {
  const r = spawnSync(process.execPath, [join(packageRoot(), "bin", "guardvisor.js"), ...args], {
    encoding: "utf8",
    timeout: scaled(timeoutMs),
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}
