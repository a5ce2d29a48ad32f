/**
 * Bulk transfer: stdout throughput (item 1), stdin throughput (item 2), and
 * memory while a slow reader drains a large output (item 7).
 */
import {
  fmtBytes,
  fmtRate,
  GiB,
  log,
  median,
  MiB,
  Proc,
  type ProcStat,
  procStats,
  readWithin,
  run,
  Sampler,
  sleep,
} from "./lib.ts";
import { type Ctx, type ItemResult, pairedRatio, ratio, verdict } from "./report.ts";
import { TetherWorld } from "./tether.ts";

/** One transfer: wall time and the CPU seconds each side spent on it. */
export interface Transfer {
  ms: number;
  /** The client process (ssh or tether), from /usr/bin/time; NaN without it. */
  client: number;
  /** Server side: relay + agent, or the connection's sshd processes. */
  server: number;
  /** The remote command's CPU, when it can be told apart (tether: the agent's children). */
  remote: number;
  /** Each server pid's own CPU (utime+stime), in the order given. */
  byPid: number[];
}

let timeBin: string | undefined | null = null;
function gnuTime(): string | undefined {
  if (timeBin === null) {
    try {
      timeBin = Deno.statSync("/usr/bin/time").isFile ? "/usr/bin/time" : undefined;
    } catch {
      timeBin = undefined;
    }
  }
  return timeBin;
}

/**
 * Runs `argv | wc -c` (stdout) or `head -c size /dev/zero | argv` (stdin);
 * checks the byte count or the exit code, and takes the CPU of the client
 * (GNU time) and of the server pids: their own time, and for `childrenAreServer`
 * (sshd, whose per-connection processes are its children) their reaped children's.
 */
export async function transfer(
  dir: "stdout" | "stdin",
  argv: string[],
  env: Record<string, string> | undefined,
  size: number,
  timeoutMs: number,
  serverPids: number[],
  childrenAreServer: boolean,
  scratch: string,
): Promise<Transfer> {
  const timeFile = `${scratch}/time.txt`;
  const time = gnuTime();
  const client = time ? [time, "-f", "%U %S", "-o", timeFile, ...argv] : argv;
  const script = dir === "stdout" ? '"$@" | wc -c' : `head -c ${size} /dev/zero | "$@"`;
  const before = await procStats(serverPids);
  const r = await run(["sh", "-c", script, "sh", ...client], { env, timeoutMs });
  const after = await procStats(serverPids);
  if (dir === "stdout") {
    const n = Number(r.stdout.trim());
    if (n !== size) {
      throw new Error(`expected ${size} bytes on stdout, got ${n}: ${r.stderr.trim().slice(-500)}`);
    }
  } else if (r.code !== 0) {
    throw new Error(`exit ${r.code}: ${r.stderr.trim().slice(-500)}`);
  }
  const delta = (k: "cpu" | "childCpu") =>
    after.reduce((a, s) => a + s[k], 0) - before.reduce((a, s) => a + s[k], 0);
  let clientCpu = NaN;
  if (time) {
    const [u, s] = (await Deno.readTextFile(timeFile).catch(() => "")).trim().split(/\s+/);
    clientCpu = Number(u) + Number(s);
  }
  const byPid = serverPids.map((pid) =>
    (after.find((s) => s.pid === pid)?.cpu ?? NaN) - (before.find((s) => s.pid === pid)?.cpu ?? NaN)
  );
  return childrenAreServer
    ? { ms: r.ms, client: clientCpu, server: delta("childCpu"), remote: NaN, byPid }
    : { ms: r.ms, client: clientCpu, server: delta("cpu"), remote: delta("childCpu"), byPid };
}

export function sizeText(n: number): string {
  return n >= GiB ? `${n / GiB} GiB` : `${n / MiB} MiB`;
}

/**
 * Item 1 or 2: `size` bytes through exec, runs alternating tether over ws://, tether over
 * wss:// and ssh.
 */
