import assert from "node:assert/strict";
import { RingBuffer } from "../../src/agent/ring.ts";

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("ring keeps the last capacity bytes, addressed by absolute offset", () => {
  const r = new RingBuffer(8);
  r.append(bytes("abcde"));
  assert.equal(r.start, 0);
  assert.equal(r.end, 5);
  assert.equal(text(r.read(0, 100)), "abcde");
  r.append(bytes("fghij")); // wraps
  assert.equal(r.start, 2);
  assert.equal(r.end, 10);
  assert.equal(text(r.read(2, 100)), "cdefghij");
  assert.equal(text(r.read(6, 3)), "ghi");
  assert.equal(text(r.read(0, 3)), "cde", "reads before start are clamped to start");
  assert.equal(r.read(10, 5).length, 0);
});

Deno.test("ring: an append larger than the capacity keeps its tail", () => {
  const r = new RingBuffer(4);
  r.append(bytes("xy"));
  r.append(bytes("0123456789"));
  assert.equal(r.end, 12);
  assert.equal(r.start, 8);
  assert.equal(text(r.read(8, 10)), "6789");
});

Deno.test("ring: many small appends equal one big one", () => {
  const r = new RingBuffer(1000);
  const all: number[] = [];
  for (let i = 0; i < 5000; i++) {
    const chunk = new Uint8Array((i % 13) + 1).fill(i & 0xff);
    all.push(...chunk);
    r.append(chunk);
  }
  assert.equal(r.end, all.length);
  assert.deepEqual([...r.read(r.start, 1000)], all.slice(all.length - 1000));
});
