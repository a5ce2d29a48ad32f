/**
 * The relay fleet (issue 15): three relays on one PostgreSQL, on this machine.
 *
 *  1. Turn round trips (`exec --stream -- cat`) and stdout throughput with the agent on
 *     relay A and the client on A (direct) or on C (bridged through the C→A peer link),
 *     alternating direct and bridged runs.
 *  2. N idle agents spread evenly over the three relays (scripts/bench/agents_load.ts, one
 *     load process per relay): relay memory per agent, what the database writes per second
 *     at rest (transactions and rows, from pg_stat_database and pg_stat_user_tables), and
 *     the CPU at rest of each relay and of PostgreSQL.
 *
 *   ./scripts/deno task bench:fleet [--agents 10000] [--quick] [--bundle dist/tether.js]
 *     [--no-write]
 *
 * PostgreSQL is a throwaway cluster made as the tests make it (tests/postgres.ts: initdb,
 * pg_ctl on a free port, fsync off). Prints a Markdown section, and a full run writes it
 * into docs/BENCHMARKS.md (replacing the previous one; main.ts keeps it when it rewrites).
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { type Cluster, startCluster } from "../../tests/postgres.ts";
import { summaryText, type Turns, turns } from "./interactive.ts";
import {
  CONFIG,
  cpuSeconds,
  descendants,
  fmtBytes,
  fmtMs,
  fmtRate,
  initClock,
  log,
  median,
  MiB,
  output,
  percentile,
  Proc,
  ROOT,
  rssSamples,
  run,
  sleep,
  stopAll,
} from "./lib.ts";
import { withSection } from "./report.ts";
import { baseEnv, bundleUnderTest, loginAccount } from "./tether.ts";

const SECRET = "bench-fleet-secret-0123456789";
const LOAD_SCRIPT = join(ROOT, "scripts", "bench", "agents_load.ts");
const NAMES = ["a", "b", "c"] as const;
type Name = typeof NAMES[number];

interface Relay {
  name: Name;
  url: string;
  proc: Proc;
}

class Fleet {
  readonly relays = new Map<Name, Relay>();
  keys!: { client_key: string; agent_key: string };
  agent?: Proc;

  constructor(readonly bundle: string, readonly home: string, readonly store: string) {}

  argv(args: string[]): string[] {
    return [Deno.execPath(), "run", "-q", "-P", "--config", CONFIG, this.bundle, ...args];
  }

  env(extra: Record<string, string> = {}): Record<string, string> {
    return { ...baseEnv(this.home), TETHER_STORE: this.store, ...extra };
  }

  async start(): Promise<void> {
    const init = await run(this.argv(["relay", "init", "--json"]), { env: this.env() });
    if (init.code !== 0) throw new Error(`relay init failed: ${init.stdout}${init.stderr}`);
    this.keys = JSON.parse(init.stdout);
    for (const name of NAMES) {
      const proc = new Proc(
        this.argv([
          "relay",
          "serve",
          "--listen",
          "127.0.0.1:0",
          "--data-dir",
          join(this.home, name),
        ]),
        { env: this.env({ TETHER_FLEET_SECRET: SECRET }) },
      );
      const url = (await proc.waitFor(/relay listening on (ws:\/\/\S+)/, "stdout", 30_000))[1];
      await proc.waitFor(/joined the fleet/, "stderr", 30_000);
      this.relays.set(name, { name, url, proc });
    }
  }

  relay(name: Name): Relay {
    return this.relays.get(name)!;
  }

  clientEnv(name: Name): Record<string, string> {
    return {
      ...baseEnv(this.home),
      TETHER_RELAY: this.relay(name).url,
      TETHER_API_KEY: this.keys.client_key,
    };
  }

  /** A real agent `bench` on relay A, with the login account's HOME and shell. */
  async startAgent(): Promise<void> {
    const acct = await loginAccount();
    this.agent = new Proc(
      this.argv([
        "agent",
        "run",
        "--relay",
        this.relay("a").url,
        "--name",
        "bench",
        "--state-dir",
        join(this.home, "agent"),
      ]),
      {
        env: {
          ...baseEnv(this.home),
          HOME: acct.home,
          SHELL: acct.shell,
          TETHER_AGENT_KEY: this.keys.agent_key,
        },
      },
    );
    await this.agent.waitFor(/online as /, "stderr", 30_000);
  }
}

// ---------------------------------------------------------------------------
// 1. Direct and bridged paths

interface PathResult {
  turns: Turns[];
  mibps: number[];
}

