/**
 * ws_socket.ts and relay/http.ts over real loopback TCP: our dialing side
 * against our serving side, Deno's own WebSocket (random mask keys) against
 * our server, and hand-made frames for the failure paths.
 */
import assert from "node:assert/strict";
import { connectWebSocket, UpgradeRefused } from "../../src/protocol/ws_client.ts";
import type { WsSocket } from "../../src/protocol/ws_socket.ts";
import { type HttpAnswer, type HttpRequest, serveHttp } from "../../src/relay/http.ts";
import { selfSignedTls } from "../../src/relay/tls_self_signed.ts";

interface Server {
  url: string;
  port: number;
  sockets: WsSocket[];
  logs: string[];
  close(): Promise<void>;
}

/** A server that upgrades /ws and echoes every message back (the payload is borrowed). */
async function echoServer(
  opts: { maxMessage?: number; headTimeoutMs?: number; echo?: boolean } = {},
): Promise<Server> {
  const sockets: WsSocket[] = [];
  const logs: string[] = [];
  const srv = await serveHttp({
    hostname: "127.0.0.1",
    port: 0,
    maxMessage: opts.maxMessage ?? 1024 * 1024,
    headTimeoutMs: opts.headTimeoutMs,
    log: (l) => logs.push(l),
  }, (req: HttpRequest): HttpAnswer => {
    if (req.path === "/boom") throw new Error("handler failed");
    if (req.path !== "/ws") return { status: 404, body: "not found\n" };
    return {
      upgrade(ws) {
        sockets.push(ws);
        ws.onmessage = (ev) => {
          if (opts.echo !== false) ws.send(ev.data as string | Uint8Array);
        };
      },
    };
  });
  return {
    url: `ws://127.0.0.1:${srv.addr.port}/ws`,
    port: srv.addr.port,
    sockets,
    logs,
    async close() {
      for (const s of sockets) s.close();
      await srv.shutdown();
    },
  };
}

/** Collects what a socket receives; `next()` waits for the next message. */
function inbox(ws: Pick<WsSocket, "onmessage">) {
  const got: unknown[] = [];
  let wake: (() => void) | undefined;
  ws.onmessage = (ev) => {
    const d = ev.data;
    got.push(d instanceof Uint8Array ? d.slice() : d);
    wake?.();
  };
  return {
    got,
    async next(): Promise<unknown> {
      while (got.length === 0) await new Promise<void>((r) => (wake = r));
      return got.shift();
    },
  };
}

