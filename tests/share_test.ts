/**
 * Issue 17 without a browser: what `/v1/share` refuses at the protocol level (a foreign
 * Origin, a page asking for more than its link, a resume the relay does not know), and
 * `tether share`'s own failures. The page itself is tested in Chromium (browser_test.ts).
 */
import assert from "node:assert/strict";
import { connectWebSocket } from "../src/protocol/ws_client.ts";
import type { WsSocket } from "../src/protocol/ws_socket.ts";
import { PROTOCOL_VERSION } from "../src/protocol/version.ts";
import { eventually, World } from "./helpers.ts";
import { fromBase64, Initiator, keyPairFromPrivate, toBase64 } from "../src/protocol/e2e.ts";
import { e2ePrologue, openControl, sealControl } from "../src/protocol/e2e_stream.ts";
import type { Sealed } from "../src/protocol/messages.ts";

/** A share page as a program: a WebSocket on /v1/share that collects what it is sent. */
class RawPage {
  readonly got: Record<string, unknown>[] = [];
  closed = false;
  private constructor(readonly ws: WsSocket) {
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") this.got.push(JSON.parse(ev.data));
    };
    ws.onclose = () => (this.closed = true);
  }

  static async open(w: World, origin: string | undefined): Promise<RawPage> {
    const ws = await connectWebSocket(`ws://127.0.0.1:${w.port}/v1/share`, {
      headers: origin ? { Origin: origin } : {},
    });
    return new RawPage(ws);
  }

  send(msg: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(msg));
  }

  hello(share: Record<string, string>): void {
    this.send({ t: "hello", v: PROTOCOL_VERSION, role: "client", version: "test", share });
  }

  next(t: string): Promise<Record<string, unknown>> {
    return eventually(() => this.got.find((m) => m.t === t), `a '${t}' message`, 10_000);
  }
}

const own = (w: World) => `http://127.0.0.1:${w.port}`;

/** The token of a share link: ID.SECRET, what the page sends (the keys after it stay in the page). */
function tokenOf(link: string): string {
  return link.split("#")[1].split(".").slice(0, 2).join(".");
}

async function shareJson(w: World, args: string[]) {
  const r = await w.tether(["share", ...args, "--json"]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  return JSON.parse(r.stdout) as { link: string; id: string; session: string };
}

Deno.test("share endpoint: a foreign or missing Origin is refused before the token is looked at", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const s = await shareJson(w, ["box", "--new"]);
  for (const origin of ["http://evil.example", undefined]) {
    const page = await RawPage.open(w, origin);
    page.hello({ token: tokenOf(s.link) });
    const err = await page.next("error");
    assert.equal(err.code, "forbidden");
    assert.match(String(err.message), origin ? /evil\.example.*not the relay's own/ : /Origin/);
    await eventually(() => page.closed, "the socket closed");
  }
  // The token was not spent: the right origin joins with it.
  const page = await RawPage.open(w, own(w));
  page.hello({ token: tokenOf(s.link) });
  const welcome = await page.next("welcome");
  assert.equal((welcome.share as { session: string }).session, s.session);
  page.ws.close();
});

Deno.test("share endpoint: a page opens its own session only, asks nothing, and a resume the relay never gave is refused", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const mine = await shareJson(w, ["box", "--new"]);
  const theirs = await shareJson(w, ["box", "--new"]);
  const [box] = await w.machines();
  const page = await RawPage.open(w, own(w));
  page.hello({ token: tokenOf(mine.link) });
  await page.next("welcome");
  // It names the other session (and asks for a command): it gets its link's session.
  page.send({
    t: "open",
    sid: 1,
    kind: "pty",
    machine: box.id,
    session: theirs.session,
    argv: ["/bin/sh", "-c", "echo escaped"],
    stdin: true,
    window: 65536,
  });
  const started = await page.next("started");
  assert.equal(started.session, mine.session);
  page.send({ t: "req", id: 7, op: "machines", args: {} });
  const res = await page.next("res");
  assert.equal((res.error as { code: string }).code, "forbidden");
  // An exec is not what a link opens: that connection ends, nobody else's.
  page.send({ t: "open", sid: 2, kind: "exec", argv: ["true"], stdin: false, window: 1 });
  await eventually(() => page.closed, "the page's connection closed");
  assert.equal((await w.tether(["exec", "box", "--", "true"])).code, 0);

  const stale = await RawPage.open(w, own(w));
  stale.hello({ resume: "0".repeat(40) });
  const err = await stale.next("error");
  assert.equal(err.code, "unauthenticated");
  assert.match(String(err.message), /can no longer reconnect/);
});

