/**
 * Attacks on a sealed stock Linux guest, each from a kernel module the test
 * init loads (linux-guest/gv_attack.c), and the kernel's own failures, caught
 * first (docs/linux-guests.md): a direct write to a kernel function through
 * the module's own alias, a syscall-table hook, a write with CR0.WP cleared,
 * an LSTAR hook — each denied, the target unchanged, the guest alive to its
 * result line; an oops captured at __die before the kernel prints it, the
 * kernel's own oops handling going on; a panic captured at panic() and the
 * VM restarted by the default policy before the kernel's panic message, the
 * next boot ending cleanly; a kernel spinning with interrupts off found by
 * the VMM's watchdog and restarted the same way; a write refused with a
 * fault (policies/linux-fault.yaml), the kernel's own oops for it caught.
 * Most run through the CLI, as the README shows (`run --linux BZIMAGE
 * --scenario NAME --json`).
 *
 * Runs in the lab on a PVM host (scripts/test.ts, NEEDS_HW_VIRT).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { packageRoot } from "../../src/kvm/native.js";
import { LINUX_SCENARIOS } from "../../src/linux/test-guest.js";
import { DEFAULT_HANG_TIMEOUT_MS } from "../../src/run/options.js";
import { scaled } from "../../src/time-scale.js";
import { skipWithoutHardwareVirt } from "../support/kvm.js";
import { bootSealed, LIMIT_MS, runLinuxCli, type SealedRun } from "../support/linux-guest.js";

const TIMEOUT = { timeout: 2 * LIMIT_MS + 120_000 };

/** The guest went on to its result line and a clean reset, and the attack did not land. */
function assertSurvived(r: SealedRun): void {
  assert.ok(r.result, `no GV-RESULT line; the run ended ${r.end.outcome}: ${r.end.detail}\n${r.tail}`);
  assert.equal(r.result.status, "ok");
  assert.equal(r.result.landed, "no", "the attack landed");
  assert.equal(r.end.outcome, "reset", `${r.end.detail}\n${r.tail}`);
  assert.equal(r.end.panicked, false);
  assert.deepEqual(r.end.seal?.integrity, { intact: true, changed: [] });
}

type ReportedEvent = { kind: string; verdict: string; rule: string; rip: string; target: string; note?: string };

/**
 * `scenario` under the shipped policy `policyName`, whose verdict on the
 * module's write raises #GP at the writer: exactly one protected write with
 * `verdictAndRule`, then the kernel's own oops for that #GP, caught first at
 * die_addr at the same instruction (a #GP's oops does not go through __die).
 * The oops ended insmod before the module reported (no landed= line), the
 * sealed bytes are intact and the kernel went on to a clean reset.
 */
function faultedWriter(scenario: string, policyName: string, verdictAndRule: string) {
  const { r, j } = runLinuxCli(["--scenario", scenario, "--policy", join(packageRoot(), "policies", policyName)]);
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  const events = j.seal.events as ReportedEvent[];
  assert.deepEqual(
    events.map((e) => `${e.kind} ${e.verdict} ${e.rule}`),
    [`protected-write ${verdictAndRule}`, "cpu-exception log default:cpu-exception"],
    "one write refused with a fault (the instruction never completes), then the kernel's oops for it",
  );
  const [write, oops] = events as [ReportedEvent, ReportedEvent];
  assert.match(
    oops.note ?? "",
    /^kernel oops "general protection fault[^"]*" at 0x[0-9a-f]+ \(cpl 0, error 0x0, .*\), captured at die_addr before/,
  );
  assert.equal(oops.rip, write.rip, "the oops frame is the faulted writer");
  assert.equal(j.result?.status, "ok");
  assert.equal(j.result?.landed, "none", "insmod was ended before it could report");
  assert.deepEqual(j.integrity, { intact: true, changed: [] });
  assert.equal(j.outcome, "reset", j.detail);
  return { write, j };
}

