/**
 * A throwaway PostgreSQL cluster for the tests: `initdb` in a temp dir, `pg_ctl start` on
 * a free port, listening on 127.0.0.1 only. PostgreSQL refuses to run as root, so as root
 * both run as the `postgres` system user (`runuser -u postgres --`) in a dir it owns.
 * Stopped and removed by dispose, which the tests reach also when they fail.
 *
 * Needs Debian's `postgresql` package (.ci/run installs it).
 */
import { join } from "node:path";
import postgres from "postgres";
import { freePort, requirement } from "./helpers.ts";

export interface Cluster extends AsyncDisposable {
  /** The admin URL (database `postgres`). */
  url: string;
  port: number;
  /** The cluster's data directory (postmaster.pid is there). */
  dataDir: string;
  /** A new empty database in the cluster, by URL. */
  database(): Promise<string>;
  /** Stops the server (fast shutdown) and starts it again on the same port. */
  stop(): Promise<void>;
  start(): Promise<void>;
}

/** Where the PostgreSQL server programs are: on PATH, or Debian's versioned dir. */
export function postgresBin(): string | undefined {
  const onPath = (Deno.env.get("PATH") ?? "").split(":").find((d) => exists(join(d, "initdb")));
  if (onPath) return onPath;
  const root = "/usr/lib/postgresql";
  const versions = exists(root)
    ? [...Deno.readDirSync(root)].map((e) => e.name).filter((n) => /^\d+$/.test(n))
      .sort((a, b) => Number(b) - Number(a))
    : [];
  return versions.map((v) => join(root, v, "bin")).find((d) => exists(join(d, "initdb")));
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Skips (or, on CI, fails) a test that needs PostgreSQL where it is missing. */
export const needPostgres = requirement(
  postgresBin() ? undefined : "PostgreSQL server not found (install Debian package `postgresql`)",
);

const isRoot = Deno.uid() === 0;

async function sh(cmd: string, args: string[]): Promise<string> {
  const full = isRoot ? ["runuser", "-u", "postgres", "--", cmd, ...args] : [cmd, ...args];
  const out = await new Deno.Command(full[0], {
    args: full.slice(1),
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return text;
}

export async function startCluster(): Promise<Cluster> {
  needPostgres.check();
  const bin = postgresBin()!;
  const dir = await Deno.makeTempDir({ prefix: "tether-pg-" });
  const data = join(dir, "data");
  if (isRoot) {
    const pg = await new Deno.Command("id", { args: ["-u", "postgres"], stdout: "piped" }).output();
    const uid = Number(new TextDecoder().decode(pg.stdout).trim());
    if (!pg.success || !Number.isInteger(uid)) {
      throw new Error("no `postgres` system user (install Debian package `postgresql`)");
    }
    await Deno.chown(dir, uid, null);
  }
  const port = freePort();
  let started = false;
  const ctl = (action: "start" | "stop") =>
    action === "start"
      ? sh(join(bin, "pg_ctl"), [
        "-D",
        data,
        "-l",
        join(dir, "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        // Only loopback, the socket in our dir, and no fsync: a test cluster is thrown away.
        `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off ` +
        `-c synchronous_commit=off -c full_page_writes=off -c max_connections=200`,
        "start",
      ])
      : sh(join(bin, "pg_ctl"), ["-D", data, "-m", "fast", "-w", "stop"]);
  const dispose = async () => {
    if (started) await ctl("stop").catch((e) => console.error(`pg_ctl stop: ${e.message}`));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    await sh(join(bin, "initdb"), [
      "-D",
      data,
      "-U",
      "tether",
      "-A",
      "trust",
      "-E",
      "UTF8",
      "--no-sync",
    ]);
    await ctl("start");
    started = true;
  } catch (e) {
    await dispose();
    throw e;
  }
  const url = `postgres://tether@127.0.0.1:${port}/postgres`;
  let n = 0;
  return {
    url,
    port,
    dataDir: data,
    async database() {
      const name = `t${++n}`;
      const admin = postgres(url, { max: 1, onnotice: () => {} });
      try {
        await admin.unsafe(`CREATE DATABASE ${name}`);
      } finally {
        await admin.end();
      }
      return `postgres://tether@127.0.0.1:${port}/${name}`;
    },
    async stop() {
      await ctl("stop");
      started = false;
    },
    async start() {
      await ctl("start");
      started = true;
    },
    [Symbol.asyncDispose]: dispose,
  };
}
