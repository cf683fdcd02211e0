/**
 * What the VM owner and a vCPU worker say to each other: the worker's start
 * data, its messages, and the shared control word.
 */
import type { HmFault, HmVmDeciderInit } from "../decide/hm-vm-decider.js";
import type { CompiledPolicy } from "../decide/policy.js";
import type { IdcAttach } from "../idc/attach.js";
import type { GuestMemoryHandle } from "../kvm/guest-memory.js";
import type { VcpuHandle } from "../kvm/kvm.js";
import type { ProtectedRegion } from "../model/regions.js";
import type { CapturedEvent, DispatchStats, GuestReport, StopOutcome } from "./dispatcher.js";
import type { VirtualRange } from "./paging-seal.js";

/** Control word values (Int32Array slot CTRL_CMD of the shared control buffer). */
export const CMD_PAUSE = 0;
export const CMD_RUN = 1;
export const CMD_STOP = 2;
/** The watchdog saw no progress: leave KVM_RUN and report a hang. */
export const CMD_HANG = 3;
export const CTRL_CMD = 0;
/** Bumped by the worker on every exit but a kick's (the watchdog's sign of life). */
export const CTRL_PROGRESS = 1;
/** 1 while the worker is inside KVM_RUN (a decider waiting is not a hang). */
export const CTRL_IN_RUN = 2;
/** The exit count the watchdog saw when it asked for CMD_HANG (progress since then: not a hang). */
export const CTRL_HANG_AT = 3;
export const CTRL_SLOTS = 4;

/** How a worker's events are decided. */
export type DeciderInit = { kind: "vmm" } | ({ kind: "hm-vm" } & HmVmDeciderInit);

export interface VcpuWorkerInit {
  vmId: number;
  vcpu: VcpuHandle;
  memory: GuestMemoryHandle;
  regions: ProtectedRegion[];
  /** The protected regions at their kernel virtual addresses. */
  protectedVirtual?: VirtualRange[];
  policy: CompiledPolicy;
  decider: DeciderInit;
  /** Guest-virtual address of the common exception entry: a hardware breakpoint goes there. */
  exceptionEntry?: bigint;
  /** Hot reload: where the owner posts a newly compiled policy (src/decide/policy-mailbox.ts). */
  policyMailbox?: SharedArrayBuffer;
  /** MSRs the VM's MSR filter sends to the VMM on write. */
  protectedMsrs?: number[];
  /** Events the guest had in earlier incarnations: this VM numbers on from there. */
  firstSeq?: number;
  /** Set for the health VM: its vCPU serves the IDC doorbell. */
  hmService?: IdcAttach;
  control: SharedArrayBuffer;
  /** The event ring (event-ring.ts), made by the owner. */
  events: SharedArrayBuffer;
}

/** A worker armed write protection while the guest ran (a Linux guest's seal, at its first ring-3 exit). */
export interface ProtectionArmed {
  /** Exits before the one that armed it. */
  exits: number;
  /** Host wall-clock time, ms since the epoch. */
  timeMs: number;
  /** The guest's privilege level and RIP at that exit. */
  cpl: number;
  /** What armed it (Linux guests): an exit found ring 3, or the first system call. */
  trigger?: "ring3" | "syscall";
  rip: bigint;
  /** Bytes of the protected ranges, and of the read-only pages over them. */
  protectedBytes: number;
  readOnlyBytes: number;
  /** The memory slots now backing guest RAM. */
  slots: { gpa: number; size: number; readonly: boolean }[];
  /** SHA-256 of each protected range at that moment, in range order. */
  hashes: string[];
  /** Microseconds the arming took (hashing, re-slotting). */
  armUs: number;
}

export type WorkerMessage =
  | { type: "armed"; armed: ProtectionArmed }
  | { type: "ready"; tid: number }
  | { type: "serial"; line: string }
  /** An event that did not go through the event ring (event-ring.ts): it was full, or the event too big. */
  | { type: "event"; event: CapturedEvent }
  /** The event ring's doorbell: events were published while the owner may have been idle. */
  | { type: "events" }
  | {
      type: "stopped";
      outcome: StopOutcome | "stopped";
      code?: number;
      detail: string;
      /** The gv-kernel worker's dispatch statistics. */
      stats?: DispatchStats;
      /** Counters of a worker with no ExitDispatcher (a Linux guest's: exits by kind, device counts). */
      counters?: Record<string, number>;
    }
  | { type: "hm-fault"; fault: HmFault }
  /** A `pause` verdict parked the vCPU (CMD_PAUSE): the owner resumes it with CMD_RUN. */
  | { type: "paused"; detail: string }
  | { type: "guest-report"; report: GuestReport }
  | { type: "error"; code: string; message: string };
