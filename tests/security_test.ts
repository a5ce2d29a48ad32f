/** Issue 6: passwords and tokens, isolation, revocation, TLS, transport policy, throttling, audit, fuzz. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { awkEchoArgv, baseEnv, run, tetherArgv, walkFiles, World } from "./helpers.ts";
import { hasTmux, Tmux } from "./tmux.ts";
import { PROTOCOL_VERSION } from "../src/protocol/version.ts";

function errorCode(r: { stdout: string }): string {
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!).error.code;
}

const PASSWORD = "correct horse battery staple";

async function lockedMachine(): Promise<World> {
  const w = await World.create();
  const stateDir = join(w.home, "agents", "vault");
  const set = await run(["password", "set", "--state-dir", stateDir], {
    env: baseEnv(w.home),
    stdin: PASSWORD + "\n",
  });
  assert.equal(set.code, 0, set.stderr);
  await w.startAgent("vault");
  return w;
}

Deno.test("machine password: required, invalid, env, then a cached 0600 token; nothing in plaintext", async () => {
  await using w = await lockedMachine();
  const cmd = ["exec", "vault", "--json", "--", "echo", "opened"];

  const none = await w.tether(cmd);
  assert.equal(none.code, 255);
  assert.equal(errorCode(none), "password_required");

  const wrong = await w.tether(["exec", "vault", "--password", "nope", "--json", "--", "true"]);
  assert.equal(errorCode(wrong), "password_invalid");

  const env = await w.tether(cmd, { env: { TETHER_PASSWORD: PASSWORD } });
  assert.equal(env.code, 0, env.stdout + env.stderr);
  assert.equal(env.stdout, "opened\n");

  const tokens = join(w.home, ".config", "tether", "tokens.json");
  assert.equal(Deno.statSync(tokens).mode! & 0o777, 0o600);
  // The token is reused: no password source needed now.
  const again = await w.tether(cmd);
  assert.equal(again.code, 0, again.stdout);

  // A rejected (tampered) token falls back to the password sources.
  const t = JSON.parse(Deno.readTextFileSync(tokens));
  const slot = Object.keys(t)[0];
  t[slot].token = t[slot].token.slice(0, -4) + "AAAA";
  Deno.writeTextFileSync(tokens, JSON.stringify(t));
  assert.equal(errorCode(await w.tether(cmd)), "password_required");
  assert.equal((await w.tether(cmd, { env: { TETHER_PASSWORD: PASSWORD } })).code, 0);

  // An expired token is not offered at all.
  const t2 = JSON.parse(Deno.readTextFileSync(tokens));
  t2[slot].expires = Date.now() - 1000;
  Deno.writeTextFileSync(tokens, JSON.stringify(t2));
  assert.equal(errorCode(await w.tether(cmd)), "password_required");

  // No password or derived secret in plaintext in the agent's state dir or the relay's data dir.
  await w.stopRelay();
  for (const dir of [join(w.home, "agents"), w.relayDir]) {
    for (const f of walkFiles(dir)) {
      const text = new TextDecoder("latin1").decode(Deno.readFileSync(f));
      assert.ok(!text.includes(PASSWORD), `${f} holds the password`);
    }
  }
  const pw = JSON.parse(Deno.readTextFileSync(join(w.home, "agents", "vault", "password.json")));
  assert.equal(pw.algo, "scrypt");
  assert.equal(
    Deno.statSync(join(w.home, "agents", "vault", "password.json")).mode! & 0o777,
    0o600,
  );
});

Deno.test("machine password: stored with `password save`, and the order of sources", async () => {
  await using w = await lockedMachine();
  const save = await w.tether(["password", "save", "vault"], { stdin: PASSWORD });
  assert.equal(save.code, 0, save.stderr);
  const stored = join(w.home, ".config", "tether", "passwords.json");
  assert.equal(Deno.statSync(stored).mode! & 0o777, 0o600);
  const ok = await w.tether(["exec", "vault", "--", "true"], { env: { TETHER_PASSWORD: "wrong" } });
  assert.equal(ok.code, 0, "the stored password comes before TETHER_PASSWORD");
  Deno.removeSync(join(w.home, ".config", "tether", "tokens.json"));
  const flag = await w.tether(["exec", "vault", "--json", "--password", "bad", "--", "true"]);
  assert.equal(errorCode(flag), "password_invalid", "--password comes first");
  const empty = await w.tether(["password", "save", "vault", "--json"]);
  assert.equal(errorCode(empty), "password_required");
});

Deno.test("machine password: 5 failures in a minute lock the key out (rate_limited)", async () => {
  await using w = await lockedMachine();
  for (let i = 0; i < 5; i++) {
    const r = await w.tether(["exec", "vault", "--json", "--password", `bad-${i}`, "--", "true"]);
    assert.equal(errorCode(r), "password_invalid");
  }
  const locked = await w.tether(["exec", "vault", "--json", "--password", PASSWORD, "--", "true"]);
  assert.equal(errorCode(locked), "rate_limited");
});

Deno.test("workspaces are isolated: another workspace's machine looks like machine_not_found", async () => {
  await using w = await World.create();
  await w.startAgent("private");
  const [m] = await w.machines();
  const other = await w.tether([
    "relay",
    "init",
    "--data-dir",
    w.relayDir,
    "--workspace",
    "other",
    "--json",
  ]);
  const key = JSON.parse(other.stdout).client_key;
  const env = { TETHER_API_KEY: key };
  assert.deepEqual(JSON.parse((await w.tether(["machines", "--json"], { env })).stdout), []);
  for (const name of [m.id, "private"]) {
    const r = await w.tether(["exec", name, "--json", "--", "true"], { env });
    assert.equal(errorCode(r), "machine_not_found");
  }
  // Even a hand-made open for that id is refused by the relay in the same words.
  const ws = new WebSocket(`${w.url}/v1/client`, { headers: { Authorization: `Bearer ${key}` } });
  const msgs: string[] = [];
  await new Promise<void>((resolve) => {
    ws.onopen = () =>
      ws.send(JSON.stringify({ t: "hello", v: PROTOCOL_VERSION, role: "client", version: "t" }));
    ws.onmessage = (e) => {
      msgs.push(String(e.data));
      if (msgs.length === 1) {
        ws.send(
          JSON.stringify({
            t: "open",
            sid: 1,
            machine: m.id,
            kind: "exec",
            argv: ["true"],
            stdin: false,
            window: 1024,
          }),
        );
      } else if (String(e.data).includes('"sid":1')) resolve();
    };
  });
  ws.close();
  assert.equal(JSON.parse(msgs[1]).code, "machine_not_found");
});

Deno.test("revoking an agent's enrollment key takes its machine offline within seconds", async () => {
  await using w = await World.create();
  const agent = await w.startAgent("revoked");
  await w.waitMachines((ms) => ms[0]?.online === true);
  const keys = JSON.parse(
    (await w.tether(["relay", "keys", "list", "--data-dir", w.relayDir, "--json"])).stdout,
  );
  const agentKey = keys.find((k: { role: string }) => k.role === "agent");
  const t0 = Date.now();
  await w.tether(["relay", "keys", "revoke", "--data-dir", w.relayDir, agentKey.id]);
  await w.waitMachines((ms) => ms[0]?.online === false, 10_000);
  assert.ok(Date.now() - t0 < 8_000);
  const st = await agent.status;
  assert.equal(st.code, 1, "the agent stops: retrying a revoked identity cannot help");
  assert.match(agent.stderr, /refused/);
});

Deno.test("TLS: wss with a private CA via TETHER_CA_FILE; refused without it", async () => {
  const dir = await Deno.makeTempDir();
  const ssl = (args: string[]) =>
    new Deno.Command("openssl", { args, cwd: dir, stderr: "null" }).output();
  await ssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=tether test CA",
  ]);
  await ssl([
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "relay.key",
    "-out",
    "relay.csr",
    "-subj",
    "/CN=localhost",
  ]);
  Deno.writeTextFileSync(join(dir, "ext"), "subjectAltName=DNS:localhost\n");
  await ssl([
    "x509",
    "-req",
    "-in",
    "relay.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "relay.pem",
    "-days",
    "2",
    "-extfile",
    "ext",
  ]);
  await using w = await World.create({ startRelay: false });
  const { Proc } = await import("./helpers.ts");
  const relay = Proc.tether([
    "relay",
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--data-dir",
    w.relayDir,
    "--tls-cert",
    join(dir, "relay.pem"),
    "--tls-key",
    join(dir, "relay.key"),
  ], { env: baseEnv(w.home) });
  try {
    const m = await relay.waitFor(/relay listening on (wss:\/\/\S+)/, "stdout");
    const url = m[1].replace("127.0.0.1", "localhost");
    const env = { ...w.env(), TETHER_RELAY: url, TETHER_API_KEY: w.keys.client_key };
    const ok = await run(["machines", "--json"], {
      env: { ...env, TETHER_CA_FILE: join(dir, "ca.pem") },
    });
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    const bad = await run(["machines", "--json"], { env });
    assert.equal(errorCode(bad), "relay_unreachable");
    const e = JSON.parse(bad.stdout).error;
    assert.match(e.message, /TLS certificate this machine does not trust/);
    assert.match(e.hint, /--ca-file[\s\S]*--fingerprint/);
    // Trusted, but dialed by a name the certificate does not carry.
    const byIp = await run(["machines", "--json"], {
      env: { ...env, TETHER_CA_FILE: join(dir, "ca.pem"), TETHER_RELAY: m[1] },
    });
    assert.equal(errorCode(byIp), "relay_unreachable");
    assert.match(JSON.parse(byIp.stdout).error.message, /does not name 127\.0\.0\.1/);
  } finally {
    await relay.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("relay serve --tls-self-signed: login pins the CA by fingerprint; agents take its CA file", async () => {
  await using w = await World.create({ startRelay: false });
  const { Proc } = await import("./helpers.ts");
  const serve = () =>
    Proc.tether([
      "relay",
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--data-dir",
      w.relayDir,
      "--tls-self-signed",
      "--json",
    ], { env: baseEnv(w.home) });
  let relay = serve();
  try {
    const info = JSON.parse((await relay.waitFor(/^\{.*\}$/m, "stdout"))[0]);
    assert.match(info.listening, /^wss:\/\/127\.0\.0\.1:\d+$/);
    assert.match(info.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
    assert.equal(info.ca_file, join(w.relayDir, "tls", "ca.pem"));
    for (const n of ["localhost", "127.0.0.1", "::1"]) assert.ok(info.names.includes(n), n);
    const st = Deno.statSync(join(w.relayDir, "tls", "self-signed.json"));
    assert.equal(st.mode! & 0o777, 0o600, "the keys are private");
    const url = info.listening.replace("127.0.0.1", "localhost");
    const cfgDir = join(w.home, "cfg");
    const base = { ...baseEnv(w.home), TETHER_CONFIG_DIR: cfgDir };

    // Not trusted yet: a clear refusal that names the ways out.
    const before = await run(
      ["--relay", url, "--api-key", w.keys.client_key, "machines", "--json"],
      {
        env: base,
      },
    );
    assert.equal(errorCode(before), "relay_unreachable");
    assert.match(JSON.parse(before.stdout).error.hint, /--fingerprint/);
    // A wrong fingerprint is refused, and nothing is stored.
    const wrong = await run([
      "login",
      "--relay",
      url,
      "--api-key",
      w.keys.client_key,
      "--fingerprint",
      "SHA256:" + "A".repeat(43),
      "--json",
    ], { env: base });
    assert.equal(wrong.code, 1);
    assert.match(
      JSON.parse(wrong.stdout).error.message,
      /presents no certificate with fingerprint/,
    );
    // The right one: login pins the CA, and every later command trusts the relay.
    const login = await run([
      "login",
      "--relay",
      url,
      "--api-key",
      w.keys.client_key,
      "--fingerprint",
      info.fingerprint,
      "--json",
    ], { env: base });
    assert.equal(login.code, 0, login.stdout + login.stderr);
    assert.equal(JSON.parse(login.stdout).fingerprint, info.fingerprint);
    const agent = Proc.tether([
      "agent",
      "run",
      "--relay",
      url,
      "--name",
      "tls-box",
      "--state-dir",
      join(w.home, "agent"),
      "--ca-file",
      info.ca_file,
    ], { env: { ...baseEnv(w.home), TETHER_AGENT_KEY: w.keys.agent_key } });
    w.agents.push(agent);
    await agent.waitFor(/online as tls-box/);
    const x = await run(["exec", "tls-box", "--", "echo", "over-wss"], { env: base });
    assert.equal(x.stdout, "over-wss\n", x.stderr);

    // A restart keeps the CA, so the pin still holds.
    const port = new URL(info.listening).port;
    await relay.stop();
    relay = Proc.tether([
      "relay",
      "serve",
      "--listen",
      `127.0.0.1:${port}`,
      "--data-dir",
      w.relayDir,
      "--tls-self-signed",
      "--json",
    ], { env: baseEnv(w.home) });
    const again = JSON.parse((await relay.waitFor(/^\{.*\}$/m, "stdout"))[0]);
    assert.equal(again.fingerprint, info.fingerprint);
    await agent.waitFor(/online as tls-box[\s\S]*online as tls-box/);
    const y = await run(["exec", "tls-box", "--", "echo", "still"], { env: base });
    assert.equal(y.stdout, "still\n", y.stderr);
  } finally {
    await relay.stop();
  }
});

Deno.test("plain ws:// to a host that is not loopback is refused unless --insecure, which warns", async () => {
  await using w = await World.create();
  const url = `ws://0.0.0.0:${w.port}`; // not loopback by name; reaches this machine only
  const refused = await w.tether(["machines", "--json"], { env: { TETHER_RELAY: url } });
  assert.equal(refused.code, 2);
  assert.equal(errorCode(refused), "usage");
  assert.match(refused.stdout, /--insecure/);
  const allowed = await w.tether(["machines", "--json", "--insecure"], {
    env: { TETHER_RELAY: url },
  });
  assert.equal(allowed.code, 0, allowed.stdout);
  assert.match(allowed.stderr, /WARNING.*UNENCRYPTED/);
});

Deno.test("bad keys are paced per address, but a valid key from that address is never refused", async () => {
  await using w = await World.create();
  const http = w.url.replace("ws://", "http://");
  const attempt = async (key: string) => {
    const t0 = Date.now();
    const res = await fetch(`${http}/v1/client`, { headers: { Authorization: `Bearer ${key}` } });
    await res.body?.cancel();
    return { status: res.status, ms: Date.now() - t0, retryAfter: res.headers.get("retry-after") };
  };
  const bad = "tether_client_000000000000_" + "0".repeat(40);
  // A storm of bad keys: the first few are refused at once, the rest wait their turn (or are
  // told to slow down), and none of them locks anything.
  const storm = await Promise.all(Array.from({ length: 40 }, () => attempt(bad)));
  for (const r of storm) assert.ok(r.status === 401 || r.status === 429, String(r.status));
  assert.ok(storm.some((r) => r.ms >= 1000 || r.status === 429), "failures beyond the burst wait");
  for (const r of storm.filter((r) => r.status === 429)) assert.ok(Number(r.retryAfter) > 0);
  // Meanwhile and right after, the valid key works at once from the same address.
  const [good, cli] = await Promise.all([
    attempt(w.keys.client_key),
    w.tether(["machines", "--json"]),
  ]);
  assert.equal(good.status, 426, "a valid key gets as far as the upgrade");
  assert.ok(good.ms < 1000, `a valid key is not delayed (${good.ms} ms)`);
  assert.equal(cli.code, 0, cli.stdout + cli.stderr);
  // The bad key itself is still told what is wrong.
  const again = await w.tether(["machines", "--json"], { env: { TETHER_API_KEY: bad } });
  assert.ok(["unauthenticated", "rate_limited"].includes(errorCode(again)), again.stdout);
});

Deno.test({
  name: "a revoked key ends its connect at once; the same address's valid client and agent work",
  ignore: !hasTmux(),
  async fn() {
    await using w = await World.create();
    const agent = await w.startAgent("natbox");
    const minted = await w.tether([
      "relay",
      "keys",
      "create",
      "--data-dir",
      w.relayDir,
      "--workspace",
      w.keys.workspace,
      "--role",
      "client",
      "--json",
    ]);
    const doomed = JSON.parse(minted.stdout) as { id: string; key: string };
    await using t = await Tmux.start(tetherArgv(["connect", "natbox"]), {
      env: w.env({ TERM: "xterm-256color", TETHER_API_KEY: doomed.key }),
    });
    await t.waitFor(/attached —/);
    const revoke = await w.tether(["relay", "keys", "revoke", "--data-dir", w.relayDir, doomed.id]);
    assert.equal(revoke.code, 0, revoke.stderr);
    // Ended with the refusal itself: no "reconnecting…", no redial storm.
    const screen = (await t.waitFor(/\[exited (\d+)\]/, 10_000)).input;
    assert.match(screen, /tether: the relay revoked this key/);
    assert.match(screen, /\[exited 255\]/);
    assert.doesNotMatch(screen, /reconnecting/);

    // A relay restart, then a storm of refused keys, then a client and an agent restart, all
    // from one address: every valid key works at once.
    await w.stopRelay();
    await w.startRelay();
    await agent.waitFor(/online as natbox[\s\S]*online as natbox/);
    const http = w.url.replace("ws://", "http://");
    await Promise.all(Array.from({ length: 30 }, async () => {
      const res = await fetch(`${http}/v1/client`, {
        headers: { Authorization: `Bearer ${doomed.key}` },
      });
      await res.body?.cancel();
    }));
    const ms = await w.tether(["machines", "--json"]);
    assert.equal(ms.code, 0, ms.stdout + ms.stderr);
    await agent.stop();
    const again = await w.startAgent("natbox");
    assert.match(again.stderr, /online as natbox/);
    const r = await w.tether(["exec", "natbox", "--", "echo", "through"]);
    assert.equal(r.stdout, "through\n", r.stderr);
  },
});

Deno.test("audit: every exec and attach is recorded with key, machine, bytes and how it ended; argv and exit only in the clear", async () => {
  await using w = await World.create();
  await w.startAgent("audited");
  // End to end (the default): the relay never sees the command line or the exit status.
  await w.tether(["exec", "audited", "--", "sh", "-c", "cat; exit 3"], { stdin: "12345" });
  // In the clear (TETHER_E2E=off, as a browser page): it records both.
  await w.tether(["exec", "audited", "--", "sh", "-c", "cat; exit 3"], {
    stdin: "12345",
    env: { TETHER_E2E: "off" },
  });
  await w.tether(["exec", "audited", "--", "true"], { env: { TETHER_E2E: "off" } });
  const r = await w.tether(["relay", "audit", "--data-dir", w.relayDir, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout);
  assert.equal(rows.length, 3);
  const keyId = w.keys.client_key.split("_")[2];
  const common = {
    id: 0,
    remote: 0,
    read_only: false,
    workspace: "default",
    key_id: keyId,
    machine_id: 0,
    machine_name: "audited",
    kind: "exec",
    session: 0,
    started_at: 0,
    ended_at: 0,
    bytes_in: 5,
    bytes_out: 5,
    signal: null,
    error: null,
  };
  const blank = { id: 0, started_at: 0, ended_at: 0, machine_id: 0, session: 0, remote: 0 };
  assert.deepEqual({ ...rows[0], ...blank }, {
    ...common,
    argv: null,
    exit_code: null,
    sealed: true,
  });
  assert.deepEqual({ ...rows[1], ...blank }, {
    ...common,
    argv: ["sh", "-c", "cat; exit 3"],
    exit_code: 3,
    sealed: false,
  });
  for (const row of rows.slice(0, 2)) {
    assert.ok(Date.parse(row.ended_at) >= Date.parse(row.started_at));
    assert.match(row.session, /^[0-9a-f]{12}$/, "the exec's id, for exec --attach");
    assert.match(row.remote, /^127\.0\.0\.1:\d+$/, "where the client connected from");
  }
  const human = await w.tether(["relay", "audit", "--data-dir", w.relayDir]);
  assert.match(
    human.stdout,
    /127\.0\.0\.1:\d+\s+audited\s+exec\s+\(sealed, session [0-9a-f]{12}\).* ended\n/,
  );
  assert.match(human.stdout, /127\.0\.0\.1:\d+\s+audited\s+exec\s+true/);
});

/** Opens a raw WebSocket with a valid key and feeds it `send`; resolves when the relay closes it. */
async function hostile(url: string, key: string, send: (ws: WebSocket) => void): Promise<string> {
  const ws = new WebSocket(url, { headers: { Authorization: `Bearer ${key}` } });
  ws.binaryType = "arraybuffer";
  return await new Promise<string>((resolve) => {
    const timer = setTimeout(() => {
      ws.close();
      resolve("still open");
    }, 5000);
    ws.onopen = () => send(ws);
    ws.onerror = () => {};
    ws.onclose = (e) => {
      clearTimeout(timer);
      resolve(`closed ${e.code}`);
    };
  });
}

