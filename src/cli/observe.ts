/**
 * What watches a run from the outside: the live view on a terminal and the
 * metrics endpoint, behind the runner's callbacks. `run` starts them before
 * the guests and closes them before printing its summary.
 */
import { Metrics } from "../metrics/metrics.js";
import { type MetricsServer, startMetricsServer } from "../metrics/server.js";
import { guestName } from "../names.js";
import { createLiveView, type LiveEvent, type LiveHealthRestart, type LiveStream, type LiveView } from "./live.js";

export interface ObserveOptions {
  /** Show the live view on this stream (the CLI: stdout, when it is a TTY and not --json). */
  live?: LiveStream;
  /** Serve metrics on 127.0.0.1:port (0: any free port). */
  metricsPort?: number;
  /** Where the metrics URL is announced (default stderr). */
  notice?: { write(s: string): unknown };
  /** Passed to the live view (tests). */
  env?: Record<string, string | undefined>;
}

export interface RunObservers {
  readonly metrics: Metrics | undefined;
  readonly metricsUrl: string | undefined;
  /** A decided event the summary stores (RunOptions.onEvent). */
  onEvent(e: LiveEvent, guest: number): void;
  /**
   * One more occurrence of the guest's previous event, which the summary
   * folds into that event's count: `e` is this occurrence (its latency) with
   * the seq of the event it repeats. Counted and shown like any event.
   */
  onRepeat(e: LiveEvent, guest: number): void;
  /** A health-VM restart (HealthManager's onRestart record). */
  onHmRestart(r: LiveHealthRestart): void;
  /** A guest started (`running`) or ended (its outcome). */
  onGuestState(guest: number, state: string): void;
  /** A guest's cumulative exit count, sampled about once a second. */
  onExits(guest: number, totalExits: number): void;
  /** A line for `stream` (e.g. --serial output) that does not tear the live view when both are the terminal. */
  print(text: string, stream: LiveStream): void;
  /** Finish the live view and stop the endpoint. Idempotent. */
  close(): Promise<void>;
}

export async function startRunObservers(opts: ObserveOptions): Promise<RunObservers> {
  let metrics: Metrics | undefined;
  let server: MetricsServer | undefined;
  if (opts.metricsPort !== undefined) {
    metrics = new Metrics();
    server = await startMetricsServer(metrics, opts.metricsPort);
    (opts.notice ?? process.stderr).write(`guardvisor: metrics at ${server.url}\n`);
  }
  const view: LiveView | undefined = opts.live ? createLiveView({ stream: opts.live, env: opts.env }) : undefined;
  let closing: Promise<void> | undefined;
  function occurrence(e: LiveEvent, guest: number): void {
    const { kind, verdict, decidedBy, latencyUs } = e;
    metrics?.event({ vm: guestName(guest), kind, verdict, decidedBy, latencyUs });
    view?.event(guest, e);
  }
  return {
    metrics,
    metricsUrl: server?.url,
    onEvent: occurrence,
    onRepeat: occurrence,
    onHmRestart(r) {
      metrics?.healthVmRestart(r.reason);
      view?.healthVm(r);
    },
    onGuestState(guest, state) {
      metrics?.guestState(guestName(guest), state === "running" ? "running" : "stopped");
      view?.guestState(guest, state);
    },
    onExits(guest, totalExits) {
      metrics?.exits(guestName(guest), totalExits);
    },
    print(text, stream) {
      if (view && stream.isTTY) view.print(text);
      else stream.write(`${text}\n`);
    },
    close() {
      closing ??= (async () => {
        view?.close();
        await server?.close();
      })();
      return closing;
    },
  };
}
