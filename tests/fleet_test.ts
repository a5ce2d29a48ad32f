/**
 * Issue 15: a fleet of relays on one PostgreSQL (a throwaway cluster, tests/postgres.ts).
 * Three relays; agents and clients dial any of them; a relay that holds no agent bridges
 * to the one that does; kill -9 of a relay moves its agents and clients to the others
 * with nothing lost or repeated.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { baseEnv, eventually, Proc, run, type RunResult, tetherArgv } from "./helpers.ts";
import { hasTmux, Tmux } from "./tmux.ts";
import parsePrometheus from "parse-prometheus-text-format";
import { type Cluster, needPostgres, startCluster } from "./postgres.ts";

const SECRET = "fleet-secret-for-the-tests-0123456789";

interface Relay {
  name: string;
  url: string;
  proc: Proc;
}

class FleetWorld implements AsyncDisposable {
  readonly relays = new Map<string, Relay>();
  readonly procs: Proc[] = [];
  keys!: { client_key: string; agent_key: string; workspace: string };

  private constructor(readonly pg: Cluster, readonly url: string, readonly home: string) {}

  static async create(relays: string[]): Promise<FleetWorld> {
    const pg = await startCluster();
    try {
      const w = new FleetWorld(
        pg,
        await pg.database(),
        await Deno.makeTempDir({ prefix: "tether-fleet-" }),
      );
      const init = await run(["relay", "init", "--json"], { env: w.adminEnv() });
      assert.equal(init.code, 0, init.stderr);
      w.keys = JSON.parse(init.stdout);
      for (const name of relays) await w.startRelay(name);
      return w;
    } catch (e) {
      await pg[Symbol.asyncDispose]();
      throw e;
    }
  }

  adminEnv(): Record<string, string> {
    return { ...baseEnv(this.home), TETHER_STORE: this.url };
  }

  async startRelay(name: string): Promise<Relay> {
    const proc = Proc.tether(
      ["relay", "serve", "--listen", "127.0.0.1:0", "--data-dir", join(this.home, name)],
      { env: { ...this.adminEnv(), TETHER_FLEET_SECRET: SECRET } },
    );
    this.procs.push(proc);
    const url = (await proc.waitFor(/relay listening on (ws:\/\/\S+)/, "stdout"))[1];
    await proc.waitFor(/joined the fleet/);
    const r = { name, url, proc };
    this.relays.set(name, r);
    return r;
  }

  relay(name: string): Relay {
    return this.relays.get(name)!;
  }

  /** TETHER_RELAY for a list of relay names. */
  urls(...names: string[]): string {
    return names.map((n) => this.relay(n).url).join(",");
  }

  async startAgent(name: string, relays: string[], key = this.keys.agent_key): Promise<Proc> {
    const p = Proc.tether([
      "agent",
      "run",
      "--relay",
      this.urls(...relays),
      "--name",
      name,
      "--state-dir",
      join(this.home, "agents", name),
    ], { env: { ...baseEnv(this.home), SHELL: "/bin/bash", TETHER_AGENT_KEY: key } });
    this.procs.push(p);
    await p.waitFor(/online as /);
    return p;
  }

  clientEnv(relays: string[], key = this.keys.client_key): Record<string, string> {
    return { ...baseEnv(this.home), TETHER_RELAY: this.urls(...relays), TETHER_API_KEY: key };
  }

  tether(relays: string[], args: string[], opts: { stdin?: string; key?: string } = {}) {
    return run(args, { env: this.clientEnv(relays, opts.key), stdin: opts.stdin });
  }

  spawn(relays: string[], args: string[], opts: { stdin?: boolean } = {}): Proc {
    const p = Proc.tether(args, { env: this.clientEnv(relays), stdin: opts.stdin });
    this.procs.push(p);
    return p;
  }

  async machines(relays: string[], key?: string) {
    const r = await this.tether(relays, ["machines", "--json"], { key });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return JSON.parse(r.stdout) as { id: string; name: string; online: boolean }[];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.procs.map((p) => p.stop()));
    await this.pg[Symbol.asyncDispose]();
    await Deno.remove(this.home, { recursive: true }).catch(() => {});
  }
}

function fleetTest(
  t: string | { name: string; ignore?: boolean },
  fn: () => Promise<void>,
) {
  const { name, ignore } = typeof t === "string" ? { name: t, ignore: false } : t;
  Deno.test({ name: `fleet: ${name}`, ignore: needPostgres.ignore || ignore, fn });
}

function code(r: RunResult): string {
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!).error.code;
}

