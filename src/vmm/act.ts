/**
 * The act layer: what carrying out a verdict does, for each kind of event.
 * One table (event kind × verdict → effect) that every exit handler reads,
 * so a verdict means the same thing wherever it is applied, and
 * docs/policy.md's table is checked against it (test/unit/act.test.ts).
 */
import { EVENT_KINDS, type EventKind, VERDICTS, type Verdict } from "../abi/guest-abi.js";

/** What becomes of the VM after the event. */
export type VmFate = "runs" | "paused" | "halted" | "restarted" | "crashed";

export interface Effect {
  /** Carry out what the guest attempted (the write, the MSR write). */
  perform: boolean;
  /** Refuse it with a #GP at the attempting instruction. */
  fault: boolean;
  /** The guest's exception module is told to end the faulting task (HC_EXCEPTION_VERDICT). */
  endTask: boolean;
  /** Put the sealed object back (integrity events). */
  restore: boolean;
  vm: VmFate;
  /** One line for the docs' table. */
  text: string;
}

const fx = (text: string, e: Partial<Omit<Effect, "text">> = {}): Effect => ({
  perform: false,
  fault: false,
  endTask: false,
  restore: false,
  vm: "runs",
  ...e,
  text,
});

const ENDS = {
  restart: fx("the guest VM is restarted", { vm: "restarted" }),
  halt: fx("the guest VM is stopped", { vm: "halted" }),
} as const;

/** The table. Every kind has every verdict: a policy may give any verdict to any kind. */
export const EFFECTS: Readonly<Record<EventKind, Readonly<Record<Verdict, Effect>>>> = {
  "protected-write": {
    allow: fx("the VMM performs the write", { perform: true }),
    log: fx("the VMM performs the write", { perform: true }),
    deny: fx("the write is dropped; the guest goes on after the instruction"),
    "deny-fault": fx("the write is dropped; #GP at the writing instruction", { fault: true }),
    "kill-task": fx("the write is dropped; #GP at the writing instruction, and the task is ended", {
      fault: true,
      endTask: true,
    }),
    pause: fx("the write is dropped; the guest VM is paused until resumed", { vm: "paused" }),
    ...ENDS,
  },
  "msr-write": {
    allow: fx("the VMM performs the MSR write", { perform: true }),
    log: fx("the VMM performs the MSR write", { perform: true }),
    deny: fx("the MSR write is dropped; the guest believes it wrote"),
    "deny-fault": fx("the MSR write is refused: #GP at the WRMSR", { fault: true }),
    "kill-task": fx("the MSR write is refused: #GP at the WRMSR, and the task is ended", {
      fault: true,
      endTask: true,
    }),
    pause: fx("the MSR write is dropped; the guest VM is paused until resumed", { vm: "paused" }),
    ...ENDS,
  },
  "cpu-exception": {
    allow: fx("the guest's exception module handles it by its own rule"),
    log: fx("the guest's exception module handles it by its own rule"),
    deny: fx("the guest's exception module handles it by its own rule"),
    "deny-fault": fx("the guest's exception module handles it by its own rule"),
    "kill-task": fx("the guest's exception module ends the faulting task, even in kernel mode", { endTask: true }),
    pause: fx("the guest VM is paused at the exception entry until resumed", { vm: "paused" }),
    ...ENDS,
  },
  integrity: {
    allow: fx("the change is kept"),
    log: fx("the change is kept"),
    deny: fx("the sealed value is put back", { restore: true }),
    "deny-fault": fx("the sealed value is put back (found after the fact: no instruction to fault)", {
      restore: true,
    }),
    "kill-task": fx("the sealed value is put back (found after the fact: no task to name)", { restore: true }),
    pause: fx("the sealed value is put back; the guest VM is paused until resumed", { restore: true, vm: "paused" }),
    ...ENDS,
  },
  crash: {
    allow: fx("the guest VM ends as crashed", { vm: "crashed" }),
    log: fx("the guest VM ends as crashed", { vm: "crashed" }),
    deny: fx("the guest VM ends as crashed", { vm: "crashed" }),
    "deny-fault": fx("the guest VM ends as crashed", { vm: "crashed" }),
    "kill-task": fx("the guest VM ends as crashed", { vm: "crashed" }),
    pause: fx("the guest VM ends as crashed (a dead vCPU cannot be resumed)", { vm: "crashed" }),
    restart: ENDS.restart,
    halt: fx("the guest VM ends as crashed", { vm: "crashed" }),
  },
  hang: {
    allow: fx("the guest VM is stopped", { vm: "halted" }),
    log: fx("the guest VM is stopped", { vm: "halted" }),
    deny: fx("the guest VM is stopped", { vm: "halted" }),
    "deny-fault": fx("the guest VM is stopped", { vm: "halted" }),
    "kill-task": fx("the guest VM is stopped", { vm: "halted" }),
    pause: fx("the guest VM is paused until resumed (the watchdog looks again after)", { vm: "paused" }),
    ...ENDS,
  },
};

export function effectOf(kind: EventKind, verdict: Verdict): Effect {
  return EFFECTS[kind][verdict];
}

/** The table as docs/policy.md shows it: one markdown table per event kind. */
export function effectsMarkdown(): string {
  const verdicts = Object.keys(VERDICTS) as Verdict[];
  return (Object.keys(EVENT_KINDS) as EventKind[])
    .map((k) =>
      [
        `#### ${k}`,
        "| verdict | effect |",
        "| --- | --- |",
        ...verdicts.map((v) => `| \`${v}\` | ${EFFECTS[k][v].text} |`),
      ].join("\n"),
    )
    .join("\n\n");
}
