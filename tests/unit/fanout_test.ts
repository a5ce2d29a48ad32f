import assert from "node:assert/strict";
import { BULK_READ_CHUNK, Fanout, READ_CHUNK } from "../../src/agent/fanout.ts";
import { CH_STDERR, CH_STDOUT } from "../../src/protocol/frames.ts";
import { fakeConn, framed } from "./fakes.ts";

const text = (d: [number, number, string][]) => d.map(([, , t]) => t).join("");

Deno.test("fanout: a late watcher gets what is kept, then live output, then the last message", () => {
  let done = 0;
  const f = new Fanout([CH_STDOUT, CH_STDERR], 1024, { ghostMs: 1000, onDone: () => done++ });
  f.append(0, framed("hello "));
  f.append(1, framed("oops"));
  const { conn, sent } = fakeConn();
  const w = f.watch(conn, 7, 1 << 20);
  f.pump(w);
  assert.deepEqual(sent.data, [[CH_STDOUT, 0, "hello "], [CH_STDERR, 0, "oops"]]);
  f.append(0, framed("world"));
  assert.deepEqual(sent.data.at(-1), [CH_STDOUT, 6, "world"]);
  f.end((sid) => ({ t: "exit", sid, code: 3 }));
  assert.deepEqual(sent.controls.at(-1), { t: "exit", sid: 7, code: 3 });
  assert.equal(done, 1);
  assert.equal(f.watchers.size, 0);
});

Deno.test("fanout: credit bounds what is sent; offsets and --offset pick up where asked", () => {
  const f = new Fanout([CH_STDOUT], 1024, { ghostMs: 1000 });
  f.append(0, framed("abcdefghij"));
  const { conn, sent } = fakeConn();
  const w = f.watch(conn, 1, 4, [2]);
  f.pump(w);
  assert.deepEqual(sent.data, [[CH_STDOUT, 2, "cdef"]]);
  w.onCredit(4);
  assert.deepEqual(sent.data.at(-1), [CH_STDOUT, 6, "ghij"]);
  f.append(0, framed("kl"));
  f.end((sid) => ({ t: "exit", sid, code: 0 }));
  assert.equal(
    sent.controls.length,
    0,
    "the exit goes after the last byte, which waits for credit",
  );
  w.onCredit(4);
  assert.deepEqual(sent.data.at(-1), [CH_STDOUT, 10, "kl"]);
  assert.deepEqual(sent.controls, [{ t: "exit", sid: 1, code: 0 }]);
});

Deno.test("fanout: a slow watcher stops reading; nobody watching drops the oldest", () => {
  const f = new Fanout([CH_STDOUT], 64, { ghostMs: 1000 });
  assert.equal(f.room(0), READ_CHUNK, "nobody watching: read on, the ring drops the oldest");
  const { conn } = fakeConn();
  const w = f.watch(conn, 1, 16);
  f.append(0, framed("x".repeat(16))); // sent, not confirmed
  assert.equal(f.room(0), 64 - 16);
  f.append(0, framed("y".repeat(48)));
  assert.equal(f.room(0), 0, "the ring holds all it may: the reader waits");
  w.onCredit(16); // the client wrote the first 16: their space is free again …
  assert.equal(f.room(0), 16, "… while the next 16 went out on that credit");
  w.onCredit(48);
  assert.equal(f.room(0), 64, "the rest went out and the credit is whole again: all confirmed");
  f.leave(w, "detach");
  assert.equal(f.room(0), READ_CHUNK);
});

Deno.test("fanout: a lost watcher leaves a ghost that keeps its bytes and can be resumed", async () => {
  const f = new Fanout([CH_STDOUT], 32, { ghostMs: 50 });
  const a = fakeConn();
  const w = f.watch(a.conn, 1, 8);
  f.append(0, framed("0123456789")); // 8 sent, none confirmed
  f.leave(w, "lost");
  assert.ok(f.hasGhosts);
  assert.equal(f.room(0), 32 - 10, "the ghost still holds offset 0");
  const b = fakeConn();
  const again = f.watch(b.conn, 2, 1024, [8], w.id);
  f.pump(again);
  assert.equal(f.hasGhosts, false, "resumed: the ghost is gone");
  assert.deepEqual(b.sent.data, [[CH_STDOUT, 8, "89"]]);
  // A ghost nobody claims goes after ghostMs.
  const c = fakeConn();
  const x = f.watch(c.conn, 3, 1);
  f.leave(x, "lost");
  assert.ok(f.hasGhosts);
  await new Promise((r) => setTimeout(r, 80));
  assert.equal(f.hasGhosts, false);
  assert.equal(text(b.sent.data), "89");
});

Deno.test("fanout: what nobody watched is dropped, and a watcher's next offset says so", () => {
  const f = new Fanout([CH_STDOUT], 8, { ghostMs: 1000 });
  f.append(0, framed("0123456789abcdef"));
  const { conn, sent } = fakeConn();
  const w = f.watch(conn, 1, 100, [0]);
  f.pump(w);
  assert.deepEqual(sent.data, [[CH_STDOUT, 8, "89abcdef"]], "offset 8: the first 8 are gone");
  f.discard();
  f.append(0, framed("zz"));
  assert.deepEqual(sent.data.at(-1), [CH_STDOUT, 16, "zz"]);
});

Deno.test("fanout: a read that fills READ_CHUNK asks once to grow; reads are larger only if it did", async () => {
  for (const grows of [true, false]) {
    const f = new Fanout([CH_STDOUT], 4 * 1024 * 1024, { ghostMs: 1000 });
    const asked: number[] = [];
    let asks = 0;
    // The source fills whatever it is given: three reads, then its end.
    await f.pipe(
      0,
      (into) => {
        asked.push(into.length);
        if (asked.length > 3) return Promise.resolve(null);
        into.fill(asked.length);
        return Promise.resolve(into);
      },
      undefined,
      () => {
        asks++;
        return grows;
      },
    );
    assert.equal(asks, 1, "asked once");
    assert.deepEqual(
      asked,
      grows
        ? [READ_CHUNK, BULK_READ_CHUNK, BULK_READ_CHUNK, BULK_READ_CHUNK]
        : [READ_CHUNK, READ_CHUNK, READ_CHUNK, READ_CHUNK],
    );
    const kept = grows ? READ_CHUNK + 2 * BULK_READ_CHUNK : 3 * READ_CHUNK;
    assert.equal(f.rings[0].end, kept, "every byte read is kept");
  }
});
