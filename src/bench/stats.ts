/**
 * Statistics for the benchmarks: nearest-rank percentiles (the definition
 * the guest's and the baseline's histogram use, guest/include/bench_hist.h),
 * medians, unit conversions and a growable sample buffer.
 */
import { GuardvisorError } from "../errors.js";

/** p50 and p99 of one latency distribution, in microseconds. */
export interface Pcts {
  p50: number;
  p99: number;
}

function checkSamples(values: ArrayLike<number>, what: string): void {
  if (values.length === 0) throw new GuardvisorError("INTERNAL", `${what}: no samples`);
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new GuardvisorError("INTERNAL", `${what}: sample ${i} is not a number`);
  }
}

function sorted(values: ArrayLike<number>): Float64Array {
  return Float64Array.from(values).sort();
}

/**
 * Nearest-rank percentile: the smallest sample with at least ceil(q * n)
 * samples at or below it. `q` is in (0, 1]; there must be at least one sample.
 */
export function percentile(values: ArrayLike<number>, q: number): number {
  if (!(q > 0 && q <= 1)) throw new GuardvisorError("INTERNAL", `percentile: q ${q} is not in (0, 1]`);
  checkSamples(values, "percentile");
  return percentileOfSorted(sorted(values), q);
}

function percentileOfSorted(s: Float64Array, q: number): number {
  // ceil(q * n) in integers (q to a millionth), so 0.99 * 100 is exactly 99.
  const rank = Math.max(1, Math.ceil((Math.round(q * 1e6) * s.length) / 1e6));
  return s[rank - 1] as number;
}

/** p50 and p99 (nearest rank) of the samples. */
export function pcts(values: ArrayLike<number>, what = "pcts"): Pcts {
  checkSamples(values, what);
  const s = sorted(values);
  return { p50: percentileOfSorted(s, 0.5), p99: percentileOfSorted(s, 0.99) };
}

/** The median: the mean of the two middle samples for an even count. */
export function median(values: ArrayLike<number>): number {
  checkSamples(values, "median");
  const s = sorted(values);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** TSC cycles to microseconds at `tscKhz` kHz. */
export function cyclesToUs(cycles: number, tscKhz: number): number {
  if (!(tscKhz > 0)) throw new GuardvisorError("INTERNAL", `TSC rate ${tscKhz} kHz is not positive`);
  return (cycles * 1000) / tscKhz;
}

/** Events per second for `count` events in `cycles` TSC cycles at `tscKhz` kHz. */
export function perSecond(count: number, cycles: number, tscKhz: number): number {
  if (!(cycles > 0)) throw new GuardvisorError("INTERNAL", `${count} events in ${cycles} cycles: no time passed`);
  return count / (cycles / (tscKhz * 1000));
}

/** Rounds to `digits` decimals (for output only). */
export function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** A growable buffer of float samples (millions of event latencies without an object each). */
export class Samples {
  private buf = new Float64Array(1024);
  private n = 0;

  push(v: number): void {
    if (this.n === this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.n++] = v;
  }

  get length(): number {
    return this.n;
  }

  /** The samples from index `from` on (a view: do not keep it across push). */
  values(from = 0): Float64Array {
    return this.buf.subarray(Math.min(from, this.n), this.n);
  }
}
