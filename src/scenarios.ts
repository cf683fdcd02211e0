/**
 * The scenarios built into gv-kernel, chosen with `scenario=NAME` on the boot
 * command line, and what the host expects of each under the default policy.
 */
import type { EventKind, Verdict } from "./abi/guest-abi.js";
import { GuardvisorError } from "./errors.js";

export interface ExpectedEvents {
  kind: EventKind;
  region?: string;
  verdict: Verdict;
  min: number;
}

export interface Scenario {
  name: string;
  description: string;
  /** key=value pairs the GV-RESULT line must carry. */
  result: Record<string, string>;
  /** Events the run must produce; an empty list means "no events at all". */
  events: ExpectedEvents[];
}

export const SCENARIOS: readonly Scenario[] = [
  {
    name: "benign",
    description: "ring-3 tasks compute and make syscalls; the kernel writes its own .data (no events)",
    result: { tasks: "3" },
    events: [],
  },
  {
    name: "text-patch",
    description: "a kernel module tries three times to overwrite a kernel function, then calls it",
    result: { attempts: "3", changed: "0", ret: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 3 }],
  },
  {
    name: "syscall-hook",
    description: "a kernel module overwrites a syscall-table entry in .rodata, then makes that syscall",
    result: { attempts: "1", hooked: "0", uid: "1000" },
    events: [{ kind: "protected-write", region: ".rodata", verdict: "deny", min: 1 }],
  },
];

export function findScenario(name: string): Scenario {
  const s = SCENARIOS.find((x) => x.name === name);
  if (!s) {
    throw new GuardvisorError(
      "SCENARIO_UNKNOWN",
      `unknown scenario '${name}' (known: ${SCENARIOS.map((x) => x.name).join(", ")})`,
    );
  }
  return s;
}

/** Parse `GV-RESULT scenario=NAME k=v ...` from serial lines (the last one wins). */
export function parseResultLine(lines: readonly string[]): Record<string, string> | undefined {
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i] ?? "";
    const at = line.indexOf("GV-RESULT ");
    if (at < 0) continue;
    const out: Record<string, string> = {};
    for (const tok of line
      .slice(at + 10)
      .trim()
      .split(/\s+/)) {
      const eq = tok.indexOf("=");
      if (eq > 0) out[tok.slice(0, eq)] = tok.slice(eq + 1);
    }
    return out;
  }
  return undefined;
}