async function throughput(ctx: Ctx, dir: "stdout" | "stdin"): Promise<ItemResult> {
  const size = ctx.quick ? 64 * MiB : GiB;
  const runs = ctx.quick ? 2 : 5;
  const timeoutMs = ctx.quick ? 60_000 : 300_000;
  const worlds = [ctx.world, ...(ctx.tlsWorld ? [ctx.tlsWorld] : [])];
  const tRuns: Transfer[][] = worlds.map(() => []), sRuns: Transfer[] = [];
  const remoteArgv = dir === "stdout"
    ? ["head", "-c", String(size), "/dev/zero"]
    : ["sh", "-c", "cat >/dev/null"];
  const sshCommand = dir === "stdout" ? `head -c ${size} /dev/zero` : "cat >/dev/null";
  const scheme = (w: TetherWorld) => w.url.split(":")[0];
  for (let i = 0; i < runs; i++) {
    for (const [k, w] of worlds.entries()) {
      const servers = [w.relay!.pid, w.agent!.pid];
      const t = await transfer(
        dir,
        w.exec(remoteArgv),
        w.env(),
        size,
        timeoutMs,
        servers,
        false,
        ctx.tmp,
      );
      tRuns[k].push(t);
      log(
        `${dir} throughput run ${i + 1}/${runs}: tether ${scheme(w)} ${
          fmtRate(size / (t.ms / 1000))
        }`,
      );
    }
    if (ctx.sshd) {
      const sshdPid = ctx.sshd.proc!.pid;
      sRuns.push(
        await transfer(
          dir,
          ctx.sshd.argv(sshCommand),
          undefined,
          size,
          timeoutMs,
          [sshdPid],
          true,
          ctx.tmp,
        ),
      );
      log(`${dir} throughput run ${i + 1}/${runs}: ssh ${fmtRate(size / (sRuns[i].ms / 1000))}`);
    }
  }
  const perGiB = (xs: Transfer[], k: "client" | "server" | "remote") =>
    (median(xs.map((x) => x[k])) / (size / GiB)).toFixed(2);
  const rate = (xs: Transfer[]) => size / (median(xs.map((r) => r.ms)) / 1000);
  const s = ctx.sshd ? rate(sRuns) : undefined;
  const n = dir === "stdout" ? 1 : 2;
  const figure = dir === "stdout"
    ? `stdout throughput: ${sizeText(size)} from \`head -c\` through exec`
    : `stdin throughput: ${sizeText(size)} into \`cat >/dev/null\``;
  const runsText = (xs: Transfer[]) => xs.map((x) => fmtRate(size / (x.ms / 1000))).join(", ");
  // Issue 18: at least 1.2× OpenSSH over ws://, and at least as fast over wss://.
  const rows = worlds.map((w, k) => {
    const t = rate(tRuns[k]);
    const tls = scheme(w) === "wss";
    const min = tls ? 1.0 : 1.2;
    return {
      key: tls ? `${n} wss` : String(n),
      figure: tls ? `${dir} throughput over wss://` : figure,
      tether: fmtRate(t),
      ssh: s === undefined ? "skipped" : fmtRate(s),
      // Throughput: each run's rate against the ssh run beside it (ssh's time over ours).
      ratio: ratio(pairedRatio(sRuns.map((x) => x.ms), tRuns[k].map((x) => x.ms)), 1),
      target: `≥ ${min.toFixed(1)}× OpenSSH (issue 18)`,
      verdict: s === undefined
        ? "skipped" as const
        : verdict(pairedRatio(sRuns.map((x) => x.ms), tRuns[k].map((x) => x.ms))! >= min),
      raw: { size, tether: tRuns[k], ssh: sRuns },
    };
  });
  const cpuText = (xs: Transfer[]) =>
    `client ${perGiB(xs, "client")}, relay + agent ${perGiB(xs, "server")}, remote command ` +
    perGiB(xs, "remote");
  return {
    rows,
    details: [
      `### ${n}. ${dir} throughput`,
      "",
      dir === "stdout"
        ? `- tether: \`sh -c 'tether exec bench -- head -c ${size} /dev/zero | wc -c'\`; ` +
          `OpenSSH: the same with \`ssh … 127.0.0.1 'head -c ${size} /dev/zero'\`. ` +
          "The byte count from `wc -c` is checked."
        : `- tether: \`sh -c 'head -c ${size} /dev/zero | tether exec bench -- sh -c "cat >/dev/null"'\`; ` +
          "OpenSSH: the same into `ssh … 127.0.0.1 'cat >/dev/null'`. The exit code is checked.",
      "- tether over ws:// and over wss:// (a second relay and agent, `relay serve " +
      "--tls-self-signed`, its CA given to client and agent). Wall time of the whole command " +
      "(process start to exit, so connection setup is included); " +
      `${runs} runs each, alternating, median reported.`,
      ...worlds.map((w, k) => `- tether ${scheme(w)}:// runs: ${runsText(tRuns[k])}`),
      `- OpenSSH runs: ${ctx.sshd ? runsText(sRuns) : ctx.sshSkipped}`,
      "- CPU seconds per GiB (medians; utime+stime of all threads: the client from GNU time, " +
      "the server side from /proc/PID/stat): " +
      worlds.map((w, k) => `tether ${scheme(w)}:// ${cpuText(tRuns[k])}`).join("; ") +
      (ctx.sshd
        ? `; OpenSSH ssh ${perGiB(sRuns, "client")}, sshd (its per-connection processes, ` +
          `including the remote command) ${perGiB(sRuns, "server")}.`
        : "."),
      "",
    ],
  };
}

