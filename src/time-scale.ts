/**
 * One time scale for every time limit. On real KVM it is 1. In the lab (the
 * emulated machine, 20-50x slower) `guardvisor lab` measures how much slower
 * it runs a calibration workload and exports the factor as GV_TIME_SCALE; the
 * run defaults (--timeout, --hm-timeout, --hang-timeout, the vCPU start and
 * health-VM boot limits) and the tests' time limits are multiplied by it.
 * Behaviour never depends on it: only how long Guardvisor waits.
 */
import { GuardvisorError } from "./errors.js";

export const TIME_SCALE_RANGE = { min: 1, max: 1000 } as const;

let cached: number | undefined;

/** GV_TIME_SCALE, validated (1..1000; unset or empty: 1). */
export function timeScale(): number {
  if (cached !== undefined) return cached;
  const raw = process.env.GV_TIME_SCALE;
  const v = raw === undefined || raw.trim() === "" ? 1 : Number(raw);
  if (!Number.isFinite(v) || v < TIME_SCALE_RANGE.min || v > TIME_SCALE_RANGE.max) {
    throw new GuardvisorError(
      "CONFIG_INVALID",
      `GV_TIME_SCALE: must be a number from ${TIME_SCALE_RANGE.min} to ${TIME_SCALE_RANGE.max}, got ${JSON.stringify(raw)}`,
    );
  }
  cached = v;
  return v;
}

/** A time limit in ms, scaled to this machine. */
export function scaled(ms: number): number {
  return Math.round(ms * timeScale());
}
