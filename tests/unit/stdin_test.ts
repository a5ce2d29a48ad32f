/** ReadAhead (client/stdin.ts): a bulk stdin read one chunk ahead. */
import assert from "node:assert/strict";
import { ReadAhead, type StdinReader } from "../../src/client/stdin.ts";

/** A reader that gives `chunks` in order, then the end (or throws `fail` there). */
function source(chunks: string[], fail?: Error): StdinReader & { reads: number } {
  const enc = new TextEncoder();
  const src = {
    reads: 0,
    read(buf: Uint8Array): Promise<number | null> {
      const c = chunks[src.reads++];
      if (c === undefined) return fail ? Promise.reject(fail) : Promise.resolve(null);
      buf.set(enc.encode(c));
      return Promise.resolve(c.length);
    },
  };
  return src;
}

const text = (b: Uint8Array | null) => b === null ? null : new TextDecoder().decode(b);

Deno.test("ReadAhead gives every chunk in order, each intact until the next call, then the end", async () => {
  const src = source(["one", "two", "three"]);
  const r = new ReadAhead(src, 16, 8);
  const first = await r.next();
  assert.equal(src.reads, 2, "the second read runs while the first chunk is handled");
  assert.equal(text(first), "one", "the read ahead went to the other buffer");
  assert.equal(first!.byteOffset, 8, "room kept before the data");
  assert.equal(text(await r.next()), "two");
  assert.equal(text(await r.next()), "three");
  assert.equal(await r.next(), null);
});

Deno.test("ReadAhead rethrows a failed read when asked for it, not before", async () => {
  let unhandled = 0;
  const count = (e: PromiseRejectionEvent) => {
    unhandled++;
    e.preventDefault();
  };
  globalThis.addEventListener("unhandledrejection", count);
  try {
    const r = new ReadAhead(source(["only"], new Error("EIO")), 16);
    assert.equal(text(await r.next()), "only");
    await new Promise((resolve) => setTimeout(resolve, 0)); // the failed read settles
    await assert.rejects(r.next(), /EIO/);
    assert.equal(unhandled, 0);
  } finally {
    globalThis.removeEventListener("unhandledrejection", count);
  }
});

Deno.test("ReadAhead with ahead off reads only when asked", async () => {
  const src = source(["a", "b"]);
  const r = new ReadAhead(src, 4, 0, false);
  assert.equal(text(await r.next()), "a");
  assert.equal(src.reads, 1);
  assert.equal(text(await r.next()), "b");
  assert.equal(await r.next(), null);
});
