/**
 * A byte ring addressed by absolute offset: it keeps the last `capacity`
 * bytes ever appended, so a reader can ask for "everything from offset N"
 * as long as N is still held.
 *
 * Memory follows use: the buffer starts small and doubles as output comes,
 * up to `capacity`, so a command that prints a line costs a line, not a
 * megabyte; `clear()` gives it back while the offsets go on.
 */
const INITIAL = 16 * 1024;

export class RingBuffer {
  private buf: Uint8Array;
  private first = 0;
  private total = 0;

  /** `start`: the offset of the first byte to come (output that was not kept). */
  constructor(readonly capacity: number, start = 0) {
    this.buf = new Uint8Array(Math.min(capacity, INITIAL));
    this.first = this.total = start;
  }

  /** Offset just past the newest byte. */
  get end(): number {
    return this.total;
  }

  /** Offset of the oldest byte still held. */
  get start(): number {
    return this.first;
  }

  /** Bytes of memory the ring holds now. */
  get footprint(): number {
    return this.buf.length;
  }

  append(data: Uint8Array): void {
    let src = data;
    if (src.length > this.capacity) {
      this.total += src.length - this.capacity;
      this.first = this.total;
      src = src.subarray(src.length - this.capacity);
    }
    const held = this.total - this.first;
    if (held + src.length > this.buf.length && this.buf.length < this.capacity) {
      this.grow(held + src.length);
    }
    this.write(this.total, src);
    this.total += src.length;
    this.first = Math.max(this.first, this.total - this.buf.length);
  }

  /** A copy of up to `max` bytes from `from` (clamped to what is held). */
  read(from: number, max: number): Uint8Array {
    const begin = Math.max(from, this.first);
    const out = new Uint8Array(Math.max(0, Math.min(max, this.total - begin)));
    this.readInto(begin, out);
    return out;
  }

  /**
   * Copies bytes from offset `from` (clamped to what is held) into `dest`, as many as
   * fit and are held; returns how many. Allocates nothing.
   */
  readInto(from: number, dest: Uint8Array): number {
    const begin = Math.max(from, this.first);
    const n = Math.max(0, Math.min(dest.length, this.total - begin));
    const size = this.buf.length;
    const at = begin % size;
    const head = Math.min(n, size - at);
    dest.set(this.buf.subarray(at, at + head));
    if (head < n) dest.set(this.buf.subarray(0, n - head), head);
    return n;
  }

  /** Forgets every byte held (offsets go on from `end`) and gives the memory back. */
  clear(): void {
    this.first = this.total;
    this.buf = new Uint8Array(Math.min(this.capacity, INITIAL));
  }

  private grow(need: number): void {
    let size = this.buf.length;
    while (size < need && size < this.capacity) size *= 2;
    size = Math.min(size, this.capacity);
    const held = this.read(this.first, this.total - this.first);
    this.buf = new Uint8Array(size);
    this.write(this.first, held);
  }

  /** Copies `src` to where offset `at` lives, wrapping. */
  private write(at: number, src: Uint8Array): void {
    const size = this.buf.length;
    const pos = at % size;
    const head = Math.min(src.length, size - pos);
    this.buf.set(src.subarray(0, head), pos);
    if (head < src.length) this.buf.set(src.subarray(head), 0);
  }
}