function closed(ws: { onclose: ((ev: { code: number; reason: string }) => void) | null }) {
  return new Promise<{ code: number; reason: string }>((r) => (ws.onclose = r));
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** Raw TCP: sends the upgrade request and returns the connection after the 101. */
async function rawUpgrade(port: number): Promise<{ conn: Deno.TcpConn; head: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(
    new TextEncoder().encode(
      "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ),
  );
  return { conn, head: await readUntil(conn, "\r\n\r\n") };
}

async function readUntil(conn: Deno.Conn, end: string): Promise<string> {
  const buf = new Uint8Array(4096);
  let text = "";
  while (!text.includes(end)) {
    const n = await conn.read(buf);
    if (n === null) break;
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
  return text;
}

/** Reads to EOF; the bytes received. */
async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: number[] = [];
  const buf = new Uint8Array(4096);
  for (;;) {
    const n = await conn.read(buf).catch(() => null);
    if (n === null) return new Uint8Array(parts);
    parts.push(...buf.subarray(0, n));
  }
}

/** A client frame with a mask key (the payload is masked here). */
function clientFrame(opcode: number, payload: Uint8Array, fin = true, key = [1, 2, 3, 4]) {
  const n = payload.length;
  const h = n < 126 ? 2 : 4;
  const f = new Uint8Array(h + 4 + n);
  f[0] = (fin ? 0x80 : 0) | opcode;
  if (n < 126) f[1] = 0x80 | n;
  else {
    f[1] = 0x80 | 126;
    f[2] = n >> 8;
    f[3] = n & 0xff;
  }
  f.set(key, h);
  for (let i = 0; i < n; i++) f[h + 4 + i] = payload[i] ^ key[i & 3];
  return f;
}

Deno.test("ws: text and binary of every header size round-trip, in order, both directions", async () => {
  const srv = await echoServer();
  const ws = await connectWebSocket(srv.url);
  const box = inbox(ws);
  const sizes = [0, 1, 125, 126, 127, 65535, 65536, 300 * 1024];
  for (const [i, n] of sizes.entries()) ws.send(pattern(n, i));
  ws.send("héllo ✓");
  for (const [i, n] of sizes.entries()) {
    const m = await box.next();
    assert.ok(m instanceof Uint8Array, `message ${i} is binary`);
    assert.deepEqual(m, pattern(n, i), `message of ${n} bytes`);
  }
  assert.equal(await box.next(), "héllo ✓");
  // Many small sends in one tick leave in few writes and arrive whole and in order.
  for (let i = 0; i < 2000; i++) ws.send(`m${i}`);
  for (let i = 0; i < 2000; i++) assert.equal(await box.next(), `m${i}`);
  assert.equal(ws.bufferedAmount, 0);
  const done = closed(ws);
  ws.close(4000, "bye");
  assert.deepEqual(await done, { code: 4000, reason: "bye" });
  await srv.close();
});

Deno.test("ws: the server side takes Deno's own WebSocket (random mask keys) and the close reason", async () => {
  const srv = await echoServer();
  const ws = new WebSocket(srv.url);
  ws.binaryType = "arraybuffer";
  await new Promise((r, j) => {
    ws.onopen = r;
    ws.onerror = j;
  });
  const got: unknown[] = [];
  const all = new Promise<void>((r) => {
    ws.onmessage = (ev) => {
      got.push(ev.data);
      if (got.length === 3) r();
    };
  });
  ws.send("text ✓");
  ws.send(pattern(70_000, 7));
  ws.send(pattern(10, 8));
  await all;
  assert.equal(got[0], "text ✓");
  assert.deepEqual(new Uint8Array(got[1] as ArrayBuffer), pattern(70_000, 7));
  assert.deepEqual(new Uint8Array(got[2] as ArrayBuffer), pattern(10, 8));
  const serverClosed = closed(srv.sockets[0]);
  ws.close(4100, "done here");
  assert.deepEqual(await serverClosed, { code: 4100, reason: "done here" });
  await srv.close();
});

Deno.test("ws: fragments are joined, a ping gets its pong, and a close is answered", async () => {
  const srv = await echoServer();
  const { conn, head } = await rawUpgrade(srv.port);
  assert.match(head, /^HTTP\/1\.1 101 /);
  assert.match(head, /Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/);
  const enc = new TextEncoder();
  await conn.write(clientFrame(0x1, enc.encode("frag"), false));
  await conn.write(clientFrame(0x9, enc.encode("p!"))); // a ping between fragments
  await conn.write(clientFrame(0x0, enc.encode("mented"), true, [9, 8, 7, 6]));
  await conn.write(clientFrame(0x8, new Uint8Array([0x03, 0xe8])));
  const bytes = await readAll(conn);
  conn.close();
  // Server frames are unmasked: pong "p!", text "fragmented", close 1000.
  const expect = [0x8a, 2, ...enc.encode("p!"), 0x81, 10, ...enc.encode("fragmented"), 0x88, 2];
  assert.deepEqual([...bytes.subarray(0, expect.length)], expect);
  await srv.close();
});

Deno.test("ws: bytes sent right behind the head are the first frame, whatever the head held", async () => {
  const srv = await echoServer();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
  const head = new TextEncoder().encode(
    "GET /ws?x=\u00e9 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  );
  const bad = head.indexOf(0xc3); // "é": make it invalid UTF-8
  head[bad] = 0xff;
  const frame = clientFrame(0x1, new TextEncoder().encode("early"));
  const both = new Uint8Array(head.length + frame.length);
  both.set(head);
  both.set(frame, head.length);
  await conn.write(both); // one write: the frame arrives in the same read as the head
  const answer = await readUntil(conn, "early");
  conn.close();
  assert.match(answer, /^HTTP\/1\.1 101 /);
  // The echo: a server text frame (0x81, decoded as U+FFFD) of 5 bytes, right after the 101's head.
  assert.ok(answer.endsWith("\r\n\r\n\ufffd\u0005early"), JSON.stringify(answer));
  await srv.close();
});

Deno.test("ws: oversized, unmasked and malformed frames close the connection", async () => {
  const srv = await echoServer({ maxMessage: 1000 });
  // Too large, through our client.
  const ws = await connectWebSocket(srv.url);
  const done = closed(ws);
  ws.send(new Uint8Array(1001));
  assert.deepEqual(await done, { code: 1009, reason: "protocol error: frame too large" });
  const cases: [string, Uint8Array][] = [
    ["unmasked", new Uint8Array([0x81, 0x01, 0x41])],
    ["reserved bits", clientFrame(0x1 | 0x40, new Uint8Array([0x41]))],
    ["bad opcode", clientFrame(0x3, new Uint8Array([0x41]))],
    ["long control frame", clientFrame(0x9, new Uint8Array(126))],
    ["continuation first", clientFrame(0x0, new Uint8Array([0x41]))],
    ["not UTF-8", clientFrame(0x1, new Uint8Array([0xff, 0xfe]))],
  ];
  for (const [name, frame] of cases) {
    const { conn } = await rawUpgrade(srv.port);
    await conn.write(frame);
    const rest = await readAll(conn); // the server ends the connection
    conn.close();
    assert.ok(!rest.includes(0x41), `${name}: nothing echoed`);
  }
  await srv.close();
});

Deno.test("ws: trim gives back idle buffers, and big messages still pass afterwards", async () => {
  const srv = await echoServer();
  const ws = await connectWebSocket(srv.url);
  const box = inbox(ws);
  ws.send(pattern(200_000, 1));
  assert.deepEqual(await box.next(), pattern(200_000, 1));
  for (let i = 0; i < 3; i++) {
    ws.trim();
    srv.sockets[0].trim();
  }
  ws.send("small");
  assert.equal(await box.next(), "small");
  ws.send(pattern(150_000, 2));
  assert.deepEqual(await box.next(), pattern(150_000, 2));
  ws.close();
  await srv.close();
});

Deno.test("http: plain answers, 404, handler errors, malformed heads, bad upgrades, slow heads", async () => {
  const srv = await echoServer({ headTimeoutMs: 300 });
  const base = `http://127.0.0.1:${srv.port}`;
  const notFound = await fetch(`${base}/nope`);
  assert.equal(notFound.status, 404);
  assert.equal(await notFound.text(), "not found\n");
  const boom = await fetch(`${base}/boom`);
  assert.equal(boom.status, 500);
  await boom.body?.cancel();
  assert.match(srv.logs.join("\n"), /request failed: handler failed/);

  const raw = async (text: string) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
    await conn.write(new TextEncoder().encode(text));
    const answer = new TextDecoder().decode(await readAll(conn));
    conn.close();
    return answer;
  };
  assert.match(await raw("NONSENSE\r\n\r\n"), /^HTTP\/1\.1 400 .*bad request line/s);
  assert.match(await raw("GET http://[ HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 400 .*bad request line/s);
  assert.match(await raw("GET / HTTP/1.1\r\nno colon here\r\n\r\n"), /^HTTP\/1\.1 400 /);
  assert.match(
    await raw("GET / HTTP/1.1\r\nX: " + "a".repeat(20_000) + "\r\n\r\n"),
    /^HTTP\/1\.1 400 .*too large/s,
  );
  const upgrade = (extra: string, method = "GET") =>
    raw(`${method} /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n${extra}\r\n`);
  const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
  assert.match(
    await upgrade(`Connection: Upgrade\r\n${key}Sec-WebSocket-Version: 8\r\n`),
    /^HTTP\/1\.1 400 .*Version/s,
  );
  assert.match(
    await upgrade(
      "Connection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n",
    ),
    /^HTTP\/1\.1 400 .*Key/s,
  );
  assert.match(
    await upgrade(`${key}Sec-WebSocket-Version: 13\r\n`),
    /^HTTP\/1\.1 400 .*Connection: Upgrade/s,
  );
  assert.match(
    await upgrade(`Connection: Upgrade\r\n${key}Sec-WebSocket-Version: 13\r\n`, "POST"),
    /^HTTP\/1\.1 400 .*GET/s,
  );
  // A client that never finishes its head is dropped after the head timeout.
  assert.equal(await raw("GET /ws HTTP/1.1\r\nHost: x\r\n"), "");
  // Our client sees a refusal's status.
  await assert.rejects(
    connectWebSocket(`ws://127.0.0.1:${srv.port}/nope`),
    (e) => e instanceof UpgradeRefused && e.refused.status === 404,
  );
  await srv.close();
});

Deno.test("ws: a client masks every frame with its own unpredictable key (RFC 6455 §5.3)", async () => {
  // A bare TCP server that answers the upgrade and records the raw bytes of the frames.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const raw: Uint8Array[] = [];
  const served = (async () => {
    const conn = await listener.accept();
    const buf = new Uint8Array(1 << 20);
    let n = 0;
    for (;;) {
      const r = await conn.read(buf.subarray(n));
      if (r === null) break;
      n += r;
      const text = new TextDecoder().decode(buf.subarray(0, n));
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        const key = /sec-websocket-key: (\S+)/i.exec(text)![1];
        const { acceptKey } = await import("../../src/protocol/http1.ts");
        const answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
          `Connection: Upgrade\r\nSec-WebSocket-Accept: ${await acceptKey(key)}\r\n\r\n`;
        await conn.write(new TextEncoder().encode(answer));
        n = 0;
        break;
      }
    }
    for (;;) {
      const r = await conn.read(buf.subarray(n));
      if (r === null) break;
      n += r;
      if (n >= 3 * 106) break; // three frames: 2 header bytes, a 4-byte key, 100 bytes
    }
    raw.push(buf.slice(0, n));
    conn.close();
  })();
  const ws = await connectWebSocket(`ws://127.0.0.1:${port}/`);
  const payload = pattern(100, 7);
  for (let i = 0; i < 3; i++) ws.send(payload);
  await served;
  listener.close();
  ws.close();
  const bytes = raw[0];
  const keys: string[] = [];
  for (let at = 0, i = 0; i < 3; i++) {
    assert.equal(bytes[at] & 0x0f, 0x2, "binary");
    assert.equal(bytes[at + 1] & 0x80, 0x80, "masked");
    assert.equal(bytes[at + 1] & 0x7f, 100);
    const key = bytes.subarray(at + 2, at + 6);
    keys.push(key.join(","));
    const body = bytes.slice(at + 6, at + 106);
    for (let j = 0; j < body.length; j++) body[j] ^= key[j & 3];
    assert.deepEqual(body, payload, "the payload unmasks to what was sent");
    at += 106;
  }
  assert.equal(new Set(keys).size, 3, "a new key for every frame");
  assert.ok(keys.every((k) => k !== "0,0,0,0"));
});

Deno.test("ws: xorMask is the bytewise mask at every alignment and length", async () => {
  const { xorMask } = await import("../../src/protocol/ws_socket.ts");
  for (let shift = 0; shift < 8; shift++) {
    for (const len of [0, 1, 3, 4, 5, 17, 64, 1001]) {
      const buf = pattern(shift + 4 + len + 3, shift + len);
      buf.set([0x12, 0x34, 0x56, 0x78], shift);
      const want = buf.slice();
      for (let i = 0; i < len; i++) want[shift + 4 + i] ^= want[shift + (i & 3)];
      xorMask(buf, shift + 4, shift + 4 + len, shift);
      assert.deepEqual(buf, want, `shift ${shift} len ${len}`);
    }
  }
});

Deno.test("https: a connection that never starts its TLS handshake is dropped after the head timeout", async () => {
  const dir = await Deno.makeTempDir();
  const tls = await selfSignedTls(dir, []);
  const srv = await serveHttp({
    hostname: "127.0.0.1",
    port: 0,
    maxMessage: 1024,
    headTimeoutMs: 300,
    cert: tls.cert,
    key: tls.key,
    log: () => {},
  }, () => ({ status: 404, body: "not found\n" }));
  try {
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: srv.addr.port });
    assert.equal((await readAll(silent)).length, 0, "closed, nothing said");
    silent.close();
  } finally {
    await srv.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