fleetTest(
  "an agent on A, a client on C: machines, exit codes, 32 MiB byte-exact, sessions",
  async () => {
    await using w = await FleetWorld.create(["a", "b", "c"]);
    await w.startAgent("box", ["a"]);
    for (const r of ["a", "b", "c"]) {
      assert.deepEqual((await w.machines([r])).map((m) => [m.name, m.online]), [["box", true]]);
    }
    const ex = await w.tether(["c"], [
      "exec",
      "box",
      "--",
      "sh",
      "-c",
      "echo out; echo err >&2; exit 3",
    ]);
    assert.deepEqual([ex.code, ex.stdout, ex.stderr.trim()], [3, "out\n", "err"]);

    // 32 MiB of random bytes through C → A → agent and back: the agent says their hash.
    const file = join(w.home, "random.bin");
    const big = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-q",
        "-A",
        join(Deno.cwd(), "dist", "tether.js"),
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        `head -c 33554432 /dev/urandom > ${file} && sha256sum ${file} >&2 && cat ${file}`,
      ],
      env: w.clientEnv(["c"]),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = await big;
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(out.stdout.length, 33554432);
    const local = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", out.stdout)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    assert.equal(new TextDecoder().decode(out.stderr).split(" ")[0], local);

    // A running exec shows in `sessions` on every relay, and can be killed from any.
    const sleeper = w.spawn(["b"], ["exec", "box", "--", "sleep", "300"]);
    const found = await eventually(async () => {
      const s = await w.tether(["c"], ["sessions", "--json"]);
      const list = JSON.parse(s.stdout) as { id: string; command: string; state: string }[];
      return list.find((e) => e.command === "sleep 300" && e.state === "running");
    }, "the exec in sessions via C");
    const kill = await w.tether(["a"], ["sessions", "kill", found.id]);
    assert.equal(kill.code, 0, kill.stdout + kill.stderr);
    assert.notEqual((await sleeper.ended(20_000)).code, 0);
  },
);

fleetTest("a second workspace sees none of the first's machines on any relay", async () => {
  await using w = await FleetWorld.create(["a", "b"]);
  await w.startAgent("box", ["a"]);
  const other = await run(["relay", "init", "--workspace", "other", "--json"], {
    env: w.adminEnv(),
  });
  const keys = JSON.parse(other.stdout);
  for (const r of ["a", "b"]) {
    assert.deepEqual(await w.machines([r], keys.client_key), []);
    const [m] = await w.machines([r]);
    const ex = await w.tether([r], ["exec", m.id, "--json", "--", "true"], {
      key: keys.client_key,
    });
    assert.equal(code(ex), "machine_not_found");
  }
});

fleetTest(
  "a key revoked with `relay keys revoke --store` cuts its connection on another relay within 2 s",
  async () => {
    await using w = await FleetWorld.create(["a", "c"]);
    await w.startAgent("box", ["a"]);
    const watcher = w.spawn(["c"], ["exec", "box", "--stream", "--", "cat"], { stdin: true });
    await watcher.write("hello\n");
    await watcher.waitFor(/hello/, "stdout");
    const keys = JSON.parse(
      (await run(["relay", "keys", "list", "--json"], { env: w.adminEnv() })).stdout,
    ) as { id: string; role: string }[];
    const rev = await run(["relay", "keys", "revoke", keys.find((k) => k.role === "client")!.id], {
      env: w.adminEnv(),
    });
    assert.equal(rev.code, 0, rev.stderr);
    // From the revocation made (the CLI's exit; its own start under a loaded machine is not
    // the relay's doing) to the watcher being told.
    const revoked = Date.now();
    await watcher.waitFor(/revoked/, "stderr", 10_000);
    const took = Date.now() - revoked;
    const st = await watcher.ended(10_000);
    assert.equal(st.code, 255);
    assert.match(watcher.stderr, /revoked/);
    assert.ok(took < 2_000 + 1_000, `cut after ${took} ms`); // 2 s, plus the client's reaction
  },
);

