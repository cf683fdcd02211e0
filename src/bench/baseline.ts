/**
 * The bare-KVM baseline (bench/baseline.c, built to bench/out/baseline): runs
 * the same gv-kernel benchmark guest on plain ioctls and resumes every exit
 * at once. This module starts it and reads what it prints.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { GuardvisorError } from "../errors.js";
import { packageRoot } from "../kvm/native.js";

export function baselinePath(): string {
  return join(packageRoot(), "bench", "out", "baseline");
}

/** What the baseline prints on stdout (see bench/baseline.c). */
export interface BaselineHost {
  /** Exits Guardvisor would turn into events: MMIO writes, breakpoint hits. */
  exits: number;
  /** KVM_RUN round trip (resume to exit) of those exits, host clock. */
  p50Us: number;
  p99Us: number;
  wallUs: number;
  exitCode: number;
  tscKhz: number;
  totalExits: number;
}

export interface BaselineRun {
  host: BaselineHost;
  /** Guest serial lines. */
  serial: string[];
}

export interface BaselineOptions {
  kernelPath: string;
  cmdline: string;
  memMiB: number;
  /** Hardware breakpoint address (the guest's exception entry). */
  breakAt?: bigint;
  timeoutSec: number;
  kvmPath?: string;
  path?: string;
}

const FIELDS = ["exits", "p50Us", "p99Us", "wallUs", "exitCode", "tscKhz", "totalExits"] as const;

/** Parse and check the baseline's JSON line. */
export function parseBaselineOutput(stdout: string): BaselineHost {
  const line = stdout.trim().split("\n").at(-1) ?? "";
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw new GuardvisorError("INTERNAL", `the baseline printed no JSON result (${JSON.stringify(line.slice(0, 80))})`);
  }
  if (typeof v !== "object" || v === null)
    throw new GuardvisorError("INTERNAL", "the baseline result is not an object");
  const o = v as Record<string, unknown>;
  for (const f of FIELDS) {
    if (typeof o[f] !== "number" || !Number.isFinite(o[f])) {
      throw new GuardvisorError("INTERNAL", `the baseline result has no number ${f}`);
    }
  }
  return Object.fromEntries(FIELDS.map((f) => [f, o[f] as number])) as unknown as BaselineHost;
}

/** The baseline's own error line, without its prefix. */
function errorLine(stderr: string): string | undefined {
  const line = stderr.split("\n").find((l) => l.startsWith("baseline: error: "));
  return line?.slice("baseline: error: ".length);
}

/** Run the baseline once; its exit codes become GuardvisorErrors of the matching kind. */
export function runBaseline(o: BaselineOptions): Promise<BaselineRun> {
  const path = o.path ?? baselinePath();
  if (!existsSync(path)) {
    return Promise.reject(new GuardvisorError("IO", `${path} is missing: build it with 'npm run build'`));
  }
  const args = ["--cmdline", o.cmdline, "--mem", String(o.memMiB), "--timeout", String(o.timeoutSec)];
  if (o.breakAt !== undefined) args.push("--break", `0x${o.breakAt.toString(16)}`);
  if (o.kvmPath) args.push("--kvm", o.kvmPath);
  args.push(o.kernelPath);
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("latin1").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding("latin1").on("data", (d: string) => {
      if (stderr.length < 1 << 20) stderr += d;
    });
    child.on("error", (e) => reject(new GuardvisorError("IO", `cannot run ${path}: ${e.message}`)));
    child.on("close", (code, signal) => {
      const why = errorLine(stderr) ?? (signal ? `killed by ${signal}` : `exit code ${code}`);
      const serial = stderr.split("\n").filter((l) => l.length > 0 && !l.startsWith("baseline: error: "));
      switch (code) {
        case 0:
          try {
            resolve({ host: parseBaselineOutput(stdout), serial });
          } catch (e) {
            reject(e);
          }
          return;
        case 2:
          reject(new GuardvisorError("CONFIG_INVALID", `baseline: ${why}`));
          return;
        case 3:
          // The message already says "KVM is unavailable: ...".
          reject(new GuardvisorError("KVM_UNAVAILABLE", why));
          return;
        case 1: {
          const last = serial.at(-1);
          reject(
            new GuardvisorError(
              "GUEST_FAULT",
              `the baseline run failed: ${why}${last ? ` (last output: ${last})` : ""}`,
            ),
          );
          return;
        }
        default:
          reject(new GuardvisorError("INTERNAL", `the baseline failed: ${why}`));
      }
    });
  });
}
