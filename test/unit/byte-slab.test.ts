/**
 * ByteSlab (src/byte-slab.ts): the views it hands out are zero-filled,
 * 8-aligned, of the size asked, and never overlap, so each may be kept.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ByteSlab } from "../../src/byte-slab.js";

describe("ByteSlab", () => {
  it("hands out zero-filled, 8-aligned views that never overlap, across slabs", () => {
    const slab = new ByteSlab(256);
    const views = [1, 7, 8, 64, 13, 0, 40, 64, 64, 64, 9].map((n) => slab.take(n));
    views.forEach((v, i) => {
      assert.equal(v.byteOffset % 8, 0, `view ${i} is 8-aligned`);
      assert.ok(
        v.every((b) => b === 0),
        `view ${i} is zero-filled`,
      );
      v.fill(i + 1);
    });
    // Written after all were taken: had two views shared a byte, one would read the other's mark.
    views.forEach((v, i) => {
      assert.ok(
        v.every((b) => b === i + 1),
        `view ${i} kept its own bytes`,
      );
    });
    assert.deepEqual(
      views.map((v) => v.length),
      [1, 7, 8, 64, 13, 0, 40, 64, 64, 64, 9],
    );
  });

  it("gives a request of more than a quarter of a slab an array of its own", () => {
    const slab = new ByteSlab(256);
    const big = slab.take(65);
    assert.equal(big.length, 65);
    assert.equal(big.buffer.byteLength, 65);
  });

  it("refuses sizes that are not whole bytes", () => {
    const slab = new ByteSlab();
    assert.throws(() => slab.take(-1), RangeError);
    assert.throws(() => slab.take(1.5), RangeError);
    assert.throws(() => new ByteSlab(8), RangeError);
  });
});
