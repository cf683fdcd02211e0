/**
 * A soak (run --duration): each guest runs the scenario mix again and again;
 * every round is checked and counted.
 */
import { ABI_CONSTANTS as C } from "../abi/guest-abi.js";
import type { HealthManager } from "../health/health-manager.js";
import type { InjectSpec } from "../idc/channel.js";
import type { SummaryEvent } from "../model/summary-event.js";
import { findScenario, parseResultLine, type Scenario } from "../scenarios.js";
import { checkScenario } from "./checks.js";
import type { RunOptions, RunSummary, SoakSummary } from "./options.js";

/** A random crash of the health VM within its next 1..20 requests. */
export function randomCrash(answered: number): InjectSpec {
  return { mode: C.INJECT_CRASH, at: answered + 1 + Math.floor(Math.random() * 20), slowUs: 0 };
}

/** The rounds of a soak run (--duration): what each guest runs next, and the counts. */
export class Soak {
  readonly durationMs: number;
  private readonly end: number;
  private readonly mix: Scenario[];
  private readonly turns: number[];
  private rounds = 0;
  private failed = 0;
  private readonly problems: string[] = [];
  private readonly byDecider: Record<string, number> = {};
  private intact = true;
  private rssStart: number | undefined;

  constructor(opts: RunOptions, nguests: number) {
    this.durationMs = opts.durationMs ?? 0;
    this.end = Date.now() + this.durationMs;
    const names = opts.scenarios ?? (opts.scenario ? [opts.scenario] : []);
    this.mix = names.map(findScenario);
    this.turns = new Array(nguests).fill(0);
  }

  over(): boolean {
    return Date.now() >= this.end;
  }

  /** Guest g's next scenario: the mix in turn, each guest starting at its own place. */
  next(g: number): Scenario {
    this.turns[g] = (this.turns[g] ?? 0) + 1;
    return this.mix[(g + (this.turns[g] ?? 0)) % this.mix.length] as Scenario;
  }

  round(sc: Scenario, intact: boolean, events: SummaryEvent[], serial: string[], code: number, restarts: number): void {
    this.rounds++;
    this.intact &&= intact;
    for (const e of events) this.byDecider[e.decidedBy] = (this.byDecider[e.decidedBy] ?? 0) + (e.count ?? 1);
    const sum: RunSummary = {
      scenario: sc.name,
      decider: "hm-vm",
      // A fail-safe verdict may be the policy's restart (integrity, crash): a restart then is by design.
      guest: {
        outcome: "completed",
        restarts: events.some((e) => e.decidedBy === "failsafe") ? (sc.restarts ?? 0) : restarts,
        exitCode: code,
      },
      integrity: { protectedBytes: 0, intact },
      healthVm: { restarts: 0, requests: 0, faults: [] },
      events: [],
    };
    // Under random health-VM crashes a verdict may be fail-safe: the scenario's own checks
    // on the guest (its result line, its bytes) must hold, event verdicts may differ.
    const problems = checkScenario({ ...sc, events: [] }, sum, parseResultLine(serial));
    if (problems.length > 0) {
      this.failed++;
      if (this.problems.length < 10) this.problems.push(`${sc.name}: ${problems.join("; ")}`);
    }
    this.rssStart ??= process.memoryUsage().rss;
  }

  summary(health: HealthManager | undefined, hmRestarts: number): SoakSummary {
    const requests = { published: 0, settled: 0 };
    for (let g = 0; g < this.turns.length; g++) {
      const c = health?.requestCounts(g);
      requests.published += c?.published ?? 0;
      requests.settled += c?.settled ?? 0;
    }
    const mib = (b: number) => Math.round((b / (1024 * 1024)) * 10) / 10;
    const rss = process.memoryUsage().rss;
    return {
      durationS: Math.round(this.durationMs / 1000),
      rounds: this.rounds,
      roundsFailed: this.failed,
      problems: this.problems,
      events: this.byDecider,
      requests,
      hmRestarts,
      intact: this.intact,
      rssMiB: { start: mib(this.rssStart ?? rss), end: mib(rss) },
    };
  }
}
