/**
 * The PostgreSQL store against a real PostgreSQL (a throwaway cluster, tests/postgres.ts):
 * the store conformance suite, migrations by relays starting together, a database that
 * goes away and comes back, and relays serving from it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { PG_SCHEMA_VERSION, PostgresStore } from "../src/relay/store_postgres.ts";
import { LEASE_TTL_MS } from "../src/relay/store.ts";
import { storeCases } from "./store_suite.ts";
import { type Cluster, needPostgres, startCluster } from "./postgres.ts";
import { baseEnv, eventually, Proc, run } from "./helpers.ts";
import { parseKey } from "../src/protocol/keys.ts";
import { DEFAULT_DIAL_TIMEOUT_MS } from "../src/protocol/dial.ts";

const SECRET = "a-fleet-secret-of-enough-length";

const pgTest = (name: string, fn: (t: Deno.TestContext, pg: Cluster) => Promise<void>) =>
  Deno.test({
    name: `postgres: ${name}`,
    ignore: needPostgres.ignore,
    async fn(t) {
      await using pg = await startCluster();
      await fn(t, pg);
    },
  });

pgTest("the store conformance suite", async (t, pg) => {
  const cases = storeCases(async () => ({
    store: await PostgresStore.connect(await pg.database()),
    dispose: async () => {},
  }));
  for (const c of cases) await t.step(c.name, c.fn);
});

pgTest("relays that start together migrate once; a newer schema is refused", async (_t, pg) => {
  const url = await pg.database();
  const stores = await Promise.all([1, 2, 3, 4].map(() => PostgresStore.connect(url)));
  try {
    const [{ version }] = await stores[0].sql<
      { version: number }[]
    >`SELECT version FROM tether_schema`;
    assert.equal(version, PG_SCHEMA_VERSION);
    await stores[0].sql`UPDATE tether_schema SET version = 99`;
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
  await assert.rejects(() => PostgresStore.connect(url), /schema v99, newer than this tether/);
});

pgTest(
  "leases: a newer claim wins by epoch, and a relay that stops renewing holds nothing",
  async (_t, pg) => {
    const store = await PostgresStore.connect(await pg.database());
    try {
      await store.registerRelay("ra", "ws://a");
      await store.registerRelay("rb", "ws://b");
      const e1 = await store.claimLease("m1", "ra");
      await store.claimLease("m2", "ra");
      assert.deepEqual(await store.holder("m1"), { relay: "ra", url: "ws://a", epoch: e1 });
      // B takes m1 (its agent moved): A's renewal reports m1 lost, keeps m2.
      const e2 = await store.claimLease("m1", "rb");
      assert.equal(e2, e1 + 1);
      const lost = await store.renewLeases("ra", "ws://a", new Map([["m1", e1], ["m2", 1]]));
      assert.deepEqual(lost, ["m1"]);
      assert.equal((await store.holder("m1"))?.relay, "rb");
      // Renewing writes the relay's row only; the lease rows are untouched.
      const [{ xmin: before }] = await store.sql<{ xmin: string }[]>`
      SELECT xmin::text FROM leases WHERE machine_id = 'm2'`;
      await store.renewLeases("ra", "ws://a", new Map([["m2", 1]]));
      const [{ xmin: after }] = await store.sql<{ xmin: string }[]>`
      SELECT xmin::text FROM leases WHERE machine_id = 'm2'`;
      assert.equal(after, before);
      // A relay silent for longer than a lease lives holds nothing (as if killed -9).
      await store.sql`UPDATE relays SET seen_at = seen_at - ${LEASE_TTL_MS + 1} WHERE id = 'ra'`;
      assert.equal(await store.holder("m2"), undefined);
      // Its next renewal (it was only slow) brings its leases back, as nobody claimed them.
      assert.deepEqual(await store.renewLeases("ra", "ws://a", new Map([["m2", 1]])), []);
      assert.equal((await store.holder("m2"))?.relay, "ra");
      // A relay removed (stopped) gives its leases up at once.
      await store.removeRelay("rb");
      assert.equal(await store.holder("m1"), undefined);
      // Epochs never go back: a lease given up and taken again goes on from where it was.
      assert.equal(await store.claimLease("m1", "ra"), e2 + 1);
      await store.releaseLease("m1", "ra", e2 + 1);
      assert.equal(await store.holder("m1"), undefined);
      assert.equal(await store.claimLease("m1", "ra"), e2 + 2);
    } finally {
      await store.close();
    }
  },
);

pgTest(
  "a database that cannot be reached is relay_unavailable, and says where (no password)",
  async (_t, pg) => {
    const wrong = `postgres://tether:hunter2@127.0.0.1:${pg.port}/nosuchdb`;
    await assert.rejects(() => PostgresStore.connect(wrong), (e: Error & { code?: string }) => {
      assert.equal(e.code, "relay_unavailable");
      assert.match(e.message, /cannot use the store postgres:\/\/tether:\*\*\*@127\.0\.0\.1/);
      assert.match(e.message, /nosuchdb/);
      assert.doesNotMatch(e.message, /hunter2/);
      return true;
    });
  },
);

pgTest(
  "a silent database: a key check is relay_unavailable within half a client's dial timeout",
  async (_t, pg) => {
    // A connecting client waits for the key check at most its dial timeout; it must hear
    // "unavailable, retry" (HTTP 503), not give up as if the relay were unreachable. The
    // server and every backend are stopped (SIGSTOP): connections stay open, nothing answers.
    const store = await PostgresStore.connect(await pg.database());
    const pids: number[] = [];
    try {
      await store.ensureWorkspace("w");
      const key = parseKey((await store.createKey("w", "client")).key)!;
      assert.ok(await store.authenticate(key));
      const main = Number(
        (await Deno.readTextFile(join(pg.dataDir, "postmaster.pid"))).split("\n")[0],
      );
      const children = new TextDecoder().decode(
        (await new Deno.Command("pgrep", { args: ["-P", String(main)], stdout: "piped" }).output())
          .stdout,
      ).split("\n").filter(Boolean).map(Number);
      for (const pid of [main, ...children]) {
        Deno.kill(pid, "SIGSTOP");
        pids.push(pid);
      }
      const t0 = Date.now();
      await assert.rejects(() => store.authenticate(key), (e: Error & { code?: string }) => {
        assert.equal(e.code, "relay_unavailable");
        return true;
      });
      const took = Date.now() - t0;
      assert.ok(took < DEFAULT_DIAL_TIMEOUT_MS - 2_000, `the key check took ${took} ms`);
    } finally {
      for (const pid of pids) Deno.kill(pid, "SIGCONT");
      await store.close().catch(() => {});
    }
  },
);

pgTest(
  "the database goes away and comes back: relay_unavailable meanwhile, then all recovers",
  async (_t, pg) => {
    const store = await PostgresStore.connect(await pg.database());
    try {
      await store.ensureWorkspace("w");
      await pg.stop();
      await assert.rejects(() => store.createKey("w", "client"), (e: Error & { code?: string }) => {
        assert.equal(e.code, "relay_unavailable");
        return true;
      });
      assert.match((await store.health())!, /cannot be written/);
      await pg.start();
      const k = await eventually(
        () => store.createKey("w", "client").catch(() => undefined),
        "the store to work again",
      );
      assert.equal((await store.listKeys()).find((r) => r.id === k.id)?.role, "client");
      assert.equal(await store.health(), undefined);
    } finally {
      await store.close();
    }
  },
);

pgTest(
  "two relays on one database: keys from `relay init --store`, machines seen by both, a revocation reaches both",
  async (_t, pg) => {
    const url = await pg.database();
    const home = await Deno.makeTempDir({ prefix: "tether-test-" });
    const procs: Proc[] = [];
    try {
      const env = { ...baseEnv(home), TETHER_STORE: url };
      const init = await run(["relay", "init", "--json"], { env });
      assert.equal(init.code, 0, init.stderr);
      const keys = JSON.parse(init.stdout);
      const relay = async (name: string) => {
        // The URL and the secret's file on the command line here (the fleet tests use
        // TETHER_STORE and TETHER_FLEET_SECRET).
        const secretFile = join(home, "fleet.secret");
        Deno.writeTextFileSync(secretFile, SECRET + "\n");
        const p = Proc.tether(
          [
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            join(home, name),
            "--store",
            url,
            "--fleet-secret-file",
            secretFile,
          ],
          { env: baseEnv(home) },
        );
        procs.push(p);
        return (await p.waitFor(/relay listening on (ws:\/\/\S+)/, "stdout"))[1];
      };
      const [a, b] = [await relay("a"), await relay("b")];
      const agent = Proc.tether([
        "agent",
        "run",
        "--relay",
        a,
        "--name",
        "box",
        "--state-dir",
        join(home, "agent"),
      ], { env: { ...baseEnv(home), TETHER_AGENT_KEY: keys.agent_key } });
      procs.push(agent);
      await agent.waitFor(/online as /);
      const client = (relayUrl: string, args: string[]) =>
        run(args, {
          env: { ...baseEnv(home), TETHER_RELAY: relayUrl, TETHER_API_KEY: keys.client_key },
        });
      // The machine enrolled through A is known to B (offline there: A holds it).
      const onB = await client(b, ["machines", "--json"]);
      assert.equal(onB.code, 0, onB.stderr);
      assert.deepEqual(JSON.parse(onB.stdout).map((m: { name: string }) => m.name), ["box"]);
      const ex = await client(a, ["exec", "box", "--", "sh", "-c", "exit 7"]);
      assert.equal(ex.code, 7, ex.stderr);
      const audit = await run(["relay", "audit", "--json"], { env });
      // End to end, the relay (its PostgreSQL store) records that it ended, not the status.
      const row = JSON.parse(audit.stdout).at(-1);
      assert.equal(row.sealed, true);
      assert.equal(row.exit_code, null);
      assert.ok(row.ended_at && row.bytes_out >= 0, JSON.stringify(row));
      // A client watching through A is cut when the key is revoked from the command line, and B
      // refuses it from then on.
      const watcher = Proc.tether(["exec", "box", "--", "sleep", "60"], {
        env: { ...baseEnv(home), TETHER_RELAY: a, TETHER_API_KEY: keys.client_key },
      });
      procs.push(watcher);
      await eventually(async () => {
        const s = await client(a, ["sessions", "--json"]);
        return s.code === 0 &&
          JSON.parse(s.stdout).some((e: { command: string; state: string }) =>
            e.command === "sleep 60" && e.state === "running"
          );
      }, "the exec to show in sessions");
      const list = await run(["relay", "keys", "list", "--json"], { env });
      const clientKey = JSON.parse(list.stdout).find((k: { role: string }) => k.role === "client");
      const rev = await run(["relay", "keys", "revoke", clientKey.id], { env });
      assert.equal(rev.code, 0, rev.stderr);
      const st = await watcher.ended(10_000);
      assert.equal(st.code, 255);
      assert.match(watcher.stderr, /revoked/);
      const refused = await client(b, ["machines", "--json"]);
      assert.equal(JSON.parse(refused.stdout).error.code, "unauthenticated");
    } finally {
      await Promise.all(procs.map((p) => p.stop()));
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
);

pgTest(
  "the database stops: what is connected keeps flowing, the rest is relay_unavailable, /readyz says so, all recovers",
  async (_t, pg) => {
    const url = await pg.database();
    const home = await Deno.makeTempDir({ prefix: "tether-test-" });
    const procs: Proc[] = [];
    try {
      const env = { ...baseEnv(home), TETHER_STORE: url };
      const keys = JSON.parse((await run(["relay", "init", "--json"], { env })).stdout);
      const relayProc = Proc.tether(
        ["relay", "serve", "--listen", "127.0.0.1:0", "--data-dir", join(home, "r")],
        { env: { ...env, TETHER_FLEET_SECRET: SECRET } },
      );
      procs.push(relayProc);
      const relay = (await relayProc.waitFor(/relay listening on (ws:\/\/\S+)/, "stdout"))[1];
      const http = relay.replace(/^ws/, "http");
      const agent = Proc.tether(
        ["agent", "run", "--relay", relay, "--name", "box", "--state-dir", join(home, "agent")],
        { env: { ...baseEnv(home), TETHER_AGENT_KEY: keys.agent_key } },
      );
      procs.push(agent);
      await agent.waitFor(/online as /);
      const clientEnv = { ...baseEnv(home), TETHER_RELAY: relay, TETHER_API_KEY: keys.client_key };
      const turn = Proc.tether(["exec", "box", "--stream", "--", "cat"], {
        env: clientEnv,
        stdin: true,
      });
      procs.push(turn);
      await turn.write("before\n");
      await turn.waitFor(/before/, "stdout");
      const ready = async () => {
        const r = await fetch(`${http}/readyz`);
        return { status: r.status, body: await r.text() };
      };
      assert.equal((await ready()).status, 200);

      await pg.stop();
      // The stream that is open goes on: frames never wait on the store.
      await turn.write("during\n");
      await turn.waitFor(/during/, "stdout");
      // (Answers to /readyz are reused for a second.)
      const r = await eventually(async () => {
        const a = await ready();
        return a.status === 503 ? a : undefined;
      }, "/readyz to say not ready");
      assert.match(r.body, /not ready: .*cannot be written/);
      const refused = await run(["machines", "--json"], { env: clientEnv });
      assert.equal(refused.code, 1);
      assert.equal(JSON.parse(refused.stdout).error.code, "relay_unavailable");

      await pg.start();
      const back = await eventually(async () => {
        const m = await run(["machines", "--json"], { env: clientEnv });
        return m.code === 0 ? JSON.parse(m.stdout) : undefined;
      }, "machines to work again");
      assert.deepEqual(back.map((m: { name: string; online: boolean }) => [m.name, m.online]), [[
        "box",
        true,
      ]]);
      await eventually(async () => (await ready()).status === 200, "/readyz to say ready");
      const ex = await run(["exec", "box", "--", "sh", "-c", "exit 4"], { env: clientEnv });
      assert.equal(ex.code, 4, ex.stderr);
      await turn.write("after\n");
      await turn.closeStdin();
      assert.equal((await turn.ended()).code, 0);
      assert.equal(turn.stdout, "before\nduring\nafter\n");
    } finally {
      await Promise.all(procs.map((p) => p.stop()));
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
);
