/**
 * Issue 19: end-to-end encryption between client and agent. A relay (made hostile by a
 * WebSocket-aware proxy on its links) can neither read nor alter what it carries; machines
 * are pinned by key; agents authorize clients themselves and keep their own audit log.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { eventually, type RunResult, World } from "./helpers.ts";
import { connectWebSocket } from "../src/protocol/ws_client.ts";
import type { WsSocket } from "../src/protocol/ws_socket.ts";
import { PROTOCOL_VERSION } from "../src/protocol/version.ts";
import {
  decodeKey,
  fromBase64,
  generateKeyPair,
  Initiator,
  toBase64,
} from "../src/protocol/e2e.ts";
import { e2ePrologue, openControl, sealControl } from "../src/protocol/e2e_stream.ts";
import type { Control, Sealed } from "../src/protocol/messages.ts";
import { contains, type Tamper, WsTamperProxy } from "./ws_tamper.ts";

function lastJson(r: RunResult): { error?: { code: string; message: string; hint?: string } } {
  return JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "{}");
}

/** A world whose agent `box` reaches the relay through a hostile proxy. */
async function hostileWorld(): Promise<{ w: World; proxy: WsTamperProxy }> {
  const w = await World.create();
  const proxy = new WsTamperProxy({ hostname: "127.0.0.1", port: w.port });
  await w.startAgent("box", { relay: `ws://127.0.0.1:${proxy.port}` });
  return { w, proxy };
}

Deno.test("a relay that flips, drops, replays or injects a frame, or forges an exit: integrity, and nothing altered is shown", async () => {
  const { w, proxy } = await hostileWorld();
  await using _w = w;
  using _p = proxy;
  // Warm: the first stream pins the machine.
  const ok = await w.tether(["exec", "box", "--", "printf", "MARK%s\\n", "42"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "MARK42\n");

  const cases: Tamper[] = [
    { mode: "flip", direction: "up", nth: 1 },
    { mode: "drop", direction: "up", nth: 1 },
    { mode: "replay", direction: "up", nth: 1 },
    { mode: "inject", direction: "up", nth: 1 },
    // The relay's own lie: a clean exit 0 where the agent said nothing of the kind.
    { mode: "text", direction: "up", nth: 1, text: (sid) => `{"t":"exit","sid":${sid},"code":0}` },
    // A forged sealed message: a box that is not the agent's.
    {
      mode: "text",
      direction: "up",
      nth: 1,
      text: (sid) => `{"t":"sealed","sid":${sid},"box":"${btoa("x".repeat(40))}","end":"exit"}`,
    },
  ];
  for (const t of cases) {
    proxy.arm(t);
    const r = await w.tether(["exec", "box", "--json", "--", "printf", "MARK%s\\n", "42"]);
    await proxy.tampered;
    const what = `${t.mode}: ${r.stdout} ${r.stderr}`;
    assert.equal(r.code, 255, what);
    assert.equal(lastJson(r).error?.code, "integrity", what);
    const out = r.stdout.split("\n").filter((l) => l && !l.startsWith("{")).join("\n");
    // Never altered bytes: nothing, or the genuine line once (a replay is caught on its copy).
    assert.ok(out === "" || (t.mode === "replay" && out === "MARK42"), what);
    assert.doesNotMatch(r.stdout, /"exit"/, what);
  }
  // A bulk frame (sealed by OpenSSL or node:crypto, not the small-message code) flipped.
  proxy.arm({ mode: "flip", direction: "up", nth: 2 });
  const big = await w.tether(["exec", "box", "--json", "--", "head", "-c", "300000", "/dev/zero"]);
  await proxy.tampered;
  assert.equal(big.code, 255, big.stderr);
  assert.equal(lastJson(big).error?.code, "integrity", big.stderr);
  // The error object starts a line of its own after output that ended mid-line.
  const out = big.stdoutBytes;
  const lastLine = out.lastIndexOf(0x0a, out.length - 2);
  assert.ok(lastLine >= 0, "a newline before the error object");
  const zeros = out.subarray(0, lastLine);
  assert.ok(zeros.length < 300_000 && zeros.every((b) => b === 0), "only the genuine bytes");
});

Deno.test("OpenSSL at one end and node:crypto at the other, either way round, seal the same bytes", async () => {
  await using w = await World.create();
  const off = { TETHER_NATIVE_CRYPTO: "off" };
  await w.startAgent("native");
  await w.startAgent("fallback", { env: off });
  const input = new Uint8Array(3 * 1024 * 1024 + 123);
  for (let i = 0; i < input.length; i += 65536) {
    crypto.getRandomValues(input.subarray(i, Math.min(input.length, i + 65536)));
  }
  for (const agent of ["native", "fallback"]) {
    for (const env of [{}, off]) {
      const r = await w.tether(["exec", agent, "--", "cat"], { stdin: input, env });
      const what = `agent ${agent}, client ${env === off ? "fallback" : "native"}`;
      assert.equal(r.code, 0, `${what}: ${r.stderr}`);
      assert.ok(
        r.stdoutBytes.length === input.length && r.stdoutBytes.every((b, i) => b === input[i]),
        `${what}: the bytes came back unchanged`,
      );
    }
  }
});

Deno.test("stdin altered on the client's side is caught by the agent: integrity, and the command never sees it", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const proxy = new WsTamperProxy({ hostname: "127.0.0.1", port: w.port });
  using _p = proxy;
  const via = { TETHER_RELAY: `ws://127.0.0.1:${proxy.port}` };
  const file = join(w.home, "got");
  const ok = await w.tether(["exec", "box", "--", "sh", "-c", `cat > ${file}`], {
    stdin: "clean\n",
    env: via,
  });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(Deno.readTextFileSync(file), "clean\n");
  for (const mode of ["flip", "inject"] as const) {
    proxy.arm({ mode, direction: "up", nth: 1 });
    const r = await w.tether(["exec", "box", "--json", "--", "sh", "-c", `cat > ${file}`], {
      stdin: "SECRET-IN\n",
      env: via,
    });
    assert.equal(r.code, 255, r.stdout + r.stderr);
    assert.equal(lastJson(r).error?.code, "integrity", r.stdout);
    assert.ok(
      !Deno.readTextFileSync(file).includes("SECRET"),
      `${mode}: the command got no altered byte`,
    );
  }
});

