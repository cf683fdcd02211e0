/**
 * The live event stream of `guardvisor run` (docs/operations.md, The live
 * view): one line per event as it is decided, health-VM restarts, and on a
 * terminal a progress line at the bottom.
 *
 *   12:01:02.345 guest0 #3 protected-write .text gv_check_credentials+0x4 → deny (hm-vm, 58 µs)
 *
 * The repeats of one event that the runner folds into one summary event
 * (reported with that event's seq) fold into one line with a count,
 * `#3 … ×2,431`, so an exception storm cannot flood the output. On a
 * terminal the folded line is updated in place; elsewhere the first event is
 * printed at once and the folded line when the run of repeats ends (or every
 * few seconds while it goes on).
 *
 * Colours only on a TTY and only without NO_COLOR; the progress line only on
 * a TTY, redrawn at most every 200 ms. Nothing here keeps the process alive.
 */
import { stripVTControlCharacters } from "node:util";
import pc from "picocolors";
import type { SummaryEvent } from "../model/summary-event.js";
import { guestName } from "../names.js";
import { msrName, VECTOR_NAMES } from "../policy/names.js";

/**
 * An event as the runner reports it. Each call is one occurrence; `count`
 * (the summary's fold of repeats) is not used here.
 */
export type LiveEvent = SummaryEvent;

/** A health-VM restart, as HealthManager reports it (HmRestart fits). */
export interface LiveHealthRestart {
  reason: string;
  detail: string;
  downMs: number;
}

export interface LiveStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface LiveViewOptions {
  stream: LiveStream;
  /** Colours: default when the stream is a TTY and NO_COLOR is unset or empty. */
  color?: boolean;
  /** Environment consulted for NO_COLOR (default process.env). */
  env?: Record<string, string | undefined>;
  /** Wall clock in ms (default Date.now): line times and elapsed time. */
  now?: () => number;
  /** Progress-line refresh period on a TTY, ms (default and minimum 200). */
  refreshMs?: number;
  /** Show the progress line once the run is this old, ms (default 1000: long runs only). */
  progressAfterMs?: number;
}

export interface LiveView {
  /** One decided event of guest `guest`. */
  event(guest: number, e: LiveEvent): void;
  /** The health VM was restarted. */
  healthVm(restart: LiveHealthRestart): void;
  /** A guest's state for the progress line (`running`, `completed`, …); a stopped guest's folded line is printed. */
  guestState(guest: number, state: string): void;
  /** A plain line (e.g. serial output) printed above the progress line. */
  print(text: string): void;
  /** Print what is pending, remove the progress line, stop the timer. Idempotent. */
  close(): void;
}

/** A folded run of repeats is printed at least this often when the output is not a TTY. */
export const FOLD_FLUSH_MS = 5000;
const MIN_REFRESH_MS = 200;

const VECTOR_BY_NUMBER = new Map(Object.entries(VECTOR_NAMES).map(([name, n]) => [n, name]));

/** What an integrity event's object is called on screen. */
function integrityShown(object: string): string {
  return object === "paging" ? "page tables" : object.toUpperCase();
}

interface Run {
  guest: number;
  key: string;
  first: LiveEvent;
  last: LiveEvent;
  count: number;
  /** The count the last printed line of this run showed. */
  shown: number;
  firstAt: number;
  lastAt: number;
  printedAt: number;
}

export function formatLatency(us: number): string {
  if (!Number.isFinite(us)) return "? µs";
  if (us < 10) return `${us.toFixed(1)} µs`;
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 10_000) return `${(us / 1000).toFixed(2)} ms`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

