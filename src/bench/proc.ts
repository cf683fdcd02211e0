/**
 * What the benchmarks read about this process from /proc: its threads, the
 * CPU time of one thread (the health VM's vCPU thread, for its idle cost)
 * and the resident set size.
 */
import { readdirSync, readFileSync } from "node:fs";
import { GuardvisorError } from "../errors.js";

/** Linux reports /proc/<pid>/stat times in USER_HZ ticks, 100 per second on every architecture we run on. */
const USER_HZ = 100;

/** Thread ids of this process. */
export function threadIds(): number[] {
  return readdirSync("/proc/self/task")
    .map(Number)
    .filter((t) => Number.isInteger(t) && t > 0);
}

/** Threads in `after` that were not in `before`. */
export function newThreads(before: readonly number[], after: readonly number[]): number[] {
  const old = new Set(before);
  return after.filter((t) => !old.has(t));
}

/** Parse utime + stime (ticks) from a /proc/.../stat line; the command name may contain spaces and parentheses. */
export function parseStatCpuTicks(stat: string): number {
  const close = stat.lastIndexOf(")");
  if (close < 0) throw new GuardvisorError("INTERNAL", "unreadable /proc stat line");
  // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
  const rest = stat
    .slice(close + 2)
    .trim()
    .split(/\s+/);
  const utime = Number(rest[14 - 3]);
  const stime = Number(rest[15 - 3]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) {
    throw new GuardvisorError("INTERNAL", "unreadable utime/stime in a /proc stat line");
  }
  return utime + stime;
}

/**
 * CPU time a thread of this process has used, in nanoseconds: from
 * /proc/self/task/TID/schedstat (nanosecond resolution) when the kernel has
 * it, else from utime + stime in .../stat (10 ms resolution).
 */
export function threadCpuNs(tid: number): number {
  const dir = `/proc/self/task/${tid}`;
  try {
    const first = readFileSync(`${dir}/schedstat`, "utf8").trim().split(/\s+/)[0];
    const ns = Number(first);
    if (Number.isFinite(ns)) return ns;
  } catch {
    // no schedstat: fall back to stat below
  }
  try {
    return (parseStatCpuTicks(readFileSync(`${dir}/stat`, "utf8")) * 1e9) / USER_HZ;
  } catch (e) {
    if (e instanceof GuardvisorError) throw e;
    throw new GuardvisorError("INTERNAL", `cannot read the CPU time of thread ${tid}: it is gone`);
  }
}

/** Share of one core (percent) that thread `tid` used over the next `ms` milliseconds. */
export async function threadCpuPercent(tid: number, ms: number): Promise<number> {
  const c0 = threadCpuNs(tid);
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, ms));
  const c1 = threadCpuNs(tid);
  const wall = Number(process.hrtime.bigint() - t0);
  return (100 * (c1 - c0)) / wall;
}

/** Resident set size of this process, MiB. */
export function rssMiB(): number {
  return process.memoryUsage().rss / (1024 * 1024);
}