Deno.test("the relay's links carry no argv, output or keystrokes in the clear; its audit has no argv, the agent's has", async () => {
  await using w = await World.create();
  const up = new WsTamperProxy({ hostname: "127.0.0.1", port: w.port });
  using _u = up;
  const agentLog = join(w.home, "agent-audit.jsonl");
  await w.startAgent("box", {
    relay: `ws://127.0.0.1:${up.port}`,
    args: ["--audit-log", agentLog],
  });
  const client = new WsTamperProxy({ hostname: "127.0.0.1", port: w.port });
  using _c = client;
  const via = { TETHER_RELAY: `ws://127.0.0.1:${client.port}` };
  // argv has ARGV-7f3a; the output ARGVOUT-49 exists only on the machine.
  const r = await w.tether(
    [
      "exec",
      "box",
      "--env",
      "PASSWD_ENV=ENV-c0ffee",
      "--",
      "sh",
      "-c",
      'echo ARGV-7f3a >/dev/null; echo "ARGVOUT-$((7*7))"',
    ],
    { env: via },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "ARGVOUT-49\n");
  // Keystrokes into a PTY session (the path connect takes): typed KEYS-, echoed KEYSOUT-.
  const t = await w.tether(["exec", "-t", "box", "--", "sh", "-c", 'read x; echo "KEYSOUT-$x"'], {
    stdin: "KEYS-91b\n",
    env: via,
  });
  assert.equal(t.code, 0, t.stderr);
  assert.match(t.stdout, /KEYSOUT-KEYS-91b/);
  for (const [name, proxy] of [["relay↔agent", up], ["client↔relay", client]] as const) {
    const seen = proxy.all();
    assert.ok(contains(seen, '"t":"hello"'), `${name}: the capture reads the links`);
    assert.ok(contains(seen, '"t":"sealed"'), `${name}: streams are sealed`);
    for (const secret of ["ARGV-7f3a", "ARGVOUT", "ENV-c0ffee", "KEYS-91b", "KEYSOUT", "read x"]) {
      assert.ok(!contains(seen, secret), `${name}: ${secret} crossed in the clear`);
    }
  }
  // The relay's audit: who, where, bytes, that it ended; no command line, no exit status.
  const audit = JSON.parse(
    (await w.tether(["relay", "audit", "--data-dir", w.relayDir, "--json"])).stdout,
  );
  assert.equal(audit.length, 2);
  for (const row of audit) {
    assert.equal(row.sealed, true);
    assert.equal(row.argv, null);
    assert.equal(row.exit_code, null);
    assert.ok(row.ended_at && row.bytes_out > 0, JSON.stringify(row));
  }
  const human = (await w.tether(["relay", "audit", "--data-dir", w.relayDir])).stdout;
  assert.match(human, /\(sealed, session [0-9a-f]{12}\)/);
  assert.doesNotMatch(human, /ARGV/);
  // The agent's own log has what the relay could not see, and who asked (the client's key).
  const whoami = JSON.parse((await w.tether(["whoami", "--json"])).stdout);
  const lines = Deno.readTextFileSync(agentLog).trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(lines.length, 2);
  assert.deepEqual(lines[0].argv, [
    "sh",
    "-c",
    'echo ARGV-7f3a >/dev/null; echo "ARGVOUT-$((7*7))"',
  ]);
  assert.equal(lines[0].client, whoami.fingerprint);
  assert.equal(lines[0].e2e, true);
  assert.equal(lines[1].kind, "pty");
  assert.equal(Deno.statSync(agentLog).mode! & 0o777, 0o600);

  // `tether sessions` still shows command lines: the relay lists the execs without them, and
  // each machine tells them end to end.
  const d = await w.tether(["exec", "--detach", "box", "--", "sh", "-c", "sleep 30 # SEALEDCMD"], {
    env: via,
  });
  assert.equal(d.code, 0, d.stderr);
  const listed = JSON.parse((await w.tether(["sessions", "--json"], { env: via })).stdout);
  assert.ok(
    listed.some((s: { command: string }) => s.command === "sh -c sleep 30 # SEALEDCMD"),
    JSON.stringify(listed),
  );
  for (const proxy of [up, client]) assert.ok(!contains(proxy.all(), "SEALEDCMD"));
});

