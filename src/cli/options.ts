/** Option parsers and options shared by more than one command. */
import { InvalidArgumentError } from "commander";
import { HM_DEFAULTS, HM_TIMEOUT_RANGE } from "../health/health-manager.js";

/** A whole-number option, optionally within [min, max]; a bad value names the option. */
export function intOption(name: string, min?: number, max?: number) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${name} must be a whole number`);
    const n = Number(v);
    if ((min !== undefined && n < min) || (max !== undefined && n > max)) {
      throw new InvalidArgumentError(`${name} must be from ${min ?? 0} to ${max ?? Number.MAX_SAFE_INTEGER}`);
    }
    return n;
  };
}

/** `--hm-timeout <ms>`: the health VM's answer deadline (run and bench). */
export const HM_TIMEOUT_OPTION = [
  "--hm-timeout <ms>",
  `the health VM must answer a request within this long, or the verdict is fail-safe and it is restarted (${HM_TIMEOUT_RANGE.min}..${HM_TIMEOUT_RANGE.max})`,
  intOption("--hm-timeout", HM_TIMEOUT_RANGE.min, HM_TIMEOUT_RANGE.max),
  HM_DEFAULTS.timeoutMs,
] as const;
