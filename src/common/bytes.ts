/** Byte helpers shared by every role. */

/** One array holding `parts` one after the other. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Writes all of `data` (a write may take only part of it). */
export async function writeAll(
  w: { write(p: Uint8Array): Promise<number> },
  data: Uint8Array,
): Promise<void> {
  let off = 0;
  while (off < data.length) off += await w.write(data.subarray(off));
}

/**
 * Buffers for bytes kept a little while (output waiting to be written, stdin waiting for
 * the agent's credit), given back once used, so that bulk streaming makes no garbage:
 * `copy()` takes a free buffer (or makes one), `give()` returns it. Small data (a turn's
 * line) gets an exact copy instead: it may wait long (credit comes back in batches), and a
 * whole pooled buffer for each would cost far more than the copy. At most `keep` free
 * buffers are held.
 */
export class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  /** Below this, data is copied exactly rather than into a pooled buffer. */
  readonly small: number;

  constructor(readonly size: number, readonly keep = 32) {
    this.small = size / 16;
  }

  /** `data` copied into a pooled buffer, or an exact copy when small or larger than `size`. */
  copy(data: Uint8Array): Uint8Array {
    if (data.length < this.small || data.length > this.size) return data.slice();
    const buf = this.free.pop() ?? new ArrayBuffer(this.size);
    const out = new Uint8Array(buf, 0, data.length);
    out.set(data);
    return out;
  }

  /** Gives back a buffer `copy()` made, once nothing reads it any more. */
  give(b: Uint8Array): void {
    if (b.buffer.byteLength === this.size && this.free.length < this.keep) {
      this.free.push(b.buffer as ArrayBuffer);
    }
  }
}