export const stdoutThroughput = (ctx: Ctx) => throughput(ctx, "stdout");
export const stdinThroughput = (ctx: Ctx) => throughput(ctx, "stdin");

/**
 * Reads a stream at `rate` bytes/s (sleeping whenever ahead of schedule);
 * a read that stalls for `stallMs` is an error.
 */
async function throttledRead(
  stream: ReadableStream<Uint8Array>,
  rate: number,
  stallMs: number,
  onFirstByte?: () => void,
): Promise<{ bytes: number; ms: number }> {
  const reader = stream.getReader();
  const t0 = performance.now();
  let got = 0;
  try {
    for (;;) {
      const { value, done } = await readWithin(reader, stallMs, "slow reader");
      if (done) break;
      if (got === 0) onFirstByte?.();
      got += value.length;
      const ahead = (got / rate) * 1000 - (performance.now() - t0);
      if (ahead > 0) await sleep(ahead);
    }
  } finally {
    reader.releaseLock();
  }
  return { bytes: got, ms: performance.now() - t0 };
}

function peak(samples: ProcStat[][], pid: number, key: "rss" | "anon" = "rss"): number {
  let m = NaN;
  for (const s of samples) {
    for (const p of s) if (p.pid === pid && !(p[key] <= m)) m = p[key];
  }
  return m;
}