fleetTest(
  "kill -9 of the relay holding the agent (and one client): exec --stream goes on byte-exact via the others",
  async () => {
    await using w = await FleetWorld.create(["a", "b", "c"]);
    const agent = await w.startAgent("box", ["a", "b"]);
    // One client bridged through C, one on A itself (it moves to C).
    const viaC = w.spawn(["c"], ["exec", "box", "--stream", "--", "cat"], { stdin: true });
    const onA = w.spawn(["a", "c"], ["exec", "box", "--stream", "--", "cat"], { stdin: true });
    for (const p of [viaC, onA]) {
      await p.write("one\n");
      await p.waitFor(/^one\n$/, "stdout");
    }
    w.relay("a").proc.kill("SIGKILL");
    await agent.waitFor(
      /online as box \([0-9a-f-]+\) via ws:\/\/127\.0\.0\.1:\d+[\s\S]*online as box/,
    );
    for (const p of [viaC, onA]) {
      await p.write("two\n");
      await p.waitFor(/^one\ntwo\n$/, "stdout", 30_000);
      await p.write("three\n");
      await p.closeStdin();
      const st = await p.ended(30_000);
      assert.equal(st.code, 0, p.stderr);
      assert.equal(p.stdout, "one\ntwo\nthree\n", "nothing lost or repeated");
    }
    assert.deepEqual((await w.machines(["b"])).map((m) => [m.name, m.online]), [["box", true]]);
  },
);

fleetTest({
  name:
    "kill -9 of the relay holding the agent mid-connect: the session goes on via another, with replay",
  ignore: !hasTmux(),
}, async () => {
  await using w = await FleetWorld.create(["a", "b", "c"]);
  const agent = await w.startAgent("shellbox", ["a", "b"]);
  await using t = await Tmux.start(tetherArgv(["connect", "shellbox"]), {
    env: { ...w.clientEnv(["c"]), TERM: "xterm-256color" },
  });
  await t.waitFor(/attached —/);
  await t.line("echo marker-$((6*7))");
  await t.waitFor(/^marker-42$/m);
  w.relay("a").proc.kill("SIGKILL");
  await agent.waitFor(/online as [\s\S]*online as /);
  await t.line("echo after-$((6*7))");
  await t.waitFor(/^after-42$/m, 30_000);
  const screen = await t.screen();
  assert.equal(screen.match(/^marker-42$/gm)?.length, 1, `replayed twice:\n${screen}`);
  assert.equal(screen.match(/^after-42$/gm)?.length, 1, screen);
});

fleetTest("eight wrong passwords spread over three relays are throttled as eight", async () => {
  await using w = await FleetWorld.create(["a", "b", "c"]);
  const set = await run(["password", "set", "--state-dir", join(w.home, "agents", "vault")], {
    env: baseEnv(w.home),
    stdin: "correct horse battery staple\n",
  });
  assert.equal(set.code, 0, set.stderr);
  await w.startAgent("vault", ["a"]);
  const codes: string[] = [];
  for (let i = 0; i < 8; i++) {
    const relay = ["a", "b", "c"][i % 3];
    const r = await w.tether([relay], [
      "exec",
      "vault",
      "--json",
      "--password",
      `wrong-${i}`,
      "--",
      "true",
    ]);
    codes.push(code(r));
  }
  assert.deepEqual(codes, [
    ...Array(5).fill("password_invalid"),
    ...Array(3).fill("rate_limited"),
  ]);
});

fleetTest(
  "the database stops for 10 s: bridged streams go on, what needs the store is relay_unavailable, all recovers",
  async () => {
    await using w = await FleetWorld.create(["a", "c"]);
    await w.startAgent("box", ["a"]);
    const turn = w.spawn(["c"], ["exec", "box", "--stream", "--", "cat"], { stdin: true });
    await turn.write("before\n");
    await turn.waitFor(/before/, "stdout");
    await w.pg.stop();
    const stoppedAt = Date.now();
    await turn.write("during\n");
    await turn.waitFor(/during/, "stdout");
    const refused = await w.tether(["c"], ["machines", "--json"]);
    // The whole answer on failure: a relay_unreachable here was seen once in a loaded suite
    // (December 3) and could not be reproduced; its message says which path gave it.
    assert.equal(code(refused), "relay_unavailable", `${refused.stdout}${refused.stderr}`);
    const ready = await eventually(async () => {
      const r = await fetch(`${w.relay("c").url.replace(/^ws/, "http")}/readyz`);
      const body = await r.text();
      return r.status === 503 ? body : undefined;
    }, "/readyz to say not ready");
    assert.match(ready, /not ready/);
    // Ten seconds without the database: longer than a lease lives.
    await new Promise((r) => setTimeout(r, Math.max(0, 10_000 - (Date.now() - stoppedAt))));
    await turn.write("still\n");
    await turn.waitFor(/still/, "stdout");
    await w.pg.start();
    const back = await eventually(
      async () => {
        // The lease lapsed while the database was away; A's next renewal (every 2 s)
        // restores it, and C then sees the machine online again.
        const r = await w.tether(["c"], ["machines", "--json"]);
        if (r.code !== 0) return undefined;
        const rows = JSON.parse(r.stdout) as { online: boolean }[];
        return rows[0]?.online ? rows : undefined;
      },
      "the machine online via C again",
      30_000,
    );
    assert.equal(back.length, 1);
    const ex = await w.tether(["c"], ["exec", "box", "--", "sh", "-c", "exit 5"]);
    assert.equal(ex.code, 5, ex.stderr);
    await turn.write("after\n");
    await turn.closeStdin();
    assert.equal((await turn.ended()).code, 0, turn.stderr);
    assert.equal(turn.stdout, "before\nduring\nstill\nafter\n");
  },
);

