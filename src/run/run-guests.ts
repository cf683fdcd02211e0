/**
 * Runs guests to their end and reports what happened in the shape of the
 * CLI summary (DESIGN.md, CLI): outcome, integrity, and every event. With the
 * hm-vm decider (the default) one health VM serves every guest. Each guest's
 * life (build, run, restart within the policy's limits) is one loop here; its
 * events go through its GuestEvents pipeline.
 */
import { join } from "node:path";
import { AuditLog } from "../audit.js";
import { DEFAULT_POLICY, type Policy } from "../decide/policy.js";
import { policyHashOf } from "../decide/rule-table.js";
import { defaultKernelPath, readKernelFile } from "../elf/kernel-file.js";
import { GuardvisorError } from "../errors.js";
import { VmEngineBackend } from "../health/backends.js";
import { HealthManager } from "../health/health-manager.js";
import { Kvm } from "../kvm/kvm.js";
import { packageRoot } from "../kvm/native.js";
import { guestName } from "../names.js";
import { readPolicyKernel } from "../policy/compile-file.js";
import { loadPolicyFile } from "../policy/load.js";
import { type PolicyKernel, resolvePolicy } from "../policy/resolve.js";
import { parseResultLine, type Scenario } from "../scenarios.js";
import { validateMemMiB } from "../vmm/boot.js";
import { GuestVm, type Integrity } from "../vmm/guest-vm.js";
import type { VcpuStop } from "../vmm/vcpu-thread.js";
import { checkScenario, checkSoak, guestScenarios, outcomeOf } from "./checks.js";
import { RepeatLog } from "./event-fold.js";
import { GuestEvents } from "./guest-events.js";
import {
  DEFAULT_DECIDER,
  DEFAULT_HANG_TIMEOUT_MS,
  DEFAULT_MEM_MIB,
  DEFAULT_RESTART_LIMIT,
  DEFAULT_TIMEOUT_MS,
  type HealthVmSummary,
  HM_MEM_MIB,
  type MultiRunReport,
  type RunOptions,
  type RunReport,
  type RunSummary,
} from "./options.js";
import { randomCrash, Soak } from "./soak.js";

interface GuestLife {
  restarts: number;
  /** When each restart happened (ms since the epoch), for a windowed restart limit. */
  restartTimes: number[];
  /** Every incarnation's protected regions intact at its end. */
  intact: boolean;
  changed: string[];
  serial: string[];
  last?: { stop: VcpuStop & { timedOut: boolean }; integrity: Integrity; vm: GuestVm };
}

/** Run one guest (the JSON summary of DESIGN.md). */
export async function runGuest(opts: RunOptions): Promise<RunReport> {
  const r = await runGuests(opts);
  const first = r.guests[0];
  if (!first || r.guests.length !== 1) throw new GuardvisorError("INTERNAL", "runGuest ran more than one guest");
  return first;
}

