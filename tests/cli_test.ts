/**
 * Issue 5: one resolver, label selection, TTY-gated prompts and structured
 * failures, through the real CLI with stdin from /dev/null and a hard
 * timeout on every run (a prompt that waited would fail the test).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { baseEnv, run, tetherArgv, World } from "./helpers.ts";
import { hasTmux, Tmux } from "./tmux.ts";

/** Asserts the error shape README gives: one JSON object on stdout, nothing else there. */
function jsonError(r: { stdout: string; code: number }, code: string, exit: number) {
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 1, `one line on stdout: ${r.stdout}`);
  const o = JSON.parse(lines[0]);
  assert.deepEqual(Object.keys(o), ["error"]);
  assert.equal(o.error.code, code, r.stdout);
  assert.equal(typeof o.error.message, "string");
  assert.equal(typeof o.error.hint, "string", "every error says what to do");
  assert.equal(r.code, exit);
  return o.error;
}

async function fleet(): Promise<World> {
  const w = await World.create();
  await Promise.all([
    w.startAgent("prod-api-1", { labels: ["env=prod"], env: { WHO: "prod-api-1" } }),
    w.startAgent("prod-api-2", { labels: ["env=prod"], env: { WHO: "prod-api-2" } }),
    w.startAgent("ci.yml:build", { labels: ["ci=hold"], env: { WHO: "ci.yml:build" } }),
  ]);
  return w;
}

Deno.test("connect with stdin not a terminal: interactive_required, pointing at exec --stream and -t", async () => {
  await using w = await World.create();
  await w.startAgent("piped");
  const r = await w.tether(["connect", "piped", "--no-interactive"], { stdin: "echo hi\n" });
  assert.equal(r.code, 255);
  assert.match(r.stderr, /hint: .*exec --stream/);
  const human = await w.tether(["connect", "piped"], { stdin: "echo hi\n" });
  assert.equal(human.code, 255);
  assert.match(human.stderr, /connect needs a terminal on stdin[\s\S]*-t/);
  // -t attaches anyway: the input runs, and its end detaches.
  const forced = w.spawn(["connect", "-t", "piped"], { stdin: true });
  await forced.write("echo forced-$((1+1))\n");
  await forced.waitFor(/forced-2/, "stdout");
  await forced.closeStdin();
  assert.equal((await forced.status).code, 0, forced.stderr);
});