async function paths(f: Fleet, quick: boolean) {
  const n = quick ? 200 : 1000;
  const runs = quick ? 1 : 5;
  const size = quick ? 64 * MiB : 512 * MiB;
  const tputRuns = quick ? 1 : 3;
  const direct: PathResult = { turns: [], mibps: [] };
  const bridged: PathResult = { turns: [], mibps: [] };
  const a = f.relay("a").proc.pid, c = f.relay("c").proc.pid, agent = f.agent!.pid;
  const via: [Name, PathResult][] = [["a", direct], ["c", bridged]];
  for (let r = 1; r <= runs; r++) {
    for (const [relay, out] of via) {
      const t = await turns(
        f.argv(["exec", "bench", "--stream", "--", "cat"]),
        f.clientEnv(relay),
        n,
        20,
        async (client) => [
          { label: "client", pids: [client] },
          { label: "relay C", pids: relay === "c" ? [c] : [] },
          { label: "relay A", pids: [a] },
          { label: "agent", pids: [agent] },
          { label: "cat", pids: await descendants(agent, "cat") },
        ],
      );
      out.turns.push(t);
      log(`turns via ${relay} run ${r}/${runs}: p50 ${fmtMs(percentile(t.times, 50))}`);
    }
  }
  for (let r = 1; r <= tputRuns; r++) {
    for (const [relay, out] of via) {
      const argv = f.argv(["exec", "bench", "--", "head", "-c", String(size), "/dev/zero"]);
      const res = await run(["sh", "-c", '"$@" | wc -c', "sh", ...argv], {
        env: f.clientEnv(relay),
        timeoutMs: 300_000,
      });
      if (Number(res.stdout.trim()) !== size) {
        throw new Error(`via ${relay}: ${res.stdout.trim()} bytes: ${res.stderr.slice(-300)}`);
      }
      out.mibps.push(size / MiB / (res.ms / 1000));
      log(`stdout via ${relay} run ${r}/${tputRuns}: ${fmtRate(size / (res.ms / 1000))}`);
    }
  }
  return { n, runs, size, direct, bridged };
}

// ---------------------------------------------------------------------------
// 2. Idle agents

interface DbCounters {
  xact: number;
  tables: Map<string, number>;
}

async function dbCounters(sql: postgres.Sql): Promise<DbCounters> {
  const [d] = await sql<{ xact: string }[]>`
    SELECT xact_commit + xact_rollback AS xact FROM pg_stat_database
     WHERE datname = current_database()`;
  const rows = await sql<{ relname: string; w: string }[]>`
    SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS w FROM pg_stat_user_tables`;
  return { xact: Number(d.xact), tables: new Map(rows.map((r) => [r.relname, Number(r.w)])) };
}

async function postgresPids(pg: Cluster): Promise<number[]> {
  const pid = Number((await Deno.readTextFile(join(pg.dataDir, "postmaster.pid"))).split("\n")[0]);
  return [pid, ...await descendants(pid)];
}

