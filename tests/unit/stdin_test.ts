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

Deno.test("openBulkStdin reads bytes already waiting in a pipe at once, not through Deno's thread", async () => {
  // A child whose stdin is a pipe reads once told (SIGUSR1) that 5 bytes are in it: the
  // read settles within a few microtasks (read(2) through FFI), where Deno's read goes to
  // its blocking thread and back, which no microtask can wait out. Then the end of input
  // comes through Deno's read.
  const url = new URL("../../src/client/stdin.ts", import.meta.url).href;
  const code = `
    const { openBulkStdin } = await import(${JSON.stringify(url)});
    const r = openBulkStdin();
    const buf = new Uint8Array(64);
    const told = new Promise((resolve) => Deno.addSignalListener("SIGUSR1", resolve));
    console.log("ready");
    await told;
    let n = -1;
    r.read(buf).then((x) => (n = x));
    for (let i = 0; i < 5; i++) await Promise.resolve();
    console.log(n === 5 ? "direct " + new TextDecoder().decode(buf.subarray(0, 5)) : "deferred");
    await r.read(buf).then((x) => console.log("end", x));
    Deno.exit(0);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("ready\n")) {
    const { value, done } = await lines.read();
    assert.ok(!done, `the child ended early: ${out}`);
    out += value;
  }
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode("hello"));
  await w.close();
  child.kill("SIGUSR1");
  for (let r = await lines.read(); !r.done; r = await lines.read()) out += r.value;
  assert.equal((await child.status).code, 0);
  assert.equal(out, "ready\ndirect hello\nend null\n");
});