Deno.test("no machine and no terminal: interactive_required at once, for connect and exec", async () => {
  const home = await Deno.makeTempDir();
  try {
    // No relay is configured: the refusal comes before any dialing.
    const c = await run(["connect", "--json"], { env: baseEnv(home), timeoutMs: 10_000 });
    const e = jsonError(c, "interactive_required", 255);
    assert.match(e.hint, /--list/);
    const h = await run(["connect", "--no-interactive"], { env: baseEnv(home), timeoutMs: 10_000 });
    assert.equal(h.code, 255);
    assert.equal(h.stdout, "");
    assert.match(h.stderr, /^tether: .+\n {2}hint: .+\n$/);
    const l = await run(["login", "--json"], { env: baseEnv(home), timeoutMs: 10_000 });
    jsonError(l, "interactive_required", 1);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("resolver through the CLI: job keys, prefixes, ambiguity with candidates, not found, offline", async () => {
  await using w = await fleet();
  const who = async (args: string[]) => {
    const r = await w.tether(["exec", ...args, "--", "sh", "-c", "echo $WHO"], {
      timeoutMs: 20_000,
    });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return r.stdout.trim();
  };
  assert.equal(await who(["build"]), "ci.yml:build");
  assert.equal(await who(["prod-api-2"]), "prod-api-2");

  const amb = await w.tether(["exec", "prod-api", "--json", "--", "true"]);
  const e = jsonError(amb, "ambiguous_machine", 255);
  assert.deepEqual(e.candidates.map((c: { name: string }) => c.name).sort(), [
    "prod-api-1",
    "prod-api-2",
  ]);
  for (const c of e.candidates) {
    assert.deepEqual(Object.keys(c).sort(), ["hostname", "id", "name", "online"]);
  }

  jsonError(await w.tether(["exec", "nope", "--json", "--", "true"]), "machine_not_found", 255);
  jsonError(await w.tether(["connect", "nope", "--json"]), "interactive_required", 255);
  jsonError(await w.tether(["sessions", "nope", "--json"]), "machine_not_found", 1);

  // Human form: what happened, the candidates, what to do.
  const human = await w.tether(["exec", "prod-api", "--", "true"]);
  assert.equal(human.code, 255);
  assert.match(human.stderr, /matches 2 machines/);
  assert.match(human.stderr, /hint: /);

  await w.agents[2].stop();
  await w.waitMachines((ms) => ms.some((m) => m.name === "ci.yml:build" && !m.online));
  jsonError(await w.tether(["exec", "build", "--json", "--", "true"]), "machine_offline", 255);
});

Deno.test("label selection: one match, --first in name order, several without --first", async () => {
  await using w = await fleet();
  const first = await w.tether([
    "exec",
    "-l",
    "env=prod",
    "--first",
    "--",
    "sh",
    "-c",
    "echo $WHO",
  ]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(first.stdout.trim(), "prod-api-1");
  const one = await w.tether(["exec", "-l", "ci=hold", "--", "sh", "-c", "echo $WHO"]);
  assert.equal(one.stdout.trim(), "ci.yml:build");
  const several = await w.tether(["exec", "-l", "env=prod", "--json", "--", "true"]);
  const e = jsonError(several, "ambiguous_machine", 255);
  assert.match(e.hint, /--first/);
  assert.equal(e.candidates.length, 2);
  const none = await w.tether(["connect", "-l", "env=qa", "--json"]);
  jsonError(none, "interactive_required", 255);
  const sel = await w.tether(["machines", "-l", "env=prod", "--json"]);
  assert.deepEqual(JSON.parse(sel.stdout).map((m: { name: string }) => m.name).sort(), [
    "prod-api-1",
    "prod-api-2",
  ]);
  const list = await w.tether(["connect", "--list", "-l", "ci=hold", "--json"]);
  assert.deepEqual(JSON.parse(list.stdout).map((m: { name: string }) => m.name), ["ci.yml:build"]);
});

Deno.test("JSON on every command: success payloads and failures", async () => {
  await using w = await World.create();
  await w.startAgent("jsonbox");
  const cfgDir = `${w.home}/cfg`;

  const login = await w.tether(["login", "--json", "--config-dir", cfgDir]);
  assert.equal(login.code, 0, login.stderr);
  assert.deepEqual(Object.keys(JSON.parse(login.stdout)).sort(), ["config", "relay", "workspace"]);
  // The stored config works with no env at all.
  const stored = await run(["machines", "--json", "--config-dir", cfgDir], {
    env: baseEnv(w.home),
  });
  assert.equal(JSON.parse(stored.stdout)[0].name, "jsonbox");
  const logout = await w.tether(["logout", "--json", "--config-dir", cfgDir]);
  assert.deepEqual(JSON.parse(logout.stdout), { config: `${cfgDir}/config.json`, removed: true });
  const after = await run(["machines", "--json", "--config-dir", cfgDir], { env: baseEnv(w.home) });
  jsonError(after, "not_configured", 1);

  const ms = JSON.parse((await w.tether(["machines", "--json"])).stdout);
  for (const k of ["id", "name", "hostname", "online", "last_seen", "labels", "sessions"]) {
    assert.ok(k in ms[0], k);
  }
  assert.deepEqual(JSON.parse((await w.tether(["sessions", "--json"])).stdout), []);
  const keys = JSON.parse(
    (await w.tether(["relay", "keys", "list", "--data-dir", w.relayDir, "--json"])).stdout,
  );
  assert.deepEqual(Object.keys(keys[0]).sort(), [
    "created_at",
    "id",
    "last_used_at",
    "revoked",
    "revoked_at",
    "role",
    "workspace",
  ]);
  jsonError(await w.tether(["sessions", "kill", "zzzz", "--json"]), "session_not_found", 1);
  jsonError(
    await w.tether([
      "relay",
      "keys",
      "create",
      "--data-dir",
      w.relayDir,
      "--workspace",
      "nope",
      "--role",
      "client",
      "--json",
    ]),
    "usage",
    2,
  );
  jsonError(
    await w.tether(["exec", "--json", "--bogus-flag", "jsonbox", "--", "true"]),
    "usage",
    2,
  );
  jsonError(await w.tether(["frobnicate", "--json"]), "usage", 2);
  jsonError(
    await w.tether(["exec", "jsonbox", "--timeout", "soon", "--json", "--", "true"]),
    "usage",
    2,
  );
});

Deno.test({
  name: "login on a terminal asks for the relay URL and the key (hidden), then works from the file",
  ignore: !hasTmux(),
  async fn() {
    await using w = await World.create();
    await w.startAgent("prompted");
    const cfgDir = `${w.home}/cfg-prompted`;
    // No relay or key in the environment: login must ask.
    await using t = await Tmux.start(tetherArgv(["login", "--config-dir", cfgDir]), {
      env: baseEnv(w.home),
    });
    await t.waitFor(/Relay URL/);
    await t.line(w.url);
    await t.waitFor(/API key/);
    await t.line(w.keys.client_key);
    await t.waitFor(/\[exited 0\]/);
    const screen = await t.screen();
    assert.match(screen, /logged in to ws:\/\/127\.0\.0\.1:\d+ \(workspace default\)/);
    assert.ok(!screen.includes(w.keys.client_key), "the key is not echoed");
    const stored = await run(["machines", "--json", "--config-dir", cfgDir], {
      env: baseEnv(w.home),
    });
    assert.equal(JSON.parse(stored.stdout)[0].name, "prompted");
    assert.equal((await Deno.stat(`${cfgDir}/config.json`)).mode! & 0o777, 0o600);
  },
});

Deno.test("machines that are gone: rm (refused while online), pruning, and --online for a mixed ambiguity", async () => {
  await using w = await World.create();
  // Two machines named twin: an old one, offline, and a new one, online.
  const old = await w.startAgent("twin", { stateDir: join(w.home, "twin-old") });
  await old.stop();
  await w.startAgent("twin", { stateDir: join(w.home, "twin-new") });
  const amb = await w.tether(["exec", "twin", "--json", "--", "true"]);
  const e = jsonError(amb, "ambiguous_machine", 255);
  assert.match(e.message, /'twin' matches 2 machines by name \(1 online, 1 offline\)/);
  assert.match(e.hint, /add --online/);
  const online = await w.tether(["exec", "twin", "--online", "--", "echo", "the-new-one"]);
  assert.equal(online.stdout, "the-new-one\n", online.stderr);

  const ms = await w.machines();
  const oldId = ms.find((m) => !m.online)!.id;
  const newId = ms.find((m) => m.online)!.id;
  const refused = await w.tether(["machines", "rm", newId, "--json"]);
  assert.equal(
    jsonError(refused, "forbidden", 1).message,
    `machine twin (${newId.slice(0, 8)}) is online; only an offline machine can be removed`,
  );
  const rm = await w.tether(["machines", "rm", oldId, "--json"]);
  assert.equal(rm.code, 0, rm.stdout + rm.stderr);
  assert.deepEqual(JSON.parse(rm.stdout), { removed: oldId, name: "twin" });
  assert.equal((await w.tether(["exec", "twin", "--", "true"])).code, 0, "no longer ambiguous");
  jsonError(await w.tether(["machines", "rm", oldId, "--json"]), "machine_not_found", 1);
  // Its agent, come back, is told its identity is gone, and stops.
  const back = await w.startAgent("twin", { stateDir: join(w.home, "twin-old"), wait: false });
  assert.equal((await back.status).code, 1);
  assert.match(back.stderr, /refused machine identity/);

  // A machine offline longer than --prune-after is forgotten by the relay itself.
  await w.agents[1].stop();
  await w.stopRelay();
  await w.startRelay(["--prune-after", "1s"]);
  await w.waitMachines((ms) => ms.length === 0, 20_000);
});

Deno.test("CLI papercuts: version, and an unknown option of exec points at --", async () => {
  const home = await Deno.makeTempDir();
  try {
    const env = baseEnv(home);
    const v = await run(["version"], { env });
    const short = await run(["-V"], { env });
    assert.equal(v.code, 0);
    assert.match(v.stdout, /^\d+\.\d+\.\d+\n$/);
    assert.equal(short.stdout, v.stdout);
    const r = await run(["--relay", "ws://127.0.0.1:9", "exec", "box", "--color", "ls"], { env });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown option '--color'/);
    assert.match(
      r.stderr,
      /put -- before the command: tether exec MACHINE \[options\] -- CMD --color/,
    );
    const other = await run(["machines", "--bogus"], { env });
    assert.equal(other.code, 2);
    assert.doesNotMatch(other.stderr, /put --/);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("connect --session with an unknown id names the cause once: the session, not the relay", async () => {
  await using w = await World.create();
  await w.startAgent("sessbox");
  const r = await w.tether(["connect", "-t", "sessbox", "--session", "nosuch"]);
  assert.equal(r.code, 255);
  assert.match(
    r.stderr,
    /dialing relay \.\.\. ok\nauth \.\.\. failed\ntether: no session 'nosuch'/,
  );
  assert.doesNotMatch(r.stderr, /dialing relay \.\.\. failed/);
  assert.match(r.stderr, /hint: .*--new/);
});