async function idle(f: Fleet, pg: Cluster, total: number, quick: boolean) {
  const per = Math.ceil(total / 3);
  const warm = 10;
  const windowMs = quick ? 10_000 : 60_000;
  // Longer than PostgreSQL flushes an idle backend's statistics (10 s), so that the dialing
  // is not counted in the window.
  const settleMs = 15_000;
  const loads = new Map<Name, Proc>();
  for (const name of NAMES) {
    loads.set(
      name,
      new Proc([
        Deno.execPath(),
        "run",
        "-q",
        "-P",
        "--config",
        CONFIG,
        LOAD_SCRIPT,
        "--relay",
        f.relay(name).url,
        "--n",
        String(per),
        "--warmup",
        String(warm),
        "--prefix",
        `${name}-`,
      ], { env: { ...baseEnv(f.home), TETHER_AGENT_KEY: f.keys.agent_key }, stdin: "piped" }),
    );
  }
  for (const p of loads.values()) await p.waitFor(/"warm":/, "stdout", 60_000);
  await sleep(settleMs);
  const base = new Map<Name, number>();
  for (const name of NAMES) base.set(name, await rssSamples(f.relay(name).proc.pid, 3, 300));
  const t0 = performance.now();
  for (const p of loads.values()) await p.write("go\n");
  for (const [name, p] of loads) {
    const m = await p.waitFor(/"ready":(\d+),"failed":(\d+)/, "stdout", 600_000);
    if (Number(m[1]) !== per) throw new Error(`relay ${name}: ${p.stdout.slice(-400)}`);
  }
  const dialS = (performance.now() - t0) / 1000;
  log(`idle: ${per * 3} agents connected in ${dialS.toFixed(1)} s`);
  await sleep(settleMs);

  const sql = postgres(f.store, { max: 1, onnotice: () => {} });
  try {
    const relayPids = NAMES.map((n) => f.relay(n).proc.pid);
    const pgPids = await postgresPids(pg);
    const loadPids = [...loads.values()].map((p) => p.pid);
    const c0 = await Promise.all(relayPids.map((p) => cpuSeconds([p])));
    const pg0 = await cpuSeconds(pgPids);
    const l0 = await cpuSeconds(loadPids);
    const d0 = await dbCounters(sql);
    await sleep(windowMs);
    const d1 = await dbCounters(sql);
    const c1 = await Promise.all(relayPids.map((p) => cpuSeconds([p])));
    const pg1 = await cpuSeconds(await postgresPids(pg).catch(() => pgPids));
    const l1 = await cpuSeconds(loadPids);
    const s = windowMs / 1000;
    const loaded = new Map<Name, number>();
    for (const name of NAMES) loaded.set(name, await rssSamples(f.relay(name).proc.pid, 3, 300));
    const online: Record<string, number | string> = {};
    for (const name of NAMES) {
      // The whole list (Proc keeps only the tail of what a process prints).
      const argv = f.argv(["machines", "--json"]);
      const m = await new Deno.Command(argv[0], {
        args: argv.slice(1),
        env: f.clientEnv(name),
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(m.stdout);
      online[name] = m.success
        ? (JSON.parse(text) as { online: boolean }[]).filter((x) => x.online).length
        : (text + new TextDecoder().decode(m.stderr)).slice(0, 200);
    }
    const tables = [...d1.tables].map(([t, w]) => ({
      table: t,
      perS: (w - (d0.tables.get(t) ?? 0)) / s,
    })).filter((t) => t.perS > 0).sort((x, y) => y.perS - x.perS);
    const closed: number[] = [];
    for (const p of loads.values()) {
      await p.closeStdin();
      closed.push(Number((await p.waitFor(/"closed_while_idle":(\d+)/, "stdout", 60_000))[1]));
    }
    return {
      total: per * 3,
      per,
      warm,
      dialS,
      windowS: s,
      relays: NAMES.map((name, i) => ({
        name,
        base: base.get(name)!,
        loaded: loaded.get(name)!,
        perAgent: (loaded.get(name)! - base.get(name)!) / per,
        cpu: (c1[i] - c0[i]) / s,
      })),
      pgCpu: (pg1 - pg0) / s,
      loadCpu: (l1 - l0) / s,
      // Two of the transactions are this script's own reads of the counters.
      xactPerS: Math.max(0, d1.xact - d0.xact - 2) / s,
      rowsPerS: tables.reduce((a, t) => a + t.perS, 0),
      tables,
      online,
      closed: closed.reduce((a, b) => a + b, 0),
    };
  } finally {
    await sql.end();
  }
}

// ---------------------------------------------------------------------------

function pathRows(name: string, r: PathResult): string {
  const p50s = r.turns.map((t) => percentile(t.times, 50));
  const p99s = r.turns.map((t) => percentile(t.times, 99));
  const range = (xs: number[]) =>
    `${fmtMs(median(xs))} (${fmtMs(Math.min(...xs))}–${fmtMs(Math.max(...xs))})`;
  return `| ${name} | ${range(p50s)} | ${range(p99s)} | ${median(r.mibps).toFixed(0)} MiB/s (${
    r.mibps.map((x) => x.toFixed(0)).join(", ")
  }) |`;
}

function cpuText(t: Turns[]): string {
  const labels = t[0].cpu.map((c) => c.label);
  return labels.map((l) => {
    const us = median(t.map((x) => x.cpu.find((c) => c.label === l)!.us));
    return `${l} ${us.toFixed(0)} µs`;
  }).filter((s) => !s.endsWith(" 0 µs")).join(", ");
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      agents: { type: "string", default: "10000" },
      quick: { type: "boolean", default: false },
      bundle: { type: "string" },
      "no-write": { type: "boolean", default: false },
    },
  });
  const quick = values.quick!;
  const total = Number(values.agents);
  const command = ["./scripts/deno", "task", "bench:fleet", ...Deno.args].join(" ");
  const load0 = (await output(["cat", "/proc/loadavg"]))?.split(" ").slice(0, 3).join(" ");
  const tmp = await Deno.makeTempDir({ prefix: "tether-bench-fleet-" });
  let pg: Cluster | undefined;
  try {
    await initClock();
    const bundle = await bundleUnderTest(values.bundle, tmp);
    log("starting PostgreSQL and three relays");
    pg = await startCluster();
    const f = new Fleet(bundle, tmp, await pg.database());
    await f.start();
    await f.startAgent();
    const p = await paths(f, quick);
    await f.agent!.stop();
    const i = await idle(f, pg, total, quick);
    const version = (await run(f.argv(["version"]))).stdout.trim();
    const pgVersion = (await run(["sh", "-c", "postgres --version || true"])).stdout.trim();
    const ratio = (b: number, d: number) => `${(b / d).toFixed(2)}×`;
    const dP50 = median(p.direct.turns.map((t) => percentile(t.times, 50)));
    const bP50 = median(p.bridged.turns.map((t) => percentile(t.times, 50)));
    const md = [
      "## The relay fleet (issue 15)",
      "",
      `\`${command}\`, ${new Date().toISOString().slice(0, 16)} UTC, ${version}, ` +
      `${pgVersion || "PostgreSQL"} (throwaway cluster, fsync off); load average ${load0} ` +
      "before the run. Three relays (A, B, C) on one database, all on this 2-core machine.",
      "",
      "### Direct and bridged paths",
      "",
      `The agent on A; the client on A (direct) or on C (bridged: C forwards over its peer ` +
      `link to A). Turns: ${p.runs} runs of ${p.n} line round trips through ` +
      "`exec --stream -- cat`, direct and bridged alternating; p50 and p99 are the medians " +
      `of the runs (range in brackets). Throughput: \`exec -- head -c ${
        p.size / MiB
      }M /dev/zero | wc -c\`, ` +
      "median of the runs.",
      "",
      "| path | turn p50 | turn p99 | stdout throughput |",
      "| --- | --- | --- | --- |",
      pathRows("direct (client on A)", p.direct),
      pathRows("bridged (client on C)", p.bridged),
      "",
      `Bridged/direct: turn p50 ${ratio(bP50, dP50)}, throughput ${
        ratio(median(p.bridged.mibps), median(p.direct.mibps))
      }. CPU per turn (median of runs): direct ${cpuText(p.direct.turns)}; bridged ${
        cpuText(p.bridged.turns)
      }. Last bridged run: ${summaryText(p.bridged.turns.at(-1)!.times)}.`,
      "",
      `### ${i.total.toLocaleString("en")} idle agents over three relays`,
      "",
      `${i.per} agents per relay, each relay's held by one \`agents_load.ts\` process (the real ` +
      "hello, enrollment and heartbeats every 2 s). Memory per agent = (relay RSS with its " +
      `agents − RSS with ${i.warm} warm-up agents) / ${i.per}. CPU and database counters over ` +
      `${i.windowS} s at rest, starting 15 s after the last agent connected (all connected in ${
        i.dialS.toFixed(0)
      } s; PostgreSQL publishes an idle connection's counters within 10 s).`,
      "",
      "| relay | RSS before | RSS with agents | per agent | CPU at rest |",
      "| --- | --- | --- | --- | --- |",
      ...i.relays.map((r) =>
        `| ${r.name.toUpperCase()} | ${fmtBytes(r.base)} | ${fmtBytes(r.loaded)} | ${
          fmtBytes(r.perAgent)
        } | ${(r.cpu * 100).toFixed(1)}% of a core |`
      ),
      "",
      `- Database at rest: **${i.xactPerS.toFixed(2)} transactions/s** and ` +
      `${i.rowsPerS.toFixed(1)} rows written/s in all (${
        i.tables.map((t) => `${t.table} ${t.perS.toFixed(1)}`).join(", ") || "none"
      }). PostgreSQL used ${(i.pgCpu * 100).toFixed(1)}% of a core.`,
      `- The three load processes (the agents' side) used ${
        (i.loadCpu * 100).toFixed(1)
      }% of a core; ${i.closed} connections dropped while idle; ` +
      `\`tether machines\` listed ${
        NAMES.map((n) => `${i.online[n]} online via ${n.toUpperCase()}`).join(", ")
      } (expected ${i.total + 3 * i.warm}).`,
      "",
    ].join("\n");
    console.log(md);
    // A full run replaces its section of docs/BENCHMARKS.md (main.ts keeps it when it rewrites).
    if (!quick && !values["no-write"]) {
      const out = join(ROOT, "docs", "BENCHMARKS.md");
      await Deno.writeTextFile(out, withSection(await Deno.readTextFile(out), "fleet", md));
      log(`wrote ${out}`);
    }
    return 0;
  } finally {
    await stopAll();
    if (pg) await pg[Symbol.asyncDispose]();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

Deno.exit(await main());
