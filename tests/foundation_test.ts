/** Issue 2: relay, keys, enrollment, machines, reconnects, `tether up`. */
import assert from "node:assert/strict";
import { TcpProxy } from "./proxy.ts";
import { join } from "node:path";
import {
  baseEnv,
  eventually,
  hasCommand,
  Proc,
  requirement,
  run,
  walkFiles,
  World,
} from "./helpers.ts";
import { PROTOCOL_VERSION } from "../src/protocol/version.ts";

Deno.test("an agent enrolls and is listed, as a table and as JSON", async () => {
  await using w = await World.create();
  await w.startAgent("alpha", { labels: ["env=dev", "team=core"] });
  const ms = await w.machines();
  assert.equal(ms.length, 1);
  const m = ms[0];
  assert.match(m.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.equal(m.name, "alpha");
  assert.equal(m.online, true);
  assert.deepEqual(m.labels, { env: "dev", team: "core" });
  assert.equal(typeof m.hostname, "string");
  assert.equal(typeof m.last_seen, "string");
  assert.equal(m.sessions, 0);
  assert.equal(m.os, Deno.build.os);

  const table = await w.tether(["machines"]);
  assert.equal(table.code, 0, table.stderr);
  const [header, row] = table.stdout.trim().split("\n");
  assert.match(header, /^ID\s+NAME\s+HOSTNAME\s+ONLINE\s+HEARTBEAT\s+LABELS\s+SESSIONS\s+KEY$/);
  assert.match(
    row,
    new RegExp(
      `^${
        m.id.slice(0, 8)
      }\\s+alpha\\s+\\S+\\s+yes\\s+\\d+s\\s+env=dev,team=core\\s+0\\s+SHA256:\\S{43}$`,
    ),
  );

  const sel = await w.tether(["machines", "--json", "-l", "team=other"]);
  assert.deepEqual(JSON.parse(sel.stdout), []);
});

Deno.test("the identity is kept 0600 and a restarted agent keeps its id", async () => {
  await using w = await World.create();
  const a = await w.startAgent("keeper");
  const [first] = await w.machines();
  const identity = join(w.home, "agents", "keeper", "identity.json");
  assert.equal(Deno.statSync(identity).mode! & 0o777, 0o600);
  await a.stop();
  await w.waitMachines((ms) => ms.length === 1 && !ms[0].online);
  // Restarted without the enrollment key: the stored identity is enough.
  await w.startAgent("keeper", { key: "" });
  const ms = await w.waitMachines((ms) => ms.length === 1 && ms[0].online);
  assert.equal(ms[0].id, first.id);
});

Deno.test("the agent comes back online by itself after a relay restart", async () => {
  await using w = await World.create();
  const a = await w.startAgent("bouncer");
  await w.stopRelay();
  await a.waitFor(/disconnected from relay/);
  await w.startRelay();
  await a.waitFor(/online as bouncer[\s\S]*online as bouncer/, "stderr", 15_000);
  const ms = await w.waitMachines((ms) => ms.length === 1 && ms[0].online);
  assert.equal(ms[0].name, "bouncer");
});

Deno.test("the relay marks a silent idle agent offline within its idle heartbeat and a probe", async () => {
  await using w = await World.create({ startRelay: false });
  for (const bad of ["1s", "2h", "soon"]) {
    const r = await run(
      ["relay", "serve", "--idle-heartbeat", bad, "--listen", "127.0.0.1:0", "--data-dir", w.home],
      { env: w.env() },
    );
    assert.equal(r.code, 2, `${bad}: ${r.stderr}`);
  }
  await w.startRelay(["--idle-heartbeat", "3s"]);
  const a = await w.startAgent("frozen");
  await w.waitMachines((ms) => ms[0]?.online === true);
  a.kill("SIGSTOP"); // connection stays open, nothing answers
  try {
    // Timed by the relay's own log line, not by how fast a CLI can poll on a loaded machine:
    // at most 3 s of silence, a tick, and 4 s for the probe's answer.
    const t0 = Date.now();
    await w.relay!.waitFor(/agent offline: frozen .*no heartbeat/, "stderr", 30_000);
    assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
    assert.equal((await w.machines())[0].online, false);
  } finally {
    a.kill("SIGCONT");
  }
});

async function command(argv: string[]): Promise<{ ok: boolean; out: string }> {
  const r = await new Deno.Command(argv[0], { args: argv.slice(1), stderr: "inherit" }).output();
  return { ok: r.success, out: new TextDecoder().decode(r.stdout).trim() };
}

/** A network namespace of its own (its own loopback), for a test that takes the network away. */
const netns = requirement(
  !hasCommand("ip", ["-V"])
    ? "the vanished-host test needs `ip` (Debian package iproute2)"
    : !hasCommand("unshare", ["-n", "true"]) || !hasCommand("nsenter", ["--version"])
    ? "the vanished-host test needs a network namespace: root with CAP_SYS_ADMIN, and " +
      "`unshare`/`nsenter` (Debian package util-linux)"
    : undefined,
);

Deno.test({
  name: "an idle agent's vanished network is noticed by kernel keepalive, on both ends, " +
    "long before the idle heartbeat",
  ignore: netns.ignore,
  async fn() {
    netns.check();
    await using w = await World.create({ startRelay: false });
    // The relay and the agent share a namespace whose loopback the test then takes down: no
    // packet passes, no FIN or RST, as when a host vanishes. SIGSTOP would not do: a stopped
    // process's kernel still answers keepalive.
    const holder = new Proc(["unshare", "-n", "sleep", "600"]);
    const inNs = (argv: string[]) => ["nsenter", "-t", String(holder.pid), "-n", "--", ...argv];
    try {
      // unshare(1) makes the namespace, then execs sleep: until then, nsenter would enter ours.
      const netOf = async (pid: number) => (await command(["readlink", `/proc/${pid}/ns/net`])).out;
      const ours = await netOf(Deno.pid);
      const apart = async () => {
        const theirs = await netOf(holder.pid);
        return theirs !== "" && theirs !== ours;
      };
      await eventually(apart, "the network namespace");
      assert.ok((await command(inNs(["ip", "link", "set", "lo", "up"]))).ok, "ip link set lo up");
      w.launcher = inNs([]);
      await w.startRelay();
      const agent = await w.startAgent("far");
      await w.relay!.waitFor(/agent online: far/, "stderr");
      const t0 = Date.now();
      // Never the host's loopback: the holder (whose namespace nsenter enters) is still apart.
      assert.ok(await apart(), "the namespace holder is gone");
      assert.ok((await command(inNs(["ip", "link", "set", "lo", "down"]))).ok, "lo down");
      // Kernel keepalive: 20 s idle, then 5 probes 2 s apart. The idle heartbeat (45 s) would
      // take longer.
      const [offline] = await Promise.all([
        w.relay!.waitFor(/agent offline: far .*/, "stderr", 45_000),
        agent.waitFor(/disconnected from relay/, "stderr", 45_000),
      ]);
      assert.ok(Date.now() - t0 < 45_000, `took ${Date.now() - t0} ms`);
      assert.doesNotMatch(offline[0], /no heartbeat/);
    } finally {
      await holder.stop("SIGKILL");
    }
  },
});

Deno.test("with a stream open, the relay notices a silent agent within 10 s, and the client says so", async () => {
  await using w = await World.create();
  const a = await w.startAgent("frozen");
  const c = Proc.tether(["exec", "frozen", "--json", "--", "sh", "-c", "echo up; exec sleep 60"], {
    env: w.env({ TETHER_RECONNECT_WINDOW: "3s" }),
  });
  try {
    await c.waitFor(/up/, "stdout");
    a.kill("SIGSTOP");
    const t0 = Date.now();
    await w.relay!.waitFor(/agent offline: frozen .*no heartbeat/, "stderr", 30_000);
    assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms (idle heartbeat is 45 s)`);
    // The client waits its reconnect window for the machine, then: never a made-up status.
    const st = await c.ended(30_000);
    assert.equal(st.code, 255, c.stderr);
    assert.equal(JSON.parse(c.stdout.trim().split("\n").at(-1)!).error.code, "session_lost");
  } finally {
    a.kill("SIGCONT");
    await c.stop();
  }
});

Deno.test("a bad key is unauthenticated, as JSON on stdout and as two lines on stderr", async () => {
  await using w = await World.create();
  const bad = "tether_client_000000000000_" + "0".repeat(40);
  const j = await w.tether(["machines", "--json"], { env: { TETHER_API_KEY: bad } });
  assert.equal(j.code, 1);
  const err = JSON.parse(j.stdout).error;
  assert.equal(err.code, "unauthenticated");
  assert.ok(err.message && err.hint);
  assert.equal(j.stdout.trim().split("\n").length, 1);

  const h = await w.tether(["machines"], { env: { TETHER_API_KEY: "garbage" } });
  assert.equal(h.code, 1);
  assert.equal(h.stdout, "");
  assert.match(h.stderr, /^tether: .*refused the key\n {2}hint: .+\n$/);

  // An agent key is not a client key.
  const wrongRole = await w.tether(["machines", "--json"], {
    env: { TETHER_API_KEY: w.keys.agent_key },
  });
  assert.equal(JSON.parse(wrongRole.stdout).error.code, "forbidden");
});

Deno.test("the relay refuses an upgrade without a valid key with 401, and serves /healthz", async () => {
  await using w = await World.create();
  const http = w.url.replace("ws://", "http://");
  const health = await fetch(`${http}/healthz`);
  assert.equal(health.status, 200);
  await health.body?.cancel();
  const upgrade = {
    Connection: "Upgrade",
    Upgrade: "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
  };
  for (const path of ["/v1/client", "/v1/agent"]) {
    for (const auth of [undefined, "Bearer nope", `Bearer ${w.keys.client_key}x`]) {
      const res = await fetch(`${http}${path}`, {
        headers: { ...upgrade, ...(auth ? { Authorization: auth } : {}) },
      });
      assert.equal(res.status, 401, `${path} with ${auth}`);
      await res.body?.cancel();
    }
  }
});

Deno.test("a protocol version mismatch is refused naming both versions", async () => {
  await using w = await World.create();
  const ws = new WebSocket(`${w.url}/v1/client`, {
    headers: { Authorization: `Bearer ${w.keys.client_key}` },
  });
  const msg = await new Promise<string>((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify({ t: "hello", v: 99, role: "client", version: "9" }));
    ws.onmessage = (e) => resolve(String(e.data));
    ws.onerror = () => reject(new Error("socket error"));
  });
  await new Promise((r) => {
    ws.onclose = r;
    if (ws.readyState === WebSocket.CLOSED) r(null);
  });
  const o = JSON.parse(msg);
  assert.equal(o.t, "error");
  assert.match(o.message, new RegExp(`v${PROTOCOL_VERSION}.*v99`));
});

Deno.test("relay_unreachable names the URL; not_configured says what to run", async () => {
  const home = await Deno.makeTempDir();
  try {
    const env = {
      ...baseEnv(home),
      TETHER_RELAY: "ws://127.0.0.1:9",
      TETHER_API_KEY: "tether_client_000000000000_" + "0".repeat(40),
    };
    const r = await run(["machines", "--json"], { env });
    assert.equal(r.code, 1);
    const err = JSON.parse(r.stdout).error;
    assert.equal(err.code, "relay_unreachable");
    assert.match(err.message, /ws:\/\/127\.0\.0\.1:9/);

    const n = await run(["machines", "--json"], { env: baseEnv(home) });
    assert.equal(n.code, 1);
    const e2 = JSON.parse(n.stdout).error;
    assert.equal(e2.code, "not_configured");
    assert.match(e2.hint, /tether login/);
    assert.match(e2.hint, /tether up/);

    // exec fails as ssh does: 255.
    const x = await run(["exec", "m", "--", "true"], { env: baseEnv(home) });
    assert.equal(x.code, 255);
    assert.match(x.stderr, /not_configured|no relay URL/);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("keys: role prefixes, ≥128-bit secrets, list without secrets, revoke refuses", async () => {
  await using w = await World.create();
  assert.match(w.keys.client_key, /^tether_client_[0-9a-f]{12}_[0-9a-f]{40}$/);
  assert.match(w.keys.agent_key, /^tether_agent_[0-9a-f]{12}_[0-9a-f]{40}$/);
  const created = await w.tether([
    "relay",
    "keys",
    "create",
    "--data-dir",
    w.relayDir,
    "--workspace",
    "default",
    "--role",
    "client",
    "--json",
  ]);
  assert.equal(created.code, 0, created.stderr);
  const k = JSON.parse(created.stdout);
  assert.deepEqual(Object.keys(k).sort(), ["id", "key", "role", "workspace"]);
  assert.equal(k.role, "client");

  const ok = await w.tether(["machines", "--json"], { env: { TETHER_API_KEY: k.key } });
  assert.equal(ok.code, 0, ok.stdout);

  const list = await w.tether(["relay", "keys", "list", "--data-dir", w.relayDir, "--json"]);
  assert.ok(!list.stdout.includes(k.key.split("_").pop()!), "list shows no secret");
  assert.equal(JSON.parse(list.stdout).length, 3);

  // A connected client with that key is closed once it is revoked.
  const watcher = new WebSocket(`${w.url}/v1/client`, {
    headers: { Authorization: `Bearer ${k.key}` },
  });
  const closed = new Promise<void>((r) => (watcher.onclose = () => r()));
  watcher.onopen = () =>
    watcher.send(JSON.stringify({ t: "hello", v: PROTOCOL_VERSION, role: "client", version: "x" }));

  const rev = await w.tether(["relay", "keys", "revoke", "--data-dir", w.relayDir, k.id]);
  assert.equal(rev.code, 0, rev.stderr);
  const refused = await w.tether(["machines", "--json"], { env: { TETHER_API_KEY: k.key } });
  assert.equal(JSON.parse(refused.stdout).error.code, "unauthenticated");
  await closed;

  const unknown = await w.tether(["relay", "keys", "revoke", "--data-dir", w.relayDir, "nope"]);
  assert.equal(unknown.code, 2);
});

Deno.test("no plaintext key or machine secret is stored in the relay data dir", async () => {
  await using w = await World.create();
  await w.startAgent("secretive");
  const identity = JSON.parse(
    Deno.readTextFileSync(join(w.home, "agents", "secretive", "identity.json")),
  );
  await w.stopRelay(); // flush WAL into the main file too
  const secrets = [
    w.keys.client_key.split("_").pop()!,
    w.keys.agent_key.split("_").pop()!,
    identity.secret,
  ];
  let files = 0;
  for (const f of walkFiles(w.relayDir)) {
    files++;
    const bytes = new TextDecoder("latin1").decode(Deno.readFileSync(f));
    for (const s of secrets) assert.ok(!bytes.includes(s), `${f} contains a secret`);
  }
  assert.ok(files >= 1);
});

Deno.test("tether up brings this machine online and writes a client config; a second up reuses it", async () => {
  const home = await Deno.makeTempDir({ prefix: "tether-up-" });
  const env = baseEnv(home);
  try {
    const upArgs = ["up", "--listen", "127.0.0.1:0", "--name", "laptop"];
    const up = Proc.tether(upArgs, { env });
    await up.waitFor(
      /tether is up: relay (ws:\/\/\S+), machine laptop \(([0-9a-f]{8})\) online/,
      "stdout",
    );
    const cfgPath = join(home, ".config", "tether", "config.json");
    assert.equal(Deno.statSync(cfgPath).mode! & 0o777, 0o600);
    const r1 = await run(["machines", "--json"], { env });
    assert.equal(r1.code, 0, r1.stdout + r1.stderr);
    const [m1] = JSON.parse(r1.stdout);
    assert.equal(m1.name, "laptop");
    assert.equal(m1.online, true);
    const key1 = JSON.parse(Deno.readTextFileSync(cfgPath)).api_key;
    const st = await up.stop("SIGINT");
    assert.equal(st.code, 0, up.stderr);

    const up2 = Proc.tether(upArgs, { env });
    await up2.waitFor(/tether is up/, "stdout");
    const r2 = await run(["machines", "--json"], { env });
    const ms = JSON.parse(r2.stdout);
    assert.equal(ms.length, 1, "same machine, not a second one");
    assert.equal(ms[0].id, m1.id);
    assert.equal(JSON.parse(Deno.readTextFileSync(cfgPath)).api_key, key1);
    await up2.stop("SIGINT");
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("agent failures: no key is not_configured, a bad key is unauthenticated; both exit 1", async () => {
  await using w = await World.create();
  const none = await run([
    "agent",
    "run",
    "--relay",
    w.url,
    "--state-dir",
    `${w.home}/a1`,
    "--json",
  ], {
    env: baseEnv(w.home),
  });
  assert.equal(none.code, 1);
  assert.equal(JSON.parse(none.stdout).error.code, "not_configured");
  const bad = await run(
    ["agent", "run", "--relay", w.url, "--state-dir", `${w.home}/a2`, "--json"],
    {
      env: { ...baseEnv(w.home), TETHER_AGENT_KEY: w.keys.client_key },
    },
  );
  assert.equal(bad.code, 1);
  assert.equal(JSON.parse(bad.stdout).error.code, "forbidden");
  const wrong = await run([
    "agent",
    "run",
    "--relay",
    w.url,
    "--state-dir",
    `${w.home}/a3`,
    "--json",
  ], {
    env: { ...baseEnv(w.home), TETHER_AGENT_KEY: "tether_agent_000000000000_" + "0".repeat(40) },
  });
  assert.equal(JSON.parse(wrong.stdout).error.code, "unauthenticated");
});

Deno.test("an agent outlives refusals that can pass: 503, 429 with Retry-After, 500", async () => {
  await using w = await World.create();
  const http = (status: string, extra = "") =>
    `HTTP/1.1 ${status}\r\nContent-Length: 0\r\nConnection: close\r\n${extra}\r\n`;
  const front = new TcpProxy({ hostname: "127.0.0.1", port: w.port }, [
    http("503 Service Unavailable"),
    http("429 Too Many Requests", "Retry-After: 1\r\n"),
    http("500 Internal Server Error"),
  ]);
  try {
    const a = await w.startAgent("patient", { relay: `ws://127.0.0.1:${front.port}` });
    assert.match(a.stderr, /not ready; retrying/);
    const r = await w.tether(["exec", "patient", "--", "echo", "made-it"]);
    assert.equal(r.stdout, "made-it\n", r.stderr);
  } finally {
    front.close();
  }
});

const python = requirement(
  hasCommand("python3") ? undefined : "python3 is needed to make a black-holed port",
);

/**
 * A port whose TCP handshakes never complete: a listener with a backlog of 0 that never
 * accepts, its queue filled by one connection, so the kernel drops every further SYN.
 */
async function blackHole(): Promise<{ port: number; close(): void }> {
  const p = new Deno.Command("python3", {
    args: [
      "-c",
      "import socket,sys\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(0)\n" +
      "c=socket.socket();c.connect(s.getsockname())\n" +
      "print(s.getsockname()[1],flush=True)\nsys.stdin.read()",
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const reader = p.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) text += new TextDecoder().decode((await reader.read()).value);
  reader.releaseLock();
  return {
    port: Number(text.trim()),
    close() {
      p.kill();
      p.stdout.cancel().catch(() => {});
      p.stdin.close().catch(() => {});
    },
  };
}

Deno.test({
  name:
    "a black-holed relay: relay_unreachable once --dial-timeout (or TETHER_DIAL_TIMEOUT) runs out",
  ignore: python.ignore,
  async fn() {
    python.check();
    const hole = await blackHole();
    const home = await Deno.makeTempDir();
    try {
      const env = {
        ...baseEnv(home),
        TETHER_RELAY: `ws://127.0.0.1:${hole.port}`,
        TETHER_API_KEY: "tether_client_000000000000_" + "0".repeat(40),
      };
      const t0 = Date.now();
      const r = await run(["--dial-timeout", "1s", "machines", "--json"], { env });
      assert.equal(r.code, 1);
      const e = JSON.parse(r.stdout).error;
      assert.equal(e.code, "relay_unreachable");
      assert.match(e.message, /could not reach the relay at .* within 1s/);
      assert.match(e.hint, /--dial-timeout/);
      assert.ok(Date.now() - t0 < 8_000, "it did not wait for the TCP timeout");
      const viaEnv = await run(["exec", "box", "--json", "--", "true"], {
        env: { ...env, TETHER_DIAL_TIMEOUT: "500ms" },
      });
      assert.equal(viaEnv.code, 255);
      assert.match(JSON.parse(viaEnv.stdout).error.message, /within 0\.5s/);
      const bad = await run(["--dial-timeout", "soon", "machines"], { env });
      assert.equal(bad.code, 2);
    } finally {
      hole.close();
      await Deno.remove(home, { recursive: true });
    }
  },
});

Deno.test("a relay on a port that is taken says so", async () => {
  await using w = await World.create();
  const r = await run([
    "relay",
    "serve",
    "--listen",
    `127.0.0.1:${w.port}`,
    "--data-dir",
    `${w.home}/r2`,
    "--json",
  ], {
    env: baseEnv(w.home),
  });
  assert.equal(r.code, 2);
  assert.match(JSON.parse(r.stdout).error.message, /already in use/);
});

Deno.test("machines lists a workspace of 400 machines (answers larger than a client's message limit)", async () => {
  await using w = await World.create();
  const { SqliteStore } = await import("../src/relay/store_sqlite.ts");
  const store = new SqliteStore(w.relayDir);
  try {
    const key = (await store.listKeys()).find((k) => k.role === "agent")!;
    for (let i = 0; i < 400; i++) {
      await store.enrollMachine("default", key.id, {
        name: `bulk-${String(i).padStart(3, "0")}-with-a-longish-name`,
        hostname: `host-${i}.example.internal`,
        labels: { env: "bulk", index: String(i) },
        os: "linux",
        arch: "x86_64",
        agent_version: "0.1.0",
        e2e_key: "",
      });
    }
  } finally {
    await store.close();
  }
  const r = await w.tether(["machines", "--json"]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.ok(r.stdout.length > 64 * 1024);
  assert.equal(JSON.parse(r.stdout).length, 400);
});
