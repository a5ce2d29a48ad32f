/**
 * A byte ring addressed by absolute offset: it keeps the last `capacity`
 * bytes ever appended, so a reader can ask for "everything from offset N"
 * as long as N is still held.
 */
export class RingBuffer {
  private readonly buf: Uint8Array;
  private total = 0;

  constructor(readonly capacity: number) {
    this.buf = new Uint8Array(capacity);
  }

  /** Offset just past the newest byte. */
  get end(): number {
    return this.total;
  }

  /** Offset of the oldest byte still held. */
  get start(): number {
    return Math.max(0, this.total - this.capacity);
  }

  append(data: Uint8Array): void {
    let src = data;
    if (src.length > this.capacity) {
      this.total += src.length - this.capacity;
      src = src.subarray(src.length - this.capacity);
    }
    const at = this.total % this.capacity;
    const first = Math.min(src.length, this.capacity - at);
    this.buf.set(src.subarray(0, first), at);
    if (first < src.length) this.buf.set(src.subarray(first), 0);
    this.total += src.length;
  }

  /** A copy of up to `max` bytes from `from` (clamped to what is held). */
  read(from: number, max: number): Uint8Array {
    const begin = Math.max(from, this.start);
    const n = Math.max(0, Math.min(max, this.end - begin));
    const out = new Uint8Array(n);
    const at = begin % this.capacity;
    const first = Math.min(n, this.capacity - at);
    out.set(this.buf.subarray(at, at + first));
    if (first < n) out.set(this.buf.subarray(0, n - first), first);
    return out;
  }
}