Deno.test("pinning: first use records the machine's key; a new key is refused naming both until `machines trust` accepts it", async () => {
  await using w = await World.create();
  const state = join(w.home, "agents", "box");
  const agent = await w.startAgent("box", { stateDir: state });
  const first = (await agent.waitFor(/end-to-end key (SHA256:\S+)/))[1];
  const ms = await w.machines();
  assert.equal(ms[0].fingerprint, first);
  assert.equal(ms[0].trust, "new");
  assert.equal((await w.tether(["exec", "box", "--", "true"])).code, 0);
  assert.equal((await w.machines())[0].trust, "pinned");
  const pins = Deno.readTextFileSync(join(w.home, ".config", "tether", "known_machines"));
  assert.match(pins, new RegExp(`^box ${first.replace(/[+/]/g, "\\$&")}$`, "m"));

  // The same machine (same identity) comes back with another key.
  await agent.stop();
  Deno.removeSync(join(state, "e2e_key.json"));
  const again = await w.startAgent("box", { stateDir: state });
  const second = (await again.waitFor(/end-to-end key (SHA256:\S+)/))[1];
  assert.notEqual(second, first);
  const refused = await w.tether(["exec", "box", "--json", "--", "echo", "never"]);
  assert.equal(refused.code, 255);
  const err = lastJson(refused).error!;
  assert.equal(err.code, "machine_key_changed");
  assert.ok(err.message.includes(first) && err.message.includes(second), err.message);
  assert.match(err.hint ?? "", /tether machines trust box SHA256:/);
  assert.doesNotMatch(refused.stdout, /never/);
  assert.equal((await w.machines())[0].trust, "changed");
  const table = await w.tether(["machines"]);
  assert.match(table.stdout, /\(CHANGED\)/);
  // A wrong fingerprint is pinned as asked, and still refuses this key.
  const wrong = "SHA256:" + "A".repeat(43);
  assert.equal((await w.tether(["machines", "trust", "box", wrong])).code, 0);
  assert.equal(
    lastJson(await w.tether(["exec", "box", "--json", "--", "true"])).error?.code,
    "machine_key_changed",
  );
  const bad = await w.tether(["machines", "trust", "box", "SHA256:short"]);
  assert.equal(bad.code, 2);
  // The right one lets it in.
  const trust = await w.tether(["machines", "trust", "box", second]);
  assert.equal(trust.code, 0, trust.stderr);
  const ok = await w.tether(["exec", "box", "--", "echo", "in"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "in\n");

  // A look-alike name (an invisible character, another case) is the same name to a pin.
  await w.startAgent("BOX\u200b", { stateDir: join(w.home, "agents", "other") });
  const la = await w.tether(["exec", "BOX\u200b", "--json", "--", "true"]);
  assert.equal(lastJson(la).error?.code, "machine_key_changed", la.stdout);

  // Ahead of time: a machine not seen yet is pinned by name, and a different key is refused.
  assert.equal((await w.tether(["machines", "trust", "later", wrong])).code, 0);
  await w.startAgent("later");
  assert.equal(
    lastJson(await w.tether(["exec", "later", "--json", "--", "true"])).error?.code,
    "machine_key_changed",
  );
});

Deno.test("--authorized-keys: only listed clients open streams (edits apply to the next one); whoami prints the line", async () => {
  await using w = await World.create();
  const me = await w.tether(["whoami"]);
  assert.equal(me.code, 0, me.stderr);
  assert.match(me.stdout, /^tether-x25519 [A-Za-z0-9+/]{43}= \S+@\S+\n$/);
  assert.match(me.stderr, /fingerprint SHA256:/);
  const keyFile = join(w.home, ".config", "tether", "client_key.json");
  assert.equal(Deno.statSync(keyFile).mode! & 0o777, 0o600);
  // Someone else's key: another config dir.
  const other = await w.tether(["whoami"], { env: { TETHER_CONFIG_DIR: join(w.home, "other") } });
  const file = join(w.home, "authorized_keys");
  Deno.writeTextFileSync(file, `# only the other one\n${other.stdout}`);
  await w.startAgent("locked", { args: ["--authorized-keys", file] });

  const refused = await w.tether(["exec", "locked", "--json", "--", "echo", "no"]);
  assert.equal(refused.code, 255);
  const err = lastJson(refused).error!;
  assert.equal(err.code, "forbidden");
  assert.match(err.message, /not among locked's authorized keys/);
  // In the clear (an older client, or a relay speaking for one) is refused as well.
  const clear = await w.tether(["exec", "locked", "--json", "--", "echo", "no"], {
    env: { TETHER_E2E: "off" },
  });
  assert.equal(lastJson(clear).error?.code, "forbidden");

  Deno.writeTextFileSync(file, `${other.stdout}${me.stdout}`);
  const ok = await w.tether(["exec", "locked", "--", "echo", "yes"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "yes\n");

  // Ending a command: end to end it works; asked of the relay in the clear, the agent refuses.
  const d = await w.tether(["exec", "--detach", "locked", "--json", "--", "sleep", "60"]);
  assert.equal(d.code, 0, d.stderr);
  const id = JSON.parse(d.stdout).exec;
  const clearKill = await w.tether(["sessions", "kill", id, "--json"], {
    env: { TETHER_E2E: "off" },
  });
  assert.equal(lastJson(clearKill).error?.code, "forbidden", clearKill.stdout);
  const kill = await w.tether(["sessions", "kill", id]);
  assert.equal(kill.code, 0, kill.stderr);

  // A file that does not parse is said at start.
  Deno.writeTextFileSync(join(w.home, "bad_keys"), "tether-x25519 nope\n");
  const bad = await w.tether([
    "agent",
    "run",
    "--name",
    "x",
    "--state-dir",
    join(w.home, "x"),
    "--authorized-keys",
    join(w.home, "bad_keys"),
  ]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /bad_keys:1: not a tether public key/);
});

Deno.test("pinning: a CI hold's key is pinned by machine id, so the next run's hold (same name, new key) is not refused", async () => {
  await using w = await World.create();
  const first = await w.startAgent("ci.yml:build", {
    stateDir: join(w.home, "run1"),
    labels: ["ci=hold"],
  });
  assert.equal((await w.tether(["exec", "ci.yml:build", "--", "true"])).code, 0);
  const [m1] = await w.machines();
  assert.equal(m1.trust, "pinned");
  const pins = Deno.readTextFileSync(join(w.home, ".config", "tether", "known_machines"));
  assert.match(pins, new RegExp(`^id%3A${m1.id} SHA256:`, "m"));
  await first.stop();
  await w.waitMachines((ms) => ms.every((m) => !m.online));
  assert.equal((await w.tether(["machines", "rm", m1.id])).code, 0);
  // The next run: a new runner, a new identity and key, the same name.
  await w.startAgent("ci.yml:build", { stateDir: join(w.home, "run2"), labels: ["ci=hold"] });
  const r = await w.tether(["exec", "build", "--", "echo", "again"]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(r.stdout, "again\n");
});

/** A client speaking the wire itself (as a hostile relay replaying it would). */
class RawClient {
  readonly got: Record<string, unknown>[] = [];
  private constructor(readonly ws: WsSocket) {
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") this.got.push(JSON.parse(ev.data));
    };
  }

  static async open(w: World): Promise<RawClient> {
    const ws = await connectWebSocket(`ws://127.0.0.1:${w.port}/v1/client`, {
      headers: { Authorization: `Bearer ${w.keys.client_key}` },
    });
    const c = new RawClient(ws);
    c.send({ t: "hello", v: PROTOCOL_VERSION, role: "client", version: "test" });
    await c.next((m) => m.t === "welcome", "welcome");
    return c;
  }

  send(msg: unknown): void {
    this.ws.send(JSON.stringify(msg));
  }

  next(pred: (m: Record<string, unknown>) => boolean, what: string) {
    return eventually(() => this.got.find(pred), what, 10_000);
  }
}

Deno.test("wire: a replayed handshake and a replayed sealed open run nothing; a client's malformed sealed message ends its stream only", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const [box] = await w.machines();
  const agentKey = decodeKey(String(box.key))!;
  const c = await RawClient.open(w);
  const me = generateKeyPair();
  const file = join(w.home, "ran");
  const opening = (sid: number, msg: Uint8Array) => ({
    t: "open",
    sid,
    machine: box.id,
    kind: "exec",
    argv: [],
    stdin: false,
    window: 65536,
    e2e: { suite: "ChaChaPoly", msg: toBase64(msg) },
  });
  const accept = async (sid: number) =>
    fromBase64(String((await c.next((m) => m.t === "accept" && m.sid === sid, "accept")).e2e));
  const sealedFor = (sid: number) => c.next((m) => m.t === "sealed" && m.sid === sid, "sealed");

  // A genuine stream: the command runs once.
  const init = Initiator.start("ChaChaPoly", e2ePrologue(box.id), me, agentKey);
  c.send(opening(1, init.message));
  const t1 = init.finish(await accept(1)).transport;
  const realOpen = sealControl(t1, {
    t: "open",
    sid: 1,
    kind: "exec",
    argv: ["sh", "-c", `echo once >> ${file}`],
    stdin: false,
    window: 65536,
  }, 1);
  c.send(realOpen);
  const first = openControl(t1, await sealedFor(1) as Sealed);
  assert.equal(first.t, "started");
  await eventually(() => c.got.some((m) => m.sid === 1 && m.end === "exit"), "its exit");

  // The relay replays message 1, then the sealed open: the agent answers, but opens nothing.
  c.send(opening(2, init.message));
  await accept(2);
  c.send({ ...realOpen, sid: 2 });
  const refused = await c.next((m) => m.sid === 2 && (m.t === "sealed" || m.t === "error"), "end");
  assert.equal(refused.end ?? refused.code, "integrity", JSON.stringify(refused));
  assert.equal(Deno.readTextFileSync(file), "once\n", "the command ran once");

  // An open too large to go sealed fails alone, before the relay could refuse the connection.
  const big = await w.tether(["exec", "box", "--json", "--", "echo", "x".repeat(60_000)]);
  assert.equal(lastJson(big).error?.code, "usage", big.stdout);

  // An authentic client sealing something malformed: its stream ends, nothing else does.
  const init3 = Initiator.start("ChaChaPoly", e2ePrologue(box.id), me, agentKey);
  c.send(opening(3, init3.message));
  const t3 = init3.finish(await accept(3)).transport;
  c.send(sealControl(t3, { t: "open", sid: 3, kind: "exec" } as unknown as Control, 3));
  const bad = openControl(t3, await sealedFor(3) as Sealed) as { t: string; code?: string };
  assert.deepEqual([bad.t, bad.code], ["error", "internal"]);
  const ok = await w.tether(["exec", "box", "--", "echo", "still"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "still\n");
  c.ws.close();
});

Deno.test("a damaged key file is said, never silently replaced: an agent does not start, a client does not open", async () => {
  await using w = await World.create();
  const state = join(w.home, "agents", "box");
  await w.startAgent("box", { stateDir: state });
  assert.equal((await w.tether(["exec", "box", "--", "true"])).code, 0);
  await w.agents[0].stop();
  const keyFile = join(state, "e2e_key.json");
  Deno.writeTextFileSync(keyFile, "{not json");
  const agent = await w.tether(["agent", "run", "--name", "box", "--state-dir", state]);
  assert.notEqual(agent.code, 0);
  assert.match(agent.stderr, /e2e_key\.json is not a tether key file/);
  assert.equal(Deno.readTextFileSync(keyFile), "{not json", "left as it was");

  await w.startAgent("other");
  const clientKey = join(w.home, ".config", "tether", "client_key.json");
  Deno.writeTextFileSync(clientKey, "{}");
  const r = await w.tether(["exec", "other", "--json", "--", "true"]);
  assert.equal(r.code, 255, r.stdout + r.stderr);
  assert.equal(lastJson(r).error?.code, "not_configured");
  assert.match(lastJson(r).error?.message ?? "", /client_key\.json is not a tether key file/);
});