fleetTest(
  "/metrics parses as Prometheus text: agents, clients, streams, relay-to-relay, bytes, refusals, store latency",
  async () => {
    await using w = await FleetWorld.create(["a", "c"]);
    await w.startAgent("box", ["a"]);
    const turn = w.spawn(["c"], ["exec", "box", "--stream", "--", "cat"], { stdin: true });
    await turn.write("x".repeat(1000) + "\n");
    await turn.waitFor(/x{1000}/, "stdout");
    const bad = await w.tether(["c"], ["machines", "--json"], {
      key: "tether_client_000000000000_" + "0".repeat(40),
    });
    assert.equal(code(bad), "unauthenticated");
    const scrape = async (relay: string) => {
      const r = await fetch(`${w.relay(relay).url.replace(/^ws/, "http")}/metrics`);
      assert.equal(r.status, 200);
      assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      const text = await r.text();
      const families = parsePrometheus(text) as {
        name: string;
        type: string;
        metrics: { value?: string; labels?: Record<string, string>; count?: string }[];
      }[];
      const value = (name: string, labels: Record<string, string> = {}) => {
        const f = families.find((f) => f.name === name);
        assert.ok(f, `${name} is exported`);
        const m = f.metrics.find((m) =>
          Object.entries(labels).every(([k, v]) => m.labels?.[k] === v)
        );
        return Number(m?.value ?? m?.count ?? NaN);
      };
      return { families, value, text };
    };
    const a = await scrape("a");
    const c = await scrape("c");
    assert.equal(a.value("tether_agents_connected"), 1);
    assert.equal(c.value("tether_agents_connected"), 0);
    assert.equal(c.value("tether_clients_connected"), 1);
    assert.equal(c.value("tether_streams_open", { kind: "exec" }), 1);
    assert.equal(c.value("tether_relay_streams", { direction: "out" }), 1);
    assert.equal(a.value("tether_relay_streams", { direction: "in" }), 1);
    assert.ok(c.value("tether_bytes_relayed_total", { direction: "to_agent" }) >= 1001);
    assert.ok(c.value("tether_bytes_relayed_total", { direction: "to_client" }) >= 1001);
    assert.ok(c.value("tether_frames_relayed_total", { direction: "to_client" }) >= 1);
    assert.equal(c.value("tether_auth_failures_total", { code: "unauthenticated" }), 1);
    const store = c.families.find((f) => f.name === "tether_store_seconds");
    assert.equal(store?.type, "HISTOGRAM");
    // (The parser keeps a histogram's buckets but not its labels: those are read from the text.)
    assert.match(c.text, /^tether_store_seconds_count\{op="authenticate",outcome="ok"\} [1-9]/m);
    await turn.closeStdin();
    assert.equal((await turn.ended()).code, 0);
  },
);

fleetTest(
  "SIGTERM drains a relay: its agents and clients move to the others, a stream goes on",
  async () => {
    await using w = await FleetWorld.create(["a", "b"]);
    const agent = await w.startAgent("box", ["a", "b"]);
    const turn = w.spawn(["a", "b"], ["exec", "box", "--stream", "--", "cat"], { stdin: true });
    await turn.write("one\n");
    await turn.waitFor(/^one\n$/, "stdout");
    w.relay("a").proc.kill("SIGTERM");
    assert.equal((await w.relay("a").proc.ended(20_000)).code, 0);
    await agent.waitFor(/online as [\s\S]*online as /);
    await turn.write("two\n");
    await turn.closeStdin();
    assert.equal((await turn.ended(30_000)).code, 0, turn.stderr);
    assert.equal(turn.stdout, "one\ntwo\n");
    assert.deepEqual((await w.machines(["b"])).map((m) => m.online), [true]);
  },
);