/** Run one or more guests, sharing one health VM, to their end. */
export async function runGuests(opts: RunOptions): Promise<MultiRunReport> {
  const scenarios = guestScenarios(opts);
  checkSoak(opts);
  const soak = opts.durationMs === undefined ? undefined : new Soak(opts, scenarios.length);
  const memSize = validateMemMiB(opts.memMiB ?? DEFAULT_MEM_MIB);
  const kernelPath = opts.kernelPath ?? defaultKernelPath();
  const kernel = readKernelFile(kernelPath);
  const decider = opts.decider ?? DEFAULT_DECIDER;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  const audit = opts.auditPath ? new AuditLog(opts.auditPath) : undefined;
  let kvm: Kvm;
  try {
    kvm = Kvm.open(opts.kvmPath);
  } catch (e) {
    audit?.close();
    throw e;
  }
  let health: HealthManager | undefined;
  const vms: (GuestVm | undefined)[] = [];
  /** A scenario that ships its own policy runs with it unless the caller gave one. */
  const policyFor = (sc: Scenario | undefined): Policy =>
    opts.policy ??
    (sc?.policy ? resolvePolicy(loadPolicyFile(join(packageRoot(), sc.policy)), policyKernel()) : DEFAULT_POLICY);
  let kernelForPolicy: PolicyKernel | undefined;
  const policyKernel = () => {
    kernelForPolicy ??= readPolicyKernel(kernelPath);
    return kernelForPolicy;
  };
  try {
    if (decider === "hm-vm") {
      // The health VM always runs gv-kernel, whatever kernel the guests run.
      const hmKernel = kernelPath === defaultKernelPath() ? kernel : readKernelFile(defaultKernelPath());
      health = await HealthManager.start({
        backend: new VmEngineBackend(kvm, hmKernel, defaultKernelPath(), HM_MEM_MIB, opts.onHmSerial),
        nguests: scenarios.length,
        inject: opts.injectHmFault,
        ...(opts.hmChaos ? { chaos: randomCrash } : {}),
        timeoutMs: opts.hmTimeoutMs,
        onRestart: (r) => {
          audit?.append({
            time: new Date(r.timeMs).toISOString(),
            vm: "health-vm",
            kind: "hm-restart",
            reason: r.reason,
            detail: r.detail,
            generation: r.generation,
            poison: r.poison ? { guest: r.poison.guest, seq: Number(r.poison.seq) } : null,
            resent: r.resent,
            downMs: r.downMs,
          });
          opts.onHmRestart?.(r);
        },
      });
    }
    let reloaded: Policy | undefined;
    let aborted = false;
    const repeats = new RepeatLog((g, ev, count, lastMs) =>
      audit?.append({
        time: new Date(lastMs).toISOString(),
        vm: guestName(g),
        kind: "repeat",
        of: ev.seq,
        event: ev.kind,
        ...(ev.vector === undefined ? {} : { vector: ev.vector }),
        ...(ev.object === undefined ? {} : { object: ev.object }),
        symbol: ev.symbol,
        verdict: ev.verdict,
        repeats: count,
      }),
    );
    // A soak's rounds start until its duration is up; the last ones then have the usual time limit.
    const deadline = Date.now() + (soak ? soak.durationMs : 0) + timeoutMs;
    /** One guest from boot to its end, restarted (a new VM, `restart=N`) when a verdict says so. */
    const events = scenarios.map(
      (_, g) => new GuestEvents(g, { audit, repeats, onEvent: opts.onEvent, onRepeat: opts.onRepeat }),
    );
    const runLife = async (g: number): Promise<GuestLife> => {
      let scenario = scenarios[g];
      let guestPolicy = policyFor(scenario);
      const life: GuestLife = {
        restarts: 0,
        restartTimes: [],
        intact: true,
        changed: [],
        serial: [],
      };
      const guestEvents = events[g] as GuestEvents;
      let exitsBefore = 0; // earlier incarnations' exits
      for (;;) {
        if (aborted) return life;
        guestEvents.newIncarnation();
        const cmdline = [
          scenario ? `scenario=${scenario.name}` : "",
          "role=guest",
          life.restarts > 0 ? `restart=${life.restarts}` : "",
          opts.cmdline ?? "",
        ]
          .filter(Boolean)
          .join(" ");
        const hm = health;
        if (reloaded) guestPolicy = reloaded; // a restart keeps the reloaded policy
        const vm = await GuestVm.build(kvm, {
          vmId: g,
          kernel,
          kernelName: kernelPath,
          memSize,
          cmdline,
          policy: guestPolicy,
          decider: hm ? hm.deciderFor(g) : { kind: "vmm" },
          hangTimeoutMs: opts.hangTimeoutMs ?? DEFAULT_HANG_TIMEOUT_MS,
          exceptionEntry: opts.exceptionEntry,
          firstSeq: guestEvents.lastSeq,
          onPolicy: (p) => hm?.installRules(g, p.table),
          onHmFault: (f) => hm?.reportFault(f),
          onPaused: (detail) => {
            life.serial.push(`--- guardvisor: ${guestName(g)} paused: ${detail} ---`);
            opts.onGuestState?.(g, "paused");
          },
          onGuestReport: (r) => guestEvents.guestReport(r),
          onSerial: opts.onSerial ? (line) => opts.onSerial?.(line, g) : undefined,
          // vms[g] is set before the guest runs its first instruction.
          onEvent: (e) => guestEvents.event(e, vms[g] as GuestVm),
        });
        vms[g] = vm;
        // A reload that came while this guest was being built did not reach it: hand it over before it runs.
        if (reloaded && reloaded !== guestPolicy) {
          try {
            reloadGuest(vm, g, reloaded);
            guestPolicy = reloaded;
          } catch (e) {
            // Checked against the guests running then, not this one (an MSR this VM does not filter).
            life.serial.push(
              `--- guardvisor: ${guestName(g)} keeps policy ${guestPolicy.name}: ${(e as Error).message} ---`,
            );
          }
        }
        opts.onGuestState?.(g, "running");
        // Exits so far, live (the vCPU thread counts them in shared memory), for exits/s.
        const before = exitsBefore;
        const sampler = opts.onExits ? setInterval(() => opts.onExits?.(g, before + vm.exitCount()), 1000) : undefined;
        sampler?.unref();
        const stop = await vm.runToEnd(Math.max(1, deadline - Date.now())).finally(() => clearInterval(sampler));
        exitsBefore += stop.stats?.exits ?? vm.exitCount();
        opts.onExits?.(g, exitsBefore);
        const integrity = vm.integrity();
        life.intact &&= integrity.intact;
        life.changed.push(...integrity.changed);
        life.serial.push(...vm.serial);
        life.last = { stop, integrity, vm };
        if (soak && scenario && stop.outcome === "exit" && !stop.timedOut && !aborted) {
          // A soak round done: check it, keep its counts, and start the next scenario in a new VM.
          soak.round(scenario, life.intact, guestEvents.list, life.serial, stop.code ?? 0, life.restarts);
          if (soak.over()) return life;
          scenario = soak.next(g);
          guestPolicy = reloaded ?? policyFor(scenario);
          scenarios[g] = scenario;
          guestEvents.newRound();
          life.serial = [];
          life.intact = true;
          life.restarts = 0;
          life.restartTimes = [];
          await vm.destroy();
          continue;
        }
        if (stop.outcome !== "restart" || stop.timedOut || aborted) return life;
        const rp = guestPolicy.restart;
        const restartLimit = rp?.limit ?? DEFAULT_RESTART_LIMIT;
        // With a window, only the restarts within the last windowSeconds count against the limit.
        const now = Date.now();
        const counted = rp?.windowSeconds
          ? life.restartTimes.filter((t) => now - t < (rp.windowSeconds ?? 0) * 1000).length
          : life.restarts;
        if (counted >= restartLimit) {
          const then = rp?.exhausted ?? "halt";
          const within = rp?.windowSeconds ? ` within ${rp.windowSeconds} s` : "";
          life.last.stop = {
            ...stop,
            outcome: "halt",
            detail: `${stop.detail}; restart limit ${restartLimit}${within} reached: ${then}`,
          };
          return life;
        }
        life.restarts++;
        life.restartTimes.push(now);
        opts.onGuestState?.(g, "restarting");
        life.serial.push(`--- guardvisor: ${guestName(g)} restarted (${life.restarts}): ${stop.detail} ---`);
        await vm.destroy();
      }
    };
    /** Hand a running guest a new policy; returns its rule-table hash. */
    const reloadGuest = (vm: GuestVm, g: number, p: Policy): number => {
      const compiled = vm.reloadPolicy(p);
      const hash = policyHashOf(compiled.table);
      audit?.append({
        time: new Date().toISOString(),
        vm: guestName(g),
        kind: "policy-reload",
        policy: p.name,
        hash: `0x${hash.toString(16)}`,
        rules: compiled.rules.length,
      });
      return hash;
    };
    if (opts.control) {
      opts.control.reloadPolicy = (p: Policy) => {
        for (const vm of vms) vm?.checkReload(p); // all or none
        const hashes: number[] = [];
        vms.forEach((vm, g) => {
          if (vm) hashes.push(reloadGuest(vm, g, p));
        });
        reloaded = p;
        return { guests: hashes.length, hashes };
      };
      opts.control.guests = () =>
        vms.map((vm, g) => {
          const detail = vm?.pausedBy;
          if (detail !== undefined) return { guest: g, state: "paused", detail };
          return { guest: g, state: vm && !vm.hasStopped ? "running" : "stopped" };
        });
      opts.control.resume = (g) => {
        const ok = vms[g]?.resumePaused() ?? false;
        if (ok) opts.onGuestState?.(g, "running");
        return ok;
      };
    }
    // If one guest fails to build or run, stop the others and wait for them all
    // before anything is torn down (their threads use memory the teardown frees).
    const results = await Promise.allSettled(
      scenarios.map((_, g) =>
        runLife(g).then(
          (life) => {
            if (life.last) opts.onGuestState?.(g, outcomeOf(life.last.stop));
            return life;
          },
          (e: unknown) => {
            aborted = true; // no guest starts or restarts from now on
            for (const vm of vms) vm?.stop();
            throw e;
          },
        ),
      ),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
    const lives = results.map((r) => (r as PromiseFulfilledResult<GuestLife>).value);
    if (opts.control) {
      opts.control.reloadPolicy = undefined;
      opts.control.guests = undefined;
      opts.control.resume = undefined;
    }
    for (let g = 0; g < scenarios.length; g++) repeats.flush(g);
    await health?.settled(); // a restart still running counts
    const hmStatus = health?.status();
    const healthVm: HealthVmSummary = {
      restarts: hmStatus?.restarts ?? 0,
      requests: hmStatus?.requests ?? 0,
      faults: (hmStatus?.faults ?? []).map((f) => ({ reason: f.reason, detail: f.detail, downMs: f.downMs })),
    };
    if (soak) {
      // A soak's summary keeps counts, not every fault.
      healthVm.faults = healthVm.faults.slice(-10);
    }
    const guests = lives.map((life, g): RunReport => {
      const last = life.last as NonNullable<GuestLife["last"]>;
      const stop = last.stop;
      const scenario = scenarios[g];
      const summary: RunSummary = {
        scenario: scenario?.name ?? "custom",
        decider,
        guest: {
          outcome: outcomeOf(stop),
          restarts: life.restarts,
          exitCode: stop.outcome === "exit" ? (stop.code ?? 0) : null,
        },
        integrity: { protectedBytes: last.integrity.protectedBytes, intact: life.intact },
        healthVm,
        events: events[g]?.list ?? [],
      };
      const result = parseResultLine(life.serial);
      return {
        summary,
        detail: stop.timedOut ? `stopped after the ${timeoutMs} ms time limit` : stop.detail,
        result,
        problems: scenario ? checkScenario(scenario, summary, result) : [],
        serial: life.serial,
        stats: stop.stats,
        changedRegions: [...new Set(life.changed)],
        unmatchedGuestReports: events[g]?.unmatchedReports ?? 0,
      };
    });
    return {
      guests,
      summary: {
        decider,
        guests: guests.map(({ summary: { decider: _d, healthVm: _h, ...rest } }, g) => ({ vm: guestName(g), ...rest })),
        healthVm,
        ...(soak ? { soak: soak.summary(health, healthVm.restarts) } : {}),
      },
    };
  } finally {
    // Guests first: their vCPU threads use the IDC region the health VM owns.
    for (const vm of vms) await vm?.destroy();
    await health?.stop();
    audit?.close();
    kvm.close();
  }
}