/** Item 7: relay and agent resident size while a large output drains at 10 MiB/s. */
export async function slowReader(ctx: Ctx): Promise<ItemResult> {
  const size = ctx.quick ? 32 * MiB : 2 * GiB;
  const rate = 10 * MiB;
  const budgetMs = (size / rate) * 1000 * 1.5 + 60_000;
  const remote = ["head", "-c", String(size), "/dev/zero"];

  // tether, on a fresh relay and agent so earlier items' heaps do not hide growth.
  const w = await TetherWorld.create(ctx.bundle, ctx.tmp, true);
  let tether: {
    relay: number;
    agent: number;
    client: number;
    relayPeak: number;
    agentPeak: number;
    clientPeak: number;
    relayAnon: number;
    agentAnon: number;
    ms: number;
  };
  try {
    const relayPid = w.relay!.pid, agentPid = w.agent!.pid;
    // Warm the exec path once (JIT, first buffers), then take the baseline.
    const warm = await run(w.exec(["head", "-c", String(4 * MiB), "/dev/zero"]), {
      env: w.env(),
      stdout: "null",
      timeoutMs: 30_000,
    });
    if (warm.code !== 0) throw new Error(`warm-up exec failed: ${warm.stderr}`);
    await sleep(1000);
    const base = await procStats([relayPid, agentPid]);
    const baseOf = (pid: number, key: "rss" | "anon" = "rss") =>
      base.find((s) => s.pid === pid)?.[key] ?? NaN;
    const p = new Proc(w.exec(remote), { env: w.env(), stdout: "raw" });
    const sampler = new Sampler(() => procStats([relayPid, agentPid, p.pid]), 500);
    let clientBase = NaN;
    let read;
    try {
      read = await withBudget(
        throttledRead(p.child.stdout, rate, 30_000, () => {
          procStats([p.pid]).then((s) => (clientBase = s[0]?.rss ?? NaN));
        }),
        budgetMs,
        p,
      );
      const st = await p.wait(30_000);
      if (st.code !== 0) throw new Error(`tether exec exited ${st.code}: ${p.stderr.slice(-500)}`);
    } finally {
      await p.stop();
    }
    const samples = await sampler.stop();
    if (read.bytes !== size) throw new Error(`read ${read.bytes} bytes, expected ${size}`);
    const relayPeak = peak(samples, relayPid), agentPeak = peak(samples, agentPid);
    const clientPeak = peak(samples, p.pid);
    tether = {
      relay: relayPeak - baseOf(relayPid),
      agent: agentPeak - baseOf(agentPid),
      client: clientPeak - clientBase,
      relayPeak,
      agentPeak,
      clientPeak,
      relayAnon: peak(samples, relayPid, "anon") - baseOf(relayPid, "anon"),
      agentAnon: peak(samples, agentPid, "anon") - baseOf(agentPid, "anon"),
      ms: read.ms,
    };
    log(
      `slow reader: tether RSS relay +${fmtBytes(tether.relay)}, agent +${
        fmtBytes(tether.agent)
      }; private (RssAnon) relay +${fmtBytes(tether.relayAnon)}, agent +${
        fmtBytes(tether.agentAnon)
      } in ${(read.ms / 1000).toFixed(1)} s`,
    );
  } finally {
    await w.dispose();
  }

  // OpenSSH: the per-connection sshd processes (monitor + session), and the ssh client.
  let ssh:
    | {
      server: number;
      serverAnon: number;
      serverPeak: number;
      client: number;
      clientPeak: number;
      ms: number;
    }
    | undefined;
  if (ctx.sshd) {
    const sshd = ctx.sshd;
    const p = new Proc(sshd.argv(remote.join(" ")), { stdout: "raw" });
    const probe = async () => {
      const pids = await sshd.sessionPids("sshd");
      const stats = await procStats([...pids, p.pid]);
      const server = stats.filter((s) => s.pid !== p.pid);
      return {
        server: server.reduce((a, s) => a + s.rss, 0),
        serverAnon: server.reduce((a, s) => a + s.anon, 0),
        client: stats.find((s) => s.pid === p.pid)?.rss ?? NaN,
      };
    };
    let first: Promise<{ server: number; serverAnon: number; client: number }> | undefined;
    const sampler = new Sampler(probe, 500);
    let read;
    try {
      read = await withBudget(
        throttledRead(p.child.stdout, rate, 30_000, () => (first = probe())),
        budgetMs,
        p,
      );
      const st = await p.wait(30_000);
      if (st.code !== 0) throw new Error(`ssh exited ${st.code}: ${p.stderr.slice(-500)}`);
    } finally {
      await p.stop();
    }
    const samples = await sampler.stop();
    const base = await first!;
    const serverPeak = Math.max(...samples.map((s) => s.server));
    const clientPeak = Math.max(...samples.map((s) => s.client).filter(Number.isFinite));
    const anonPeak = Math.max(...samples.map((s) => s.serverAnon));
    ssh = {
      server: serverPeak - base.server,
      serverAnon: anonPeak - base.serverAnon,
      serverPeak,
      client: clientPeak - base.client,
      clientPeak,
      ms: read.ms,
    };
    log(
      `slow reader: sshd RSS +${fmtBytes(ssh.server)}, private +${fmtBytes(ssh.serverAnon)} in ${
        (read.ms / 1000).toFixed(1)
      } s`,
    );
  }

  const LIMIT = 16 * MiB;
  const both = tether.relay + tether.agent;
  const bothAnon = tether.relayAnon + tether.agentAnon;
  const sshRatio = (t: number, s: number | undefined) =>
    s === undefined ? "—" : Math.abs(s) >= MiB ? ratio(t, s) : "— (OpenSSH < 1 MiB)";
  return {
    rows: [
      {
        key: "7",
        figure: `slow reader, ${
          sizeText(size)
        } at 10 MiB/s: relay + agent growth of private memory (RssAnon)`,
        tether: `${fmtBytes(bothAnon)} (relay ${fmtBytes(tether.relayAnon)}, agent ${
          fmtBytes(tether.agentAnon)
        })`,
        ssh: ssh ? `${fmtBytes(ssh.serverAnon)} (sshd)` : "skipped",
        ratio: sshRatio(bothAnon, ssh?.serverAnon),
        target: "≤ 16 MiB",
        verdict: verdict(bothAnon <= LIMIT),
        raw: { size, tether, ssh },
      },
      {
        key: "7 rss",
        figure: "slow reader: relay + agent growth of all resident memory (RSS, with code pages)",
        tether: `${fmtBytes(both)} (relay ${fmtBytes(tether.relay)}, agent ${
          fmtBytes(tether.agent)
        })`,
        ssh: ssh ? `${fmtBytes(ssh.server)} (sshd)` : "skipped",
        ratio: sshRatio(both, ssh?.server),
        target: "",
        verdict: "n/a",
      },
      {
        key: "7 client",
        figure: "slow reader: client RSS growth (for reference)",
        tether: fmtBytes(tether.client),
        ssh: ssh ? fmtBytes(ssh.client) : "skipped",
        ratio: ssh && Math.abs(ssh.client) >= MiB ? ratio(tether.client, ssh.client) : "—",
        target: "",
        verdict: "n/a",
      },
    ],
    details: [
      "### 7. Slow reader",
      "",
      `- \`tether exec bench -- head -c ${size} /dev/zero\` on a fresh relay and agent, its ` +
      "stdout read by the benchmark at 10 MiB/s (it sleeps whenever it is ahead). " +
      "Before the run one 4 MiB exec warms the path; the baseline is the relay's and " +
      "agent's memory after that. Growth = peak (sampled every 500 ms from /proc/PID/stat " +
      "and /proc/PID/status) minus baseline. The target is judged on private memory " +
      "(RssAnon: heaps, buffers, stacks), which is what buffering a stream costs. Full RSS " +
      "also counts file pages, mostly the `deno` executable's code (~100 MiB mapped): the " +
      "first back-pressured stream runs code paths (and V8's optimizing compiler) that " +
      "nothing ran before, and their pages stay resident; they are shared with every other " +
      "Deno process and the kernel can drop them at will. Both are in the table. " +
      "Target: relay + agent private growth ≤ 16 MiB.",
      `- tether: ${(tether.ms / 1000).toFixed(1)} s to read (${
        fmtRate(size / (tether.ms / 1000))
      }); relay RSS peak ${fmtBytes(tether.relayPeak)} (+${
        fmtBytes(tether.relay)
      }, of which private +${fmtBytes(tether.relayAnon)}), agent RSS peak ${
        fmtBytes(tether.agentPeak)
      } (+${fmtBytes(tether.agent)}, of which private +${
        fmtBytes(tether.agentAnon)
      }), client RSS peak ${fmtBytes(tether.clientPeak)} (+${
        fmtBytes(tether.client)
      } from its first byte).`,
      ssh
        ? `- OpenSSH: \`ssh … 'head -c ${size} /dev/zero'\` read the same way; server side = ` +
          "sum of RSS of the connection's sshd processes (monitor and session), baseline " +
          `at the first byte: peak ${fmtBytes(ssh.serverPeak)} (+${
            fmtBytes(ssh.server)
          }, of which private +${fmtBytes(ssh.serverAnon)}); ssh client peak ${
            fmtBytes(ssh.clientPeak)
          } (+${fmtBytes(ssh.client)}); ` +
          `${(ssh.ms / 1000).toFixed(1)} s to read.`
        : `- OpenSSH: ${ctx.sshSkipped}`,
      "",
    ],
  };
}

/** Races `p` against a budget; on overrun the process is killed and an error thrown. */
async function withBudget<T>(p: Promise<T>, ms: number, proc: Proc): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          proc.kill("SIGKILL");
          reject(new Error(`transfer did not finish within ${Math.round(ms / 1000)} s`));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