describe("attacks on a sealed stock Linux guest", { skip: skipWithoutHardwareVirt }, () => {
  it(
    "linux-text-patch, as the README runs it: run --linux --scenario --json; the write denied, the function unchanged, a clean end",
    TIMEOUT,
    () => {
      const { r, j } = runLinuxCli(["--scenario", "linux-text-patch"]);
      assert.equal(r.status, 0, r.stderr.slice(-2000));
      assert.equal(j.outcome, "reset", j.detail);
      assert.equal(j.scenario, "linux-text-patch");
      assert.equal(j.result?.status, "ok", "the guest reached its result line");
      assert.equal(j.result?.landed, "no", "the module saw its write not land");
      assert.deepEqual(j.integrity, { intact: true, changed: [] });
      assert.ok(j.seal.armed, "armed once user space ran");
      const events = j.seal.events as { kind: string; target: string; verdict: string; note?: string }[];
      assert.ok(events.length > 0);
      for (const e of events) {
        assert.equal(e.kind, "protected-write");
        assert.equal(e.verdict, "deny");
        // do_sched_yield: the function whose schedstats site linux-static-key's sanctioned patch changes.
        assert.match(e.target, /^\.text\+0x[0-9a-f]+ \(do_sched_yield\+0x[0-3]\)$/);
        assert.match(e.note ?? "", /not the kernel's text_poke/);
      }
      assert.equal(j.counters.sanctionedWrites, 0);
    },
  );

  it(
    "linux-text-patch under policies/linux-fault.yaml: #GP at the writer, the kernel's oops caught at die_addr at that instruction, insmod ended, the kernel goes on",
    TIMEOUT,
    () => {
      const { write, j } = faultedWriter("linux-text-patch", "linux-fault.yaml", "deny-fault fault-kernel-writes");
      assert.match(write.target, /\(do_sched_yield\+0x[0-3]\)$/);
      assert.match(write.note ?? "", new RegExp(`; #GP at the writer ${write.rip}$`));
      assert.equal(j.counters.faultsRaised, 1);
      assert.equal(j.counters.oopses, 1);
    },
  );

  it(
    "linux-syscall-hook under policies/linux-syscall-table.yaml: a region named by its symbol, kill-task: the writer faulted and ended by the kernel's oops",
    TIMEOUT,
    () => {
      const { write } = faultedWriter("linux-syscall-hook", "linux-syscall-table.yaml", "kill-task syscall-table");
      assert.match(write.target, /\(sys_call_table\+0x138\)$/);
      assert.match(write.note ?? "", /#GP at the writer .*; the kernel's #GP handling ends the task unless/);
    },
  );

  it("linux-syscall-hook: sys_call_table[__NR_getpid] overwritten: denied", TIMEOUT, async (t) => {
    const r = await bootSealed(t, "linux-syscall-hook");
    assertSurvived(r);
    const events = r.end.seal?.events ?? [];
    assert.ok(events.length > 0);
    for (const e of events) {
      assert.equal(e.verdict, "deny");
      assert.match(e.target, /^\.rodata\+0x[0-9a-f]+ \(sys_call_table\+0x13[89a-f]\)$/, e.target);
    }
  });

  it(
    "linux-wp-bypass: CR0.WP cleared, then a direct write to text: both caught, WP put back, the write denied",
    TIMEOUT,
    async (t) => {
      const r = await bootSealed(t, "linux-wp-bypass");
      assertSurvived(r);
      const events = r.end.seal?.events ?? [];
      const wp = events.filter((e) => e.kind === "integrity");
      assert.ok(wp.length >= 1, "CR0.WP cleared: an integrity event");
      assert.equal(wp[0]?.target, "CR0");
      assert.equal(wp[0]?.verdict, "deny");
      assert.match(wp[0]?.note ?? "", /pinned CR0 bits cleared: 0x10000/);
      const writes = events.filter((e) => e.kind === "protected-write");
      assert.ok(writes.length > 0);
      for (const e of writes) {
        assert.equal(e.verdict, "deny");
        assert.match(e.target, /register_reboot_notifier/);
      }
    },
  );

  it(
    "linux-lstar-hook: a WRMSR to LSTAR: refused with #GP (the default policy's deny-fault), the syscall entry unchanged",
    TIMEOUT,
    async (t) => {
      const r = await bootSealed(t, "linux-lstar-hook");
      assertSurvived(r);
      const events = (r.end.seal?.events ?? []).filter((e) => e.kind === "msr-write");
      assert.equal(events.length, 1);
      assert.equal(events[0]?.msrIndex, 0xc0000082);
      assert.equal(events[0]?.verdict, "deny-fault");
      assert.equal(events[0]?.rule, "protect-syscall-msrs");
      assert.match(events[0]?.note ?? "", /<- 0xffffffffc0[0-9a-f]+; #GP in the guest/);
      // Linux's WRMSR has an exception-table fixup: the #GP is reported and the module goes on.
      assert.ok(r.end.console.some((l) => l.includes("unchecked MSR access error: WRMSR to 0xc0000082")));
    },
  );

  it(
    "linux-oops: a module's NULL write is captured at __die before the kernel prints it; the kernel's oops handling goes on",
    TIMEOUT,
    async (t) => {
      const r = await bootSealed(t, "linux-oops");
      assert.ok(r.result, `no GV-RESULT line; the run ended ${r.end.outcome}: ${r.end.detail}\n${r.tail}`);
      assert.equal(r.result.oopsed, "yes", "the kernel handled its oops (insmod killed) and went on");
      assert.equal(r.end.outcome, "reset");
      const oops = (r.end.seal?.events ?? []).filter((e) => e.kind === "cpu-exception");
      assert.equal(oops.length, 1);
      const e = oops[0]!;
      assert.equal(e.vector, 14, "a page fault");
      assert.equal(e.verdict, "log");
      assert.match(e.note ?? "", /kernel oops "Oops" at 0xffffffffc0[0-9a-f]+ \(cpl 0, error 0x2, cr2 0x0\)/);
      assert.equal(r.end.counters.oopses, 1);
      // First: the capture came before the kernel printed the oops.
      const printed = r.end.console.findIndex((l) => l.includes("BUG: kernel NULL pointer dereference"));
      assert.ok(printed >= 0);
    },
  );

  it(
    "linux-panic: panic() is captured before the kernel prints it, the VM restarted per policy, and the next boot ends cleanly",
    TIMEOUT,
    () => {
      const { r, j } = runLinuxCli(["--scenario", "linux-panic"], 2);
      assert.equal(r.status, 0, r.stderr.slice(-2000));
      assert.equal(j.restarts, 1);
      const first = j.restarted[0];
      assert.equal(first.outcome, "restart");
      const panics = (first.seal.events as { kind: string; verdict: string; note?: string }[]).filter(
        (e) => e.kind === "crash",
      );
      assert.equal(panics.length, 1);
      assert.equal(panics[0]?.verdict, "restart");
      assert.match(panics[0]?.note ?? "", /kernel panic "gv_attack: panic requested", captured at panic\(\)/);
      // The second boot: told it was restarted, it ends cleanly.
      assert.equal(j.outcome, "reset", j.detail);
      assert.equal(j.result?.restarted, "1");
      assert.equal(j.panicked, false);
    },
  );

  it("linux-hang: a kernel spinning with interrupts off is found by the VMM's watchdog, restarted per policy, and the next boot ends cleanly", {
    timeout: 2 * LIMIT_MS + DEFAULT_HANG_TIMEOUT_MS * 2 + 120_000,
  }, () => {
    const { r, j } = runLinuxCli(["--scenario", "linux-hang"], 2);
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    assert.equal(j.restarts, 1);
    const first = j.restarted[0];
    assert.equal(first.outcome, "restart", first.detail);
    const events = first.seal.events as { kind: string; verdict: string; note?: string; writer?: string }[];
    assert.equal(events.length, 1, JSON.stringify(events));
    const hang = events[0]!;
    assert.equal(hang.kind, "hang");
    assert.equal(hang.verdict, "restart");
    const ms = Number(/no exit for (\d+) ms/.exec(hang.note ?? "")?.[1]);
    assert.ok(ms >= DEFAULT_HANG_TIMEOUT_MS, `${hang.note}: found before the limit`);
    // Where it spun: the module's init (no symbol: modules are outside the kernel image).
    assert.match(
      hang.note ?? "",
      /^kernel hung: ring 0 with interrupts disabled and no exit for \d+ ms, at RIP 0xffffffffc0[0-9a-f]+$/,
    );
    assert.equal(j.outcome, "reset", j.detail);
    assert.equal(j.result?.restarted, "1");
    assert.equal(j.seal.events.length, 0, "the second boot: no event");
  });
});

/**
 * The hm-vm decider for Linux guests: every scenario in one CLI run, each
 * verdict from the health VM. Bounded as a whole (a stalled run fails in
 * minutes, not hours): 11 boots take about 9 minutes in the lab, 28 s on
 * real KVM; the limit is 120 s on real KVM, times the time scale.
 */
const HM_VM_ALL_MS = 120_000;

describe("every Linux scenario with the hm-vm decider: run --linux --scenario all", {
  skip: skipWithoutHardwareVirt,
}, () => {
  it("each scenario shows what it must (linux-scenarios.ts), with every verdict from the health VM", {
    timeout: scaled(HM_VM_ALL_MS) + 60_000,
  }, () => {
    const { r, j } = runLinuxCli(["--scenario", "all", "--decider", "hm-vm"], LINUX_SCENARIOS.length + 2, HM_VM_ALL_MS);
    const out = j as {
      scenarios: { scenario: string; pass: boolean; observed: unknown }[];
      healthVm?: { generation: number; restarts: number; requests: number; failed: boolean };
    };
    assert.deepEqual(
      out.scenarios.map((s) => s.scenario),
      [...LINUX_SCENARIOS],
    );
    for (const s of out.scenarios) assert.ok(s.pass, `${s.scenario}: ${JSON.stringify(s.observed)}`);
    // One health VM, its first launch, answered every scenario's requests.
    const hm = out.healthVm;
    assert.ok(hm, "the health VM's status is in the output");
    assert.deepEqual(
      { generation: hm.generation, restarts: hm.restarts, failed: hm.failed },
      {
        generation: 1,
        restarts: 0,
        failed: false,
      },
    );
    assert.ok(hm.requests > 0, `${hm.requests} requests answered`);
    assert.equal(r.status, 0, r.stderr.slice(-2000));
  });
});
