/**
 * The scenarios built into gv-kernel, chosen with `scenario=NAME` on the boot
 * command line, and what the host expects of each under the default policy.
 */
import type { EventKind, Verdict } from "./abi/guest-abi.js";
import { GuardvisorError } from "./errors.js";

export interface ExpectedEvents {
  kind: EventKind;
  region?: string;
  /** CPU exception vector (cpu-exception). */
  vector?: number;
  /** The sealed object that changed (integrity: cr0, cr4, idtr, gdtr, paging, cr3). */
  object?: string;
  verdict: Verdict;
  min: number;
  /** At most this many (a store decided once per instruction: exactly one). */
  max?: number;
  /** A GV-RESULT key holding the writing instruction's address (hex): every such event must name it. */
  writer?: string;
}

export interface Scenario {
  name: string;
  description: string;
  /** key=value pairs the GV-RESULT line must carry. */
  result: Record<string, string>;
  /** Events the run must produce; an empty list means "no events at all". */
  events: ExpectedEvents[];
  /** Restarts of the guest VM before it completes (default 0). */
  restarts?: number;
  /** The policy file (under the package root) this scenario runs with when none is given. */
  policy?: string;
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
  {
    name: "user-fault",
    description:
      "ring-3 tasks write kernel memory (#PF) and use a denied port (#GP): each task ended, the kernel goes on",
    result: { tasks: "3", pf: "1", gp: "1", survivor: "1", intact: "1" },
    events: [
      { kind: "cpu-exception", vector: 14, verdict: "log", min: 1 },
      { kind: "cpu-exception", vector: 13, verdict: "log", min: 1 },
    ],
  },
  {
    name: "div-zero",
    description: "a ring-3 task divides by zero (#DE): the task is ended, the kernel goes on",
    result: { faulted: "1", vector: "0" },
    events: [{ kind: "cpu-exception", vector: 0, verdict: "log", min: 1 }],
  },
  {
    name: "null-deref",
    description: "a kernel module dereferences null: kernel panic, the VM is restarted and completes",
    result: { restarted: "1" },
    events: [
      { kind: "cpu-exception", vector: 14, verdict: "log", min: 1 },
      { kind: "crash", verdict: "restart", min: 1 },
    ],
    restarts: 1,
  },
  {
    name: "triple-fault",
    description: "the kernel loads an empty IDT and faults: triple fault, the VM is restarted and completes",
    result: { restarted: "1" },
    events: [{ kind: "crash", verdict: "restart", min: 1 }],
    restarts: 1,
  },
  {
    name: "hang",
    description: "the kernel spins with interrupts off: the watchdog restarts the VM, which completes",
    result: { restarted: "1" },
    events: [{ kind: "hang", verdict: "restart", min: 1 }],
    restarts: 1,
  },
  {
    name: "driver-exploit",
    description:
      "ring-3 tasks make a buggy driver patch kernel code and dereference null in kernel mode: kill-task ends each task, the kernel goes on",
    result: { patcher: "killed", oopser: "killed", survivor: "exited", changed: "0" },
    events: [
      { kind: "protected-write", region: ".text", verdict: "kill-task", min: 1, max: 1 },
      { kind: "cpu-exception", vector: 13, verdict: "kill-task", min: 1, max: 1 }, // the #GP raised at the write
      { kind: "cpu-exception", vector: 14, verdict: "kill-task", min: 1, max: 1 },
    ],
    policy: "policies/driver-exploit.yaml",
  },
  {
    name: "legit-patch",
    description: "the kernel's sanctioned patch routine changes .text (allowed); another routine's write is denied",
    result: { patched: "1", ret: "2", rogue_changed: "0" },
    events: [
      { kind: "protected-write", region: ".text", verdict: "allow", min: 1 },
      { kind: "protected-write", region: ".text", verdict: "deny", min: 1 },
    ],
    policy: "policies/legit-patch.yaml",
  },
  {
    name: "allowlist-abuse",
    description:
      "a module calls the sanctioned patcher on other code and with an unlisted value, stosb-s the patch site, runs a remapped copy of the patcher: all denied",
    result: { call: "0", value: "0", stos: "0", remap: "0", legit: "1" },
    events: [
      // the call elsewhere, the unlisted value, the rep stosb (decided once), the remapped copy
      { kind: "protected-write", region: ".text", verdict: "deny", min: 4, max: 4 },
      { kind: "integrity", object: "paging", verdict: "deny", min: 1 },
      { kind: "protected-write", region: ".text", verdict: "allow", min: 1 },
    ],
    policy: "policies/legit-patch.yaml",
  },
  {
    name: "exception-storm",
    description: "a ring-3 task raises 10,000 #UD faults: all captured, folded into one event with a count",
    result: { faults: "10000", exited: "1" },
    events: [{ kind: "cpu-exception", vector: 6, verdict: "log", min: 10000 }],
  },
  {
    name: "lstar-hook",
    description: "after sealing, a module writes LSTAR and SYSENTER_EIP: refused with #GP, syscalls still work",
    result: { attempts: "2", refused: "2", lstar_intact: "1", uid: "1000" },
    events: [
      { kind: "msr-write", verdict: "deny-fault", min: 2 },
      { kind: "cpu-exception", vector: 13, verdict: "log", min: 2 },
    ],
  },
  {
    name: "idt-hook",
    description: "after sealing, a module overwrites the #PF gate of the IDT",
    result: { attempts: "1", changed: "0" },
    events: [{ kind: "protected-write", region: ".rodata", verdict: "deny", min: 1 }],
  },
  {
    name: "idtr-swap",
    description: "a module loads a rogue IDT with lidt: detected on the next exit, the VM is restarted",
    result: { restarted: "1" },
    events: [{ kind: "integrity", object: "idtr", verdict: "restart", min: 1 }],
    restarts: 1,
  },
  {
    name: "wp-bypass",
    description: "a module clears CR0.WP and patches kernel code: the write is denied, WP is set back",
    result: { attempts: "1", changed: "0", wp: "1" },
    events: [
      { kind: "integrity", object: "cr0", verdict: "deny", min: 1 },
      { kind: "protected-write", region: ".text", verdict: "deny", min: 1 },
    ],
  },
  {
    name: "alias-map",
    description: "a module maps kernel code at a second, writable address and patches it there",
    result: { attempts: "1", changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1 }],
  },
  {
    name: "pt-remap",
    description:
      "a module remaps kernel code to a writable copy (its page-table entry, its page directory, a new CR3): put back on the next exit",
    result: { attempts: "3", pte: "0", pde: "0", cr3: "0", ret: "0" },
    events: [
      { kind: "integrity", object: "paging", verdict: "deny", min: 2 }, // the PTE, then the PDE
      { kind: "integrity", object: "cr3", verdict: "deny", min: 1 },
    ],
  },
  {
    name: "store-rep-movsb",
    description: "a module copies 16 bytes into kernel code with cld; rep movsb",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-rep-stosq-df",
    description: "a module fills 3 qwords of kernel code downwards with std; rep stosq",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-lock-add",
    description: "a module increments a qword of kernel code with lock add",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-xchg",
    description: "a module swaps RAX with a qword of kernel code (xchg, implicitly locked)",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-bts",
    description: "a module sets a clear bit of kernel code with lock bts",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-cmpxchg",
    description: "a module overwrites a qword of kernel code with lock cmpxchg (RAX matches, so it would write)",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-movnti",
    description: "a module writes kernel code with the non-temporal movnti",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-push",
    description: "a module points RSP into .rodata and pushes a value there (interrupts off)",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".rodata", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-call",
    description: "a module points RSP into .rodata and makes a call: the return address is the write",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".rodata", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-movdqu",
    description: "a module writes 16 bytes of kernel code with the SSE store movdqu (unaligned)",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-movntdq",
    description: "a module writes 16 aligned bytes of kernel code with the non-temporal movntdq",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-fxsave",
    description: "a module saves its FPU/SSE state (512 bytes, fxsave) over kernel code",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-xsave",
    description: "a module turns XSAVE on and saves its x87/SSE/AVX state (832 bytes, xsave) over kernel code",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-vmovdqu-ymm",
    description: "a module turns AVX on and writes 32 bytes of kernel code with vmovdqu from a YMM register",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-cross-page",
    description: "a module writes 8 bytes of kernel code across a page boundary (two protected pages)",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
  },
  {
    name: "store-straddle",
    description: "a module writes 8 bytes starting 4 bytes below .text: only the last 4 are protected",
    result: { changed: "0" },
    events: [{ kind: "protected-write", region: ".text", verdict: "deny", min: 1, max: 1, writer: "writer" }],
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