Deno.test("tether share: bad input fails clearly; a shared session outlives the agent's grace window", async () => {
  await using w = await World.create();
  await w.startAgent("box", { args: ["--session-grace", "1s"] });
  const fails = async (args: string[], code: string, message: RegExp) => {
    const r = await w.tether(["share", ...args, "--json"]);
    assert.notEqual(r.code, 0);
    const e = JSON.parse(r.stdout).error;
    assert.equal(e.code, code, r.stdout);
    assert.match(e.message, message);
  };
  await fails(["nosuchbox"], "machine_not_found", /nosuchbox/);
  await fails(["box", "--session", "zzzz"], "session_not_found", /zzzz/);
  await fails(["box", "--ttl", "8d"], "usage", /--ttl/);
  await fails(["box", "--uses", "0"], "usage", /--uses/);
  await fails(["box", "--new", "--session", "x"], "usage", /exclude/);
  await fails(["--revoke", "000000000000"], "session_not_found", /no share link/);
  const empty = await w.tether(["share", "--list"]);
  assert.equal(empty.code, 0);
  assert.match(empty.stderr, /no share links/);

  const s = await shareJson(w, ["box", "--new"]);
  const human = await w.tether(["share", "box", "--session", s.session]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(
    human.stdout,
    /^http:\/\/127\.0\.0\.1:\d+\/s#[0-9a-f]{12}\.[0-9a-f]{40}\.[\w-]{43}\.[\w-]{43}\n$/,
  );
  assert.match(human.stderr, /expires in 1h.*tether share --revoke [0-9a-f]{12}/);
  // Past the agent's 1 s grace without a client, the session waits for its page.
  await new Promise((r) => setTimeout(r, 2_000));
  const list = JSON.parse((await w.tether(["sessions", "box", "--json"])).stdout) as {
    id: string;
  }[];
  assert.ok(list.some((x) => x.id === s.session), JSON.stringify(list));
  const table = await w.tether(["share", "--list"]);
  assert.match(table.stdout, /ID +MACHINE +SESSION +MODE/);
  assert.match(table.stdout, new RegExp(`${s.id} +box +${s.session} +read-write +1 +active`));
});

Deno.test("share page: the page with its CSP, assets gzipped or not as the browser asks, nothing else under /s/", async () => {
  await using w = await World.create();
  const base = `http://127.0.0.1:${w.port}`;
  const page = await fetch(`${base}/s`);
  const html = await page.text();
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-security-policy") ?? "", /script-src 'self'/);
  assert.equal(page.headers.get("x-frame-options"), "DENY");
  const scripts = [...html.matchAll(/src="(\/s\/[\w.-]+\?v=[0-9a-f]{12})"/g)].map((m) => m[1]);
  assert.deepEqual(scripts.map((s) => s.split("?")[0]), [
    "/s/xterm.js",
    "/s/addon-fit.js",
    "/s/scrypt.js",
    "/s/noise.js",
    "/s/tether.js",
    "/s/page.js",
  ]);
  const settings = await (await fetch(`${base}/s/tether.js`)).text();
  assert.match(
    settings,
    /^const TETHER = \{"v":\d+,"version":"[^"]+","clearErrors":\["machine_not_found"[^\]]*\]\};/,
  );
  // A raw request without Accept-Encoding gets the plain file; fetch (gzip) gets it packed.
  const raw = async (path: string, extra = "") => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: w.port });
    await c.write(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}\r\n`));
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await c.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    c.close();
    return new TextDecoder().decode(
      chunks.reduce((a, b) => new Uint8Array([...a, ...b]), new Uint8Array()),
    );
  };
  const plain = await raw("/s/page.css");
  assert.match(plain, /^HTTP\/1\.1 200/);
  assert.doesNotMatch(plain, /content-encoding/i);
  assert.match(plain, /#term \{/);
  const packed = await raw("/s/page.css", "Accept-Encoding: gzip, br\r\n");
  assert.match(packed, /content-encoding: gzip/i);
  const viaFetch = await (await fetch(`${base}/s/page.css`)).text();
  assert.match(viaFetch, /#term \{/);
  const missing = await fetch(`${base}/s/nothing.js`);
  assert.equal(missing.status, 404);
  await missing.body?.cancel();
});

Deno.test("share endpoint, end to end: the agent holds a page to its link's session and mode, whatever the page seals", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const mine = await shareJson(w, ["box", "--new", "--read-only"]);
  const theirs = await shareJson(w, ["box", "--new"]);
  const [box] = await w.machines();
  const [, , pagePriv, machinePub] = mine.link.split("#")[1].split(".");
  const b64url = (s: string) => fromBase64(s.replace(/-/g, "+").replace(/_/g, "/") + "=");
  const pageKey = keyPairFromPrivate(b64url(pagePriv));
  const page = await RawPage.open(w, own(w));
  page.hello({ token: tokenOf(mine.link) });
  await page.next("welcome");
  const handshake = async (sid: number) => {
    const init = Initiator.start("AESGCM", e2ePrologue(box.id), pageKey, b64url(machinePub));
    page.send({
      t: "open",
      sid,
      kind: "pty",
      machine: box.id,
      argv: [],
      stdin: true,
      window: 65536,
      e2e: { suite: "AESGCM", msg: toBase64(init.message) },
    });
    const accept = await eventually(
      () => page.got.find((m) => m.t === "accept" && m.sid === sid),
      "accept",
    );
    return init.finish(fromBase64(String(accept.e2e))).transport;
  };
  // Sealed, so the relay cannot hold it to its link: the agent does. Another session, a
  // command and read-write asked for: it gets its link's session, read-only.
  const t1 = await handshake(1);
  page.send(sealControl(t1, {
    t: "open",
    sid: 1,
    kind: "pty",
    session: theirs.session,
    argv: ["/bin/sh", "-c", "echo escaped"],
    stdin: true,
    read_only: false,
    window: 65536,
  }, 1));
  const first = await eventually(
    () => page.got.find((m) => m.t === "sealed" && m.sid === 1),
    "a sealed answer",
  );
  const started = openControl(t1, first as Sealed);
  assert.equal(started.t, "started");
  assert.equal((started as { session?: string }).session, mine.session);
  const sessions = JSON.parse((await w.tether(["sessions", "--json"])).stdout);
  const shared = sessions.find((s: { id: string }) => s.id === mine.session);
  assert.deepEqual(shared.participants.map((p: { read_only: boolean }) => p.read_only), [true]);
  // A CLI joins; the page asks to take its place (its attach id, which participants show):
  // it gets a place of its own, and the CLI stays.
  const cli = w.spawn(["connect", "box", "--session", mine.session, "-t"], { stdin: true });
  await cli.waitFor(/attached/);
  const both = await eventually(async () => {
    const list = JSON.parse((await w.tether(["sessions", "--json"])).stdout);
    const s = list.find((s: { id: string }) => s.id === mine.session);
    return s?.participants?.length === 2 ? s.participants : undefined;
  }, "two participants");
  const cliId = both.find((p: { key: string }) => !p.key.startsWith("share:")).id;
  const t0 = await handshake(9);
  page.send(sealControl(t0, {
    t: "open",
    sid: 9,
    kind: "pty",
    resume: cliId,
    argv: [],
    stdin: true,
    window: 65536,
  }, 9));
  const taken = openControl(
    t0,
    await eventually(
      () => page.got.find((m) => m.t === "sealed" && m.sid === 9),
      "started",
    ) as Sealed,
  ) as { t: string; attach_id?: string };
  assert.equal(taken.t, "started");
  assert.notEqual(taken.attach_id, cliId);
  await eventually(async () => {
    const list = JSON.parse((await w.tether(["sessions", "--json"])).stdout);
    const s = list.find((s: { id: string }) => s.id === mine.session);
    return s?.participants?.some((p: { id: string }) => p.id === cliId);
  }, "the CLI still attached");
  await cli.stop();
  // An exec sealed inside a pty open: refused as altered, that stream only.
  const t2 = await handshake(2);
  page.send(
    sealControl(
      t2,
      { t: "open", sid: 2, kind: "exec", argv: ["true"], stdin: false, window: 1 },
      2,
    ),
  );
  const err = await eventually(
    () => page.got.find((m) => m.t === "sealed" && m.sid === 2),
    "the refusal",
  );
  const refusal = openControl(t2, err as Sealed) as { t: string; code?: string };
  assert.deepEqual([refusal.t, refusal.code], ["error", "integrity"]);
  assert.equal(page.closed, false);
});
