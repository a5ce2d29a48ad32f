/**
 * The relay's wss:// listener (relay/tls_listener.ts), both kinds: Deno's with TCP_NODELAY
 * set on its socket (Linux), and node:tls sockets seen as the part of a Deno.Conn the relay
 * uses. Bytes both ways in order under back-pressure, end of stream, close, a taken port, and
 * a client that never finishes its handshake hurting no one else.
 */
import assert from "node:assert/strict";
import {
  listenDenoTls,
  type ListenerLike,
  listenNodeTls,
  listenTlsNoDelay,
} from "../../src/relay/tls_listener.ts";
import { connectionOptions, KEEPALIVE, USER_TIMEOUT_MS } from "../../src/common/tcp_options.ts";
import { selfSignedTls } from "../../src/relay/tls_self_signed.ts";

type Listen = (o: { hostname: string; port: number; cert: string; key: string }) => Promise<
  ListenerLike
>;
const KINDS: [string, Listen][] = [
  ["Deno.listenTls", async (o) => {
    await Promise.resolve();
    const l = listenDenoTls(o);
    if (!l) throw new Error("TCP_NODELAY could not be set on Deno's TLS listener (Linux, FFI)");
    return l;
  }],
  ["node:tls", listenNodeTls],
];

async function withListener(
  fn: (l: ListenerLike, ca: string) => Promise<void>,
  listen: Listen = listenTlsNoDelay,
) {
  const dir = await Deno.makeTempDir();
  try {
    const tls = await selfSignedTls(dir, []);
    const l = await listen({ hostname: "127.0.0.1", port: 0, ...tls });
    try {
      await fn(l, Deno.readTextFileSync(tls.caFile));
    } finally {
      l.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const dial = (port: number, ca: string) =>
  Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [ca] });

for (const [kind, listen] of KINDS) {
  Deno.test({
    name:
      `tls listener (${kind}): 8 MiB each way in order through small reads; the peer's close ends reading`,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      await withListener(async (l, ca) => {
        const client = await dial(l.addr.port, ca);
        const server = await l.accept();
        assert.equal((server.remoteAddr as Deno.NetAddr).hostname, "127.0.0.1");
        const size = 8 * 1024 * 1024;
        const data = crypto.getRandomValues(new Uint8Array(65536));
        const pattern = (i: number) => data[i % data.length];
        // Server echoes what it reads, with a small buffer (reads split chunks).
        const echo = (async () => {
          const buf = new Uint8Array(1000);
          for (;;) {
            const n = await server.read(buf);
            if (n === null) return;
            for (let off = 0; off < n;) off += await server.write(buf.subarray(off, n));
          }
        })();
        const writer = (async () => {
          for (let off = 0; off < size; off += data.length) {
            for (let o = 0; o < data.length;) o += await client.write(data.subarray(o));
          }
        })();
        let got = 0;
        const buf = new Uint8Array(70_000);
        for (;;) {
          const n = await client.read(buf);
          if (n === null) break;
          for (let i = 0; i < n; i++) {
            if (buf[i] !== pattern(got + i)) throw new Error(`byte ${got + i} differs`);
          }
          got += n;
          if (got === size) break;
        }
        assert.equal(got, size);
        await writer;
        // The client leaves: the server's reader sees the end.
        client.close();
        await echo;
        server.close();
        assert.throws(() => server.close(), Deno.errors.BadResource);
        await assert.rejects(
          () => server.write(new Uint8Array(1)),
          (e) => e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.BadResource,
        );
      }, listen);
    },
  });

  Deno.test({
    name:
      `tls listener (${kind}): accepted connections have TCP_NODELAY and keepalive; a taken port is AddrInUse`,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      await withListener(async (l, ca) => {
        const client = await dial(l.addr.port, ca);
        const server = await l.accept();
        await client.write(new Uint8Array([1]));
        assert.equal(await server.read(new Uint8Array(4)), 1);
        const local = client.localAddr as Deno.NetAddr;
        const opts = connectionOptions(l.addr, local);
        // Both ends' addresses are compared, not their ports alone.
        assert.equal(connectionOptions(l.addr, { ...local, hostname: "127.0.0.2" }), undefined);
        assert.equal(opts?.noDelay, true, "the relay's side");
        // node:tls sets the idle time only; Deno's listener gets all of KEEPALIVE.
        assert.equal(opts?.keepalive?.idleS, KEEPALIVE.idleS, "keepalive");
        if (kind === "Deno.listenTls") {
          assert.deepEqual(opts?.keepalive, KEEPALIVE);
          assert.equal(opts?.userTimeoutMs, USER_TIMEOUT_MS);
        }
        const dir = await Deno.makeTempDir();
        const tls = await selfSignedTls(dir, []);
        await assert.rejects(
          () => listen({ hostname: "127.0.0.1", port: l.addr.port, ...tls }),
          Deno.errors.AddrInUse,
        );
        await Deno.remove(dir, { recursive: true });
        client.close();
        server.close();
      }, listen);
    },
  });

  Deno.test({
    name: `tls listener (${kind}): a client that never finishes its handshake holds up no one else`,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      await withListener(async (l, ca) => {
        const silent = await Deno.connect({ hostname: "127.0.0.1", port: l.addr.port });
        const client = await dial(l.addr.port, ca);
        // node:tls hands a connection out once its handshake is done; Deno's listener at once,
        // the handshake running on the first read (the relay's head timeout ends a silent one).
        const stalled = kind === "Deno.listenTls" ? await l.accept() : undefined;
        const server = await l.accept();
        await client.write(new TextEncoder().encode("hi"));
        const buf = new Uint8Array(10);
        assert.equal(await server.read(buf), 2);
        client.close();
        assert.equal(await server.read(buf), null);
        server.close();
        stalled?.close();
        silent.close();
      }, listen);
    },
  });
}
