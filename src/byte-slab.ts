/**
 * Small byte buffers carved out of larger ones. V8 gives a typed array of
 * more than 64 bytes a backing store of its own, off the heap: about 0.3–0.6
 * µs per allocation, more than the rest of encoding a context record. A slab
 * hands out views of one shared ArrayBuffer instead (about 40 ns each).
 *
 * Every view is zero-filled, 8-aligned and never handed out twice: no part
 * of a slab is reused, so a caller may keep what it got for as long as it
 * likes (the slab stays alive while any of its views does: a kept view
 * keeps at most one slab, 4 KiB by default).
 */
export class ByteSlab {
  private buffer: ArrayBuffer;
  private next = 0;

  /** `slabBytes` to an ArrayBuffer; a request of more than a quarter of that gets an array of its own. */
  constructor(private readonly slabBytes = 4096) {
    if (!Number.isInteger(slabBytes) || slabBytes < 64) {
      throw new RangeError(`a byte slab needs at least 64 bytes: ${slabBytes}`);
    }
    this.buffer = new ArrayBuffer(slabBytes);
  }

  /** A fresh zero-filled view of `n` bytes. */
  take(n: number): Uint8Array {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`a byte slab hands out whole bytes: ${n}`);
    if (n > this.slabBytes / 4) return new Uint8Array(n);
    const size = Math.ceil(n / 8) * 8;
    if (this.next + size > this.slabBytes) {
      this.buffer = new ArrayBuffer(this.slabBytes);
      this.next = 0;
    }
    const out = new Uint8Array(this.buffer, this.next, n);
    this.next += size;
    return out;
  }
}