export function formatClock(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

const count = (n: number) => n.toLocaleString("en-US");

function what(e: LiveEvent): string[] {
  const parts: string[] = [e.kind];
  if (e.vector !== undefined && e.kind === "cpu-exception") {
    const name = VECTOR_BY_NUMBER.get(e.vector);
    parts.push(name ? `#${name}` : `vector ${e.vector}`);
  }
  if (e.object !== undefined && e.kind === "integrity") parts.push(integrityShown(e.object));
  if (e.msr !== undefined) {
    const index = /^0x[0-9a-f]{1,8}$/i.test(e.msr) ? Number.parseInt(e.msr, 16) : undefined;
    parts.push(`MSR ${index === undefined ? e.msr : msrName(index)}`);
  }
  if (e.region) parts.push(e.region);
  if (e.symbol) parts.push(e.symbol);
  return parts;
}

/** A repeat is reported with the seq of the event it repeats (the runner's fold). */
function foldKey(guest: number, e: LiveEvent): string {
  return `${guest}:${e.seq}`;
}

function visibleWidth(s: string): number {
  return [...stripVTControlCharacters(s)].length;
}

export function createLiveView(opts: LiveViewOptions): LiveView {
  const stream = opts.stream;
  const tty = stream.isTTY === true;
  const env = opts.env ?? process.env;
  const color = opts.color ?? (tty && !env.NO_COLOR);
  const c = pc.createColors(color);
  const now = opts.now ?? Date.now;
  const startedAt = now();
  const progressAfterMs = opts.progressAfterMs ?? 1000;

  const runs = new Map<number, Run>();
  const states = new Map<number, string>();
  const perGuest = new Map<number, number>();
  let total = 0;
  let closed = false;
  // TTY only: the live area at the bottom is the tail run's line (updated in
  // place while it folds) and the progress line; `liveRows` rows on screen.
  let tail: Run | undefined;
  let footer = "";
  let liveRows = 0;

  const paintVerdict = (e: LiveEvent, text: string): string => {
    if (e.decidedBy === "failsafe") return c.yellow(text);
    switch (e.verdict) {
      case "deny":
      case "deny-fault":
      case "kill-task":
        return c.red(text);
      case "allow":
      case "log":
        return c.green(text);
      case "restart":
      case "halt":
      case "pause":
        return c.magenta(text);
      default:
        return text;
    }
  };

  const runLine = (r: Run): string => {
    const e = r.last;
    const at = r.count === 1 ? r.firstAt : r.lastAt;
    const verdict = paintVerdict(e, `→ ${e.verdict}`);
    const by = paintVerdict(e, `(${e.decidedBy}, ${formatLatency(e.latencyUs)})`);
    const note = e.note ? ` — ${e.note}` : "";
    const times = r.count === 1 ? "" : ` ${c.bold(`×${count(r.count)}`)}`;
    return `${c.dim(formatClock(at))} ${c.bold(guestName(r.guest))} #${r.first.seq} ${what(e).join(" ")} ${verdict} ${by}${note}${times}`;
  };

  const rowsOf = (line: string): number => {
    const cols = stream.columns && stream.columns > 0 ? stream.columns : 80;
    return Math.max(1, Math.ceil(visibleWidth(line) / cols));
  };

  const eraseLive = (): string => {
    if (liveRows === 0) return "";
    const s = `\r${"\x1b[2K\x1b[1A".repeat(liveRows - 1)}\x1b[2K`;
    liveRows = 0;
    return s;
  };

  const drawLive = (): string => {
    const lines: string[] = [];
    if (tail) lines.push(runLine(tail));
    if (footer) lines.push(c.dim(footer));
    liveRows = lines.reduce((n, l) => n + rowsOf(l), 0);
    return lines.join("\n");
  };

  /** Print permanent lines above the live area (TTY) or simply append them. */
  const emit = (lines: string[]): void => {
    const text = lines.length > 0 ? `${lines.join("\n")}\n` : "";
    if (!tty) {
      if (text) stream.write(text);
      return;
    }
    stream.write(`${eraseLive()}${text}${drawLive()}`);
  };

  /** Lines that finish a run: its folded line when it shows fewer events than it has. */
  const finish = (r: Run): string[] => {
    if (r === tail) {
      tail = undefined;
      r.shown = r.count;
      return [runLine(r)];
    }
    if (r.count > r.shown) {
      r.shown = r.count;
      return [runLine(r)];
    }
    return [];
  };

  /** Make the tail permanent: later repeats of it fold into a new line. */
  const commitTail = (): string[] => (tail ? finish(tail) : []);

  /** End every guest's run, oldest last event first. */
  const flushRuns = (): string[] => {
    const ended = [...runs.values()].sort((a, b) => a.lastAt - b.lastAt || a.guest - b.guest);
    runs.clear();
    return ended.flatMap(finish);
  };

  const progressText = (): string => {
    const elapsed = (now() - startedAt) / 1000;
    const guests = [...new Set([...states.keys(), ...perGuest.keys()])].sort((a, b) => a - b);
    const parts = [`${elapsed.toFixed(1)} s`, `${count(total)} event${total === 1 ? "" : "s"}`];
    for (const g of guests)
      parts.push(`${guestName(g)} ${states.get(g) ?? "running"} (${count(perGuest.get(g) ?? 0)})`);
    const text = parts.join(" · ");
    const cols = (stream.columns && stream.columns > 0 ? stream.columns : 80) - 1;
    const chars = [...text];
    return chars.length > cols ? `${chars.slice(0, Math.max(0, cols - 1)).join("")}…` : text;
  };

  let drawnTailCount = 0;
  const refresh = (): void => {
    if (closed) return;
    const nextFooter = now() - startedAt >= progressAfterMs ? progressText() : "";
    const tailChanged = tail !== undefined && tail.count !== drawnTailCount;
    if (nextFooter === footer && !tailChanged) return;
    footer = nextFooter;
    if (tail) {
      tail.shown = tail.count;
      drawnTailCount = tail.count;
    }
    stream.write(`${eraseLive()}${drawLive()}`);
  };

  const timer = tty ? setInterval(refresh, Math.max(MIN_REFRESH_MS, opts.refreshMs ?? MIN_REFRESH_MS)) : undefined;
  timer?.unref();

  return {
    event(guest, e) {
      if (closed) return;
      const at = now();
      total++;
      perGuest.set(guest, (perGuest.get(guest) ?? 0) + 1);
      const key = foldKey(guest, e);
      const run = runs.get(guest);
      if (run && run.key === key) {
        run.count++;
        run.last = e;
        run.lastAt = at;
        // The tail is redrawn by the timer; elsewhere a long run is shown now and then.
        if (!tty && at - run.printedAt >= FOLD_FLUSH_MS) {
          run.printedAt = at;
          emit(finish(run));
        }
        return;
      }
      // The tail first: it is on screen already, above anything pending.
      const lines = [...commitTail(), ...(run ? finish(run) : [])];
      const fresh: Run = { guest, key, first: e, last: e, count: 1, shown: 1, firstAt: at, lastAt: at, printedAt: at };
      runs.set(guest, fresh);
      if (tty) {
        tail = fresh;
        drawnTailCount = 1;
      } else lines.push(runLine(fresh));
      emit(lines);
    },

    healthVm(r) {
      if (closed) return;
      const text = `health VM restarted after ${r.reason}: ${r.detail} (down ${count(r.downMs)} ms)`;
      // Everything before the restart is printed before it; runs start again after it.
      emit([...commitTail(), ...flushRuns(), `${c.dim(formatClock(now()))} ${c.magenta(c.bold(text))}`]);
    },

    guestState(guest, state) {
      if (closed) return;
      states.set(guest, state);
      const run = runs.get(guest);
      if (state !== "running" && run) {
        runs.delete(guest);
        emit(finish(run));
      }
    },

    print(text) {
      if (closed) {
        stream.write(`${text}\n`);
        return;
      }
      emit([...commitTail(), text]);
    },

    close() {
      if (closed) return;
      closed = true;
      if (timer) clearInterval(timer);
      footer = "";
      const lines = [...commitTail(), ...flushRuns()];
      if (tty) stream.write(`${eraseLive()}${lines.length > 0 ? `${lines.join("\n")}\n` : ""}`);
      else if (lines.length > 0) stream.write(`${lines.join("\n")}\n`);
    },
  };
}