Deno.test("fuzz: malformed, truncated, oversized and unknown input closes only that connection", async () => {
  await using w = await World.create();
  await w.startAgent("steady");
  // An ongoing session that must survive everything below.
  const p = w.spawn(["exec", "steady", "--stream", "--", ...await awkEchoArgv()], { stdin: true });
  await p.write("before\n");
  await p.waitFor(/before/, "stdout");

  const hello = (role: string, v = PROTOCOL_VERSION) =>
    JSON.stringify({
      t: "hello",
      v,
      role,
      version: "fuzz",
      ...(role === "agent"
        ? { agent: { name: "fz", hostname: "fz", os: "x", arch: "y", labels: {} } }
        : {}),
    });
  const rand = (n: number) => crypto.getRandomValues(new Uint8Array(n));
  const cases: [string, (ws: WebSocket, role: string) => void][] = [
    ["random bytes first", (ws) => ws.send(rand(200))],
    ["bad JSON", (ws) => ws.send("{not json")],
    ["wrong version", (ws, role) => ws.send(hello(role, 99))],
    ["not an object", (ws) => ws.send("[1,2,3]")],
    ["unknown type", (ws, role) => {
      ws.send(hello(role));
      ws.send(JSON.stringify({ t: "launch_missiles" }));
    }],
    ["truncated frame", (ws, role) => {
      ws.send(hello(role));
      ws.send(new Uint8Array([1, 1, 0]));
    }],
    ["oversized frame", (ws, role) => {
      ws.send(hello(role));
      ws.send(new Uint8Array(300 * 1024));
    }],
    ["oversized text", (ws, role) => {
      ws.send(hello(role));
      // Agents may send up to 1 MiB (their list of sessions and execs), clients 64 KiB.
      const limit = role === "agent" ? 1024 * 1024 : 64 * 1024;
      ws.send(JSON.stringify({ t: "ping", pad: "x".repeat(limit + 1024) }));
    }],
    ["bad field types", (ws, role) => {
      ws.send(hello(role));
      ws.send(JSON.stringify({ t: "open", sid: "one", kind: "exec", argv: "rm -rf /" }));
    }],
    ["unknown frame type", (ws, role) => {
      ws.send(hello(role));
      ws.send(new Uint8Array(16).fill(9));
    }],
  ];
  for (let i = 0; i < 40; i++) {
    cases.push([`random ${i}`, (ws, role) => {
      if (i % 2) ws.send(hello(role));
      const kind = i % 4;
      if (kind === 0) ws.send(rand(1 + (i * 37) % 400));
      else if (kind === 1) ws.send(new TextDecoder().decode(rand(50)));
      else if (kind === 2) {
        ws.send(JSON.stringify({ t: "open", sid: i, kind: "pty", argv: [i], window: -1 }));
      } else {ws.send(
          JSON.stringify({ t: ["req", "res", "eof", "resize", "exit"][i % 5], id: "x", sid: 0 }),
        );}
    }]);
  }
  for (const role of ["client", "agent"]) {
    const key = role === "client" ? w.keys.client_key : w.keys.agent_key;
    for (const [name, send] of cases) {
      const outcome = await hostile(`${w.url}/v1/${role}`, key, (ws) => send(ws, role));
      assert.match(outcome, /^closed/, `${role}: ${name} should close the connection (${outcome})`);
    }
  }
  // The relay is healthy and the ongoing session still works.
  const health = await fetch(w.url.replace("ws://", "http://") + "/healthz");
  assert.equal(health.status, 200);
  await health.body?.cancel();
  await p.write("after\n");
  await p.waitFor(/after/, "stdout");
  await p.closeStdin();
  assert.equal((await p.status).code, 0);
});

