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

Deno.test("ring: memory grows with the output, up to the capacity; clear gives it back", () => {
  const r = new RingBuffer(1024 * 1024);
  r.append(bytes("one line\n"));
  assert.ok(r.footprint <= 16 * 1024, "a line costs little");
  const big = new Uint8Array(300_000).map((_, i) => i & 0xff);
  r.append(big);
  assert.ok(r.footprint >= 300_009 && r.footprint <= 1024 * 1024);
  assert.deepEqual(r.read(9, big.length), big);
  assert.equal(text(r.read(0, 9)), "one line\n");
  for (let i = 0; i < 5; i++) r.append(big);
  assert.equal(r.footprint, 1024 * 1024);
  assert.equal(r.end - r.start, 1024 * 1024);
  assert.deepEqual(r.read(r.end - big.length, big.length), big);
  const end = r.end;
  r.clear();
  assert.equal(r.start, end);
  assert.equal(r.end, end);
  assert.ok(r.footprint <= 16 * 1024);
  r.append(bytes("after"));
  assert.equal(text(r.read(0, 100)), "after");
  assert.equal(r.start, end);
});

Deno.test("ring: growth keeps wrapped data in order, at odd capacities", () => {
  for (const cap of [5, 17, 16 * 1024 + 3, 40_000]) {
    const r = new RingBuffer(cap);
    const all: number[] = [];
    for (let i = 0; i < 400; i++) {
      const chunk = new Uint8Array((i * 37) % 301 + 1).fill(i & 0xff);
      all.push(...chunk);
      r.append(chunk);
      const held = Math.min(cap, all.length);
      assert.equal(r.end - r.start, held);
    }
    assert.deepEqual([...r.read(r.start, cap)], all.slice(all.length - Math.min(cap, all.length)));
  }
});
