/**
 * Guardvisor runs of the benchmark guest: one or more guests built like the
 * runner builds them (src/run/run-guests.ts: GuestVm with the default policy and hang
 * watchdog, the vmm decider or a shared health VM), run to their end, with every event's
 * latency kept as a number instead of a summary object (a storm makes
 * hundreds of thousands of events). A run whose events are not what the
 * scenario must produce, or that were decided fail-safe, is not a
 * measurement: it fails.
 */
import type { EventKind } from "../abi/guest-abi.js";
import type { DeciderName } from "../decide/decider.js";
import { DEFAULT_POLICY } from "../decide/policy.js";
import { GuardvisorError } from "../errors.js";
import type { HealthManager } from "../health/health-manager.js";
import type { Kvm } from "../kvm/kvm.js";
import { guestName } from "../names.js";
import { MIB } from "../vmm/boot.js";
import type { CapturedEvent } from "../vmm/dispatcher.js";
import { GuestVm } from "../vmm/guest-vm.js";
import { Samples } from "./stats.js";

/** What the benchmarks use of a health VM (HealthManager). */
export type BenchHealth = Pick<
  HealthManager,
  "deciderFor" | "installRules" | "reportFault" | "settled" | "status" | "stop"
>;

export interface GuestRunSpec {
  kvm: Kvm;
  kernel: Uint8Array;
  kernelName: string;
  memMiB: number;
  cmdline: string;
  guests: number;
  decider: DeciderName;
  /** The health VM serving guests 0..guests-1 (the hm-vm decider). */
  health?: BenchHealth;
  timeoutMs: number;
  /** The one event kind the run must produce, in this region; undefined: no events at all. */
  expect?: { kind: EventKind; region?: string };
  /** Called once every guest is built, before the first one runs. */
  onBuilt?: () => void;
  /** Called every 100 ms while the guests run. */
  onSample?: () => void;
  /** Names the run in messages. */
  what: string;
}

export interface GuestRunResult {
  serial: string[];
  /** Exit-to-verdict-applied latency of each event (dispatcher latencyUs), in order. */
  latencies: Samples;
  /** The guest's TSC rate (KVM_GET_TSC_KHZ); 0 where KVM cannot tell. */
  tscKhz: number;
}

const MAX_PROBLEMS = 3;

class EventCheck {
  readonly latencies = new Samples();
  readonly problems: string[] = [];
  bad = 0;

  constructor(
    private readonly spec: GuestRunSpec,
    private readonly guest: number,
  ) {}

  add(e: CapturedEvent, regionName: string | undefined): void {
    this.latencies.push(e.latencyUs);
    const want = this.spec.expect;
    let problem: string | undefined;
    if (!want) problem = `an unexpected ${e.kind} event`;
    else if (e.kind !== want.kind) problem = `a ${e.kind} event, expected ${want.kind}`;
    else if (want.region && regionName !== want.region) problem = `an event in ${regionName ?? "no region"}`;
    else if (e.decidedBy !== this.spec.decider) problem = `event ${e.seq} decided by ${e.decidedBy}: ${e.reason}`;
    if (problem) {
      this.bad++;
      if (this.problems.length < MAX_PROBLEMS) this.problems.push(`${guestName(this.guest)}: ${problem}`);
    }
  }
}

/** Build `spec.guests` guests, run them together to their end, and tear them down. */
export async function runGuardvisor(spec: GuestRunSpec): Promise<GuestRunResult[]> {
  if (spec.decider === "hm-vm" && !spec.health) throw new GuardvisorError("INTERNAL", "hm-vm runs need a health VM");
  const vms: GuestVm[] = [];
  const checks: EventCheck[] = [];
  let sampler: NodeJS.Timeout | undefined;
  try {
    for (let g = 0; g < spec.guests; g++) {
      const check = new EventCheck(spec, g);
      checks.push(check);
      const hm = spec.decider === "hm-vm" ? spec.health : undefined;
      const vm = await GuestVm.build(spec.kvm, {
        vmId: g,
        kernel: spec.kernel,
        kernelName: spec.kernelName,
        memSize: spec.memMiB * MIB,
        cmdline: spec.cmdline,
        policy: DEFAULT_POLICY,
        decider: hm ? hm.deciderFor(g) : { kind: "vmm" },
        // No watchdog: a long ring-3 workload makes no exits for seconds, which is not a hang here
        // (a stuck benchmark still ends at the time limit and fails the run).
        hangTimeoutMs: 0,
        keepEvents: 0, // a benchmark only needs the numbers it adds up
        onPolicy: (p) => hm?.installRules(g, p.table),
        onHmFault: (f) => hm?.reportFault(f),
        onEvent: (e) => {
          const self = vms[g] as GuestVm;
          check.add(e, self.regionName(e.regionId));
        },
      });
      vms.push(vm);
    }
    spec.onBuilt?.();
    if (spec.onSample) sampler = setInterval(spec.onSample, 100);
    const stops = await Promise.all(vms.map((vm) => vm.runToEnd(spec.timeoutMs)));
    if (sampler) clearInterval(sampler);
    return vms.map((vm, g) => {
      const stop = stops[g]!;
      const who = `${spec.what}, ${guestName(g)}`;
      if (stop.timedOut) {
        throw new GuardvisorError("GUEST_FAULT", `${who}: stopped after the ${spec.timeoutMs / 1000} s time limit`);
      }
      if (stop.outcome !== "exit" || stop.code !== 0) {
        const tail = vm.serial.at(-1);
        throw new GuardvisorError(
          "GUEST_FAULT",
          `${who}: the guest did not complete: ${stop.detail}${tail ? ` (last output: ${tail})` : ""}`,
        );
      }
      const check = checks[g]!;
      if (check.bad > 0) {
        throw new GuardvisorError(
          "GUEST_FAULT",
          `${who}: ${check.bad} of ${check.latencies.length} events are not a valid measurement: ${check.problems.join("; ")}`,
        );
      }
      const integrity = vm.integrity();
      if (!integrity.intact) {
        throw new GuardvisorError("GUEST_FAULT", `${who}: protected regions changed: ${integrity.changed.join(", ")}`);
      }
      return { serial: vm.serial, latencies: check.latencies, tscKhz: tscKhzOf(vm) };
    });
  } finally {
    if (sampler) clearInterval(sampler);
    for (const vm of vms) await vm.destroy();
  }
}

function tscKhzOf(vm: GuestVm): number {
  try {
    return vm.tscKhz();
  } catch {
    return 0;
  }
}
