import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cyclesToUs, median, pcts, percentile, perSecond, round, Samples } from "../../src/bench/stats.js";

describe("bench statistics", () => {
  it("percentile is nearest-rank: the smallest sample with ceil(q*n) samples at or below it", () => {
    const hundred = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted
    assert.equal(percentile(hundred, 0.5), 50);
    assert.equal(percentile(hundred, 0.99), 99);
    assert.equal(percentile(hundred, 1), 100);
    assert.equal(percentile(hundred, 0.01), 1);
    assert.equal(percentile([7], 0.5), 7);
    assert.equal(percentile([7], 0.99), 7);
    assert.equal(percentile([1, 2], 0.5), 1);
    assert.equal(percentile([3, 1, 2], 0.5), 2);
    // 0.99 * 1000 is 990 exactly, not 990.0000000000001
    const thousand = Array.from({ length: 1000 }, (_, i) => i + 1);
    assert.equal(percentile(thousand, 0.99), 990);
    assert.equal(percentile(thousand, 0.999), 999);
    assert.equal(percentile(Float64Array.of(5, 1, 4, 2, 3), 0.5), 3);
  });

  it("pcts gives p50 and p99 and leaves its input alone", () => {
    const v = [5, 3, 1, 4, 2];
    assert.deepEqual(pcts(v), { p50: 3, p99: 5 });
    assert.deepEqual(v, [5, 3, 1, 4, 2]);
  });

  it("rejects empty input, NaN samples and q outside (0, 1]", () => {
    assert.throws(() => percentile([], 0.5), /no samples/);
    assert.throws(() => pcts([1, Number.NaN]), /sample 1 is not a number/);
    assert.throws(() => percentile([1], 0), /not in \(0, 1\]/);
    assert.throws(() => percentile([1], 1.5), /not in \(0, 1\]/);
    assert.throws(() => median([]), /no samples/);
  });

  it("median averages the middle pair", () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
  });

  it("converts TSC cycles to microseconds and rates", () => {
    assert.equal(cyclesToUs(3000, 3_000_000), 1); // 3 GHz: 3000 cycles = 1 us
    assert.equal(cyclesToUs(57_000, 3_000_000), 19);
    assert.equal(perSecond(50_000, 3_000_000_000, 3_000_000), 50_000); // 50k events in 1 s
    assert.throws(() => cyclesToUs(1, 0), /not positive/);
    assert.throws(() => perSecond(1, 0, 3_000_000), /no time passed/);
    assert.equal(round(1.23456, 2), 1.23);
  });

  it("Samples grows without losing values", () => {
    const s = new Samples();
    for (let i = 0; i < 5000; i++) s.push(i);
    assert.equal(s.length, 5000);
    assert.equal(s.values()[4999], 4999);
    assert.deepEqual([...s.values(4998)], [4998, 4999]);
    assert.equal(s.values(6000).length, 0);
  });
});
