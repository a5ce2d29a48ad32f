import assert from "node:assert/strict";
import { BufferPool } from "../../src/common/bytes.ts";

Deno.test("BufferPool: bulk data reuses pooled buffers; small data gets exact copies that never pin one", () => {
  const pool = new BufferPool(1024, 2);
  const big = new Uint8Array(512).fill(7);
  const a = pool.copy(big);
  assert.equal(a.buffer.byteLength, 1024);
  assert.deepEqual(a, big);
  pool.give(a);
  const b = pool.copy(big.subarray(0, 100));
  assert.equal(b.buffer, a.buffer, "the given-back buffer is taken again");
  // A turn's line (below size/16) is copied exactly: waiting for credit, it holds 10 bytes.
  const line = pool.copy(new Uint8Array(10).fill(1));
  assert.equal(line.buffer.byteLength, 10);
  pool.give(line); // not pooled
  // Larger than a pooled buffer: exact, and never pooled.
  const huge = pool.copy(new Uint8Array(4096));
  assert.equal(huge.buffer.byteLength, 4096);
  pool.give(huge);
  // At most `keep` free buffers are held.
  const bufs = [pool.copy(big), pool.copy(big), pool.copy(big), b];
  for (const x of bufs) pool.give(x);
  const again = [pool.copy(big), pool.copy(big), pool.copy(big)];
  assert.equal(new Set(again.map((x) => x.buffer)).size, 3);
  assert.equal(again.filter((x) => bufs.some((y) => y.buffer === x.buffer)).length, 2);
});