Deno.test("machine password: connect passes the same challenge (no TTY: env password)", async () => {
  await using w = await lockedMachine();
  const refused = await w.tether(["connect", "-t", "vault", "--no-interactive"]);
  assert.equal(refused.code, 255);
  assert.match(refused.stderr, /needs a password/);
  const p = w.spawn(["connect", "-t", "vault"], {
    stdin: true,
    env: { TETHER_PASSWORD: PASSWORD },
  });
  await p.waitFor(/attached —/);
  await p.write("echo inside-$((2+3))\n");
  await p.waitFor(/inside-5/, "stdout");
  await p.stop();
});

Deno.test("names, labels and command lines others chose are escaped in every table and log; JSON is exact", async () => {
  await using w = await World.create();
  const evil = "boxy\x1b[2J\x1b]0;pwned\x07";
  await w.startAgent(evil, { labels: ["note=two\nlines"] });
  const argv = ["echo", "\x1b[31mred\n2026-01-01T00:00:00Z  k  box  exec  forged"];
  // In the clear, so that the relay's audit has the command line to escape.
  const x = await w.tether(["exec", "boxy", "--", ...argv], { env: { TETHER_E2E: "off" } });
  assert.equal(x.code, 0, x.stderr);
  // deno-lint-ignore no-control-regex
  const raw = /[\x00-\x08\x0b-\x1f\x7f]/; // any control character but \t and \n
  const tables = [
    await w.tether(["machines"]),
    await w.tether(["relay", "audit", "--data-dir", w.relayDir]),
    await w.tether(["sessions"]),
  ];
  for (const t of tables) {
    assert.equal(t.code, 0, t.stderr);
    assert.doesNotMatch(t.stdout + t.stderr, raw);
  }
  assert.match(tables[0].stdout, /boxy\\e\[2J\\e\]0;pwned\\x07/);
  assert.match(tables[0].stdout, /note=two\\nlines/);
  const audit = tables[1].stdout.trim().split("\n");
  assert.equal(audit.length, 2, "one header and one row: no forged row");
  assert.match(audit[1], /echo \\e\[31mred\\n2026/);
  assert.doesNotMatch(w.relay!.stderr, raw, "the relay's log");
  // JSON keeps every byte.
  const ms = JSON.parse((await w.tether(["machines", "--json"])).stdout);
  assert.equal(ms[0].name, evil);
  assert.equal(ms[0].labels.note, "two\nlines");
  const rows = JSON.parse(
    (await w.tether(["relay", "audit", "--data-dir", w.relayDir, "--json"])).stdout,
  );
  assert.deepEqual(rows[0].argv, argv);
  // An error quoting the name is escaped too.
  const off = await w.tether(["exec", "boxy\x1b[2J", "--", "true"]);
  assert.doesNotMatch(off.stderr, raw);
});
