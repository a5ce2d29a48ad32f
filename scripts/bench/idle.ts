/**
 * Item 6: relay memory per idle agent and the CPU their heartbeats cost,
 * with many agents held by one load process (agents_load.ts) speaking the
 * real protocol; OpenSSH analogue: sshd memory and CPU per idle connection.
 */
import { join } from "node:path";
import {
  CONFIG,
  cpuSeconds,
  fmtBytes,
  KiB,
  log,
  median,
  output,
  Proc,
  pssOf,
  ROOT,
  rss,
  rssSamples,
  Sampler,
  sleep,
} from "./lib.ts";
import { type Ctx, type ItemResult, ratio, verdict } from "./report.ts";
import { baseEnv, TetherWorld } from "./tether.ts";
import { IDLE_HEARTBEAT_MS } from "../../src/protocol/conn.ts";

const LOAD_SCRIPT = join(ROOT, "scripts", "bench", "agents_load.ts");

interface TetherIdle {
  n: number;
  warm: number;
  dialMs: number;
  base: number;
  loaded: number;
  perAgent: number;
  idleCpu: number;
  loadedCpu: number;
  windowS: number;
  online: number | string;
  closed: number;
  loadCpu: number;
  /** CPU of everything else on the machine over the window (the kernel's keepalive work among it). */
  restCpu: number;
}

/** Busy seconds of the whole machine so far (all CPUs), from /proc/stat. */
async function machineBusySeconds(): Promise<number> {
  // Read by a child: Deno's permissions keep /proc/stat from a script without --allow-all.
  const line = (await output(["head", "-n", "1", "/proc/stat"])) ?? "";
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq: all but idle and iowait (and steal, the time the
  // VM's host gave to others), in 1/100 s.
  return (f[0] + f[1] + f[2] + f[5] + f[6]) / 100;
}

export async function tetherIdle(
  ctx: Pick<Ctx, "quick" | "bundle" | "tmp">,
  n: number,
  windowMs: number,
  tls = false,
  relayArgs: string[] = [],
  /** Rest after the last dial before CPU is taken: at least one heartbeat period. */
  restMs = 20_000,
): Promise<TetherIdle> {
  const warm = 10;
  const settleMs = ctx.quick ? 1000 : 3000;
  const w = await TetherWorld.create(ctx.bundle, ctx.tmp, false, [], {}, tls, relayArgs);
  let load: Proc | undefined;
  try {
    const relayPid = w.relay!.pid;
    load = new Proc(
      [
        Deno.execPath(),
        "run",
        "-q",
        "-P",
        "--config",
        CONFIG,
        LOAD_SCRIPT,
        "--relay",
        w.url,
        "--n",
        String(n),
        "--warmup",
        String(warm),
      ],
      {
        env: {
          ...baseEnv(w.home),
          TETHER_AGENT_KEY: w.keys.agent_key,
          ...(w.caFile ? { TETHER_CA_FILE: w.caFile } : {}),
        },
        stdin: "piped",
      },
    );
    const wm = await load.waitFor(/"warm":(\d+)/, "stdout", 60_000);
    if (Number(wm[1]) !== warm) throw new Error(`warm-up dials failed: ${load.stdout}`);
    // Baseline: the relay with a few agents (code paths compiled), settled.
    await sleep(settleMs);
    const base = await rssSamples(relayPid, 3, 300);
    const c0 = await cpuSeconds([relayPid]);
    await sleep(windowMs / 2);
    const idleCpu = ((await cpuSeconds([relayPid])) - c0) / (windowMs / 2000);

    await load.write("go\n");
    const rm = await load.waitFor(
      /"ready":(\d+),"failed":(\d+),"ms":(\d+)/,
      "stdout",
      60_000 + n * 200,
    );
    if (Number(rm[1]) !== n) {
      throw new Error(`only ${rm[1]} of ${n} agents connected: ${load.stdout.slice(-500)}`);
    }
    log(`idle agents: ${n} connected in ${rm[3]} ms`);
    // At rest: a heartbeat period (at least 20 s) after the last dial, so that every link's
    // first probe is behind, and so that the collection of
    // what thousands of handshakes left behind is not counted as the cost of idling.
    await sleep(ctx.quick ? settleMs : restMs);
    const sampler = new Sampler(() => rss(relayPid), 1000);
    const m0 = await machineBusySeconds();
    const t0 = await cpuSeconds([relayPid, load.pid]);
    const r0 = await cpuSeconds([relayPid]);
    await sleep(windowMs);
    const r1 = await cpuSeconds([relayPid]);
    const t1 = await cpuSeconds([relayPid, load.pid]);
    const m1 = await machineBusySeconds();
    const samples = await sampler.stop();
    const loaded = median(samples);
    const windowS = windowMs / 1000;
    // The whole listing (Proc keeps only the tail of what it captures): thousands of machines.
    const argv = w.argv(["machines", "--json"]);
    const m = await new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: w.env(),
      clearEnv: true,
      stdin: "null",
      signal: AbortSignal.timeout(60_000),
    }).output();
    const stdout = new TextDecoder().decode(m.stdout);
    let online: number | string;
    try {
      online = (JSON.parse(stdout) as { online: boolean }[]).filter((x) => x.online).length;
      if (m.code !== 0) throw new Error();
    } catch {
      const stderr = new TextDecoder().decode(m.stderr);
      const err = /"message":"([^"]*)"/.exec(stdout)?.[1] ?? (stderr.trim().slice(0, 200) ||
        `exit ${m.code}, ${stdout.length} bytes of stdout`);
      online = err;
      log(`idle agents: tether machines failed: ${err}`);
    }
    await load.closeStdin();
    const cm = await load.waitFor(/"closed_while_idle":(\d+)/, "stdout", 20_000);
    return {
      n,
      warm,
      dialMs: Number(rm[3]),
      base,
      loaded,
      perAgent: (loaded - base) / n,
      idleCpu,
      loadedCpu: (r1 - r0) / windowS,
      windowS,
      online,
      closed: Number(cm[1]),
      loadCpu: ((t1 - t0) - (r1 - r0)) / windowS,
      restCpu: Math.max(0, (m1 - m0) - (t1 - t0)) / windowS,
    };
  } finally {
    await load?.stop();
    await w.dispose();
  }
}

interface SshIdle {
  m: number;
  pss: number;
  rss: number;
  cpu: number;
  procs: number;
}

async function sshIdle(ctx: Ctx, m: number, windowMs: number): Promise<SshIdle> {
  const sshd = ctx.sshd!;
  const clients: Proc[] = [];
  try {
    const argv = sshd.argv([], {
      extra: [
        "-N",
        "-o",
        "ServerAliveInterval=2",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "PermitLocalCommand=yes",
        "-o",
        "LocalCommand=echo ready",
      ],
    });
    for (let i = 0; i < m; i += 5) {
      const batch = [];
      for (let j = i; j < Math.min(m, i + 5); j++) {
        const p = new Proc(argv);
        clients.push(p);
        batch.push(p.waitFor(/ready/, "stdout", 20_000));
      }
      await Promise.all(batch);
    }
    await sleep(ctx.quick ? 1000 : 2000);
    const pids = await sshd.sessionPids();
    const mems = [];
    for (let i = 0; i < 3; i++) {
      mems.push(await pssOf(pids));
      await sleep(300);
    }
    const c0 = await cpuSeconds(pids);
    await sleep(windowMs);
    const c1 = await cpuSeconds(pids);
    return {
      m,
      pss: median(mems.map((x) => x.pss)) / m,
      rss: median(mems.map((x) => x.rss)) / m,
      cpu: (c1 - c0) / (windowMs / 1000),
      procs: pids.length,
    };
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
}

/** The soft limit on open files of processes started from here (their own ulimit -n). */
function fileLimit(): number {
  try {
    const line = Deno.readTextFileSync("/proc/self/limits").split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = Number(line?.split(/\s{2,}/)[1]);
    return Number.isFinite(soft) ? soft : 20_000;
  } catch {
    return 20_000;
  }
}

export async function idleAgents(ctx: Ctx): Promise<ItemResult> {
  const n = ctx.quick ? 300 : 1000;
  const m = ctx.quick ? 10 : 50;
  const windowMs = ctx.quick ? 3000 : 20_000;
  // CPU is taken over whole heartbeat periods: each link is then probed exactly once per period
  // whenever it was dialed (a shorter window would count the first probes of links dialed
  // together as if they came that often, or miss them).
  const period = ctx.quick ? windowMs : IDLE_HEARTBEAT_MS;
  const t = await tetherIdle(ctx, n, period, false, [], period);
  log(
    `idle agents: relay +${fmtBytes(t.perAgent)} per agent, ${(t.loadedCpu * 100).toFixed(2)}% CPU`,
  );
  // The same over wss:// (what deployments run): the relay's TLS connections.
  // wss:// at the scale (issue 18: ≤ 32 KiB and ≤ 5% of a core at 20,000 agents),
  // less the few descriptors the relay needs besides its agents: a process here may hold
  // 20,000 files at most (ulimit -n), the relay one per agent and the load process as many.
  const nTls = ctx.quick ? 300 : Math.min(20_000, fileLimit() - 100);
  const tls = await tetherIdle(ctx, nTls, period, true, [], period);
  log(`idle agents over wss://: relay +${fmtBytes(tls.perAgent)} per agent`);
  // The same probed every 20 s, as before kernel keepalive took over finding vanished hosts.
  const slow = await tetherIdle(ctx, nTls, windowMs * 2, true, ["--idle-heartbeat", "20s"]);
  log(`idle agents over wss:// probed every 20 s: ${(slow.loadedCpu * 100).toFixed(2)}% CPU`);
  const s = ctx.sshd ? await sshIdle(ctx, m, windowMs) : undefined;
  if (s) log(`idle ssh: ${fmtBytes(s.pss)} PSS per connection`);
  const LIMIT = 64 * KiB;
  // CPU per idle connection per second, in microseconds.
  const tCpu = (t.loadedCpu - t.idleCpu) / t.n * 1e6;
  const sCpu = s ? s.cpu / s.m * 1e6 : undefined;
  const cpuText = (us: number) => `${us.toFixed(1)} µs/s per connection`;
  return {
    rows: [
      {
        key: "6 mem",
        figure: `relay memory per idle agent (${n} agents)`,
        tether: fmtBytes(t.perAgent),
        ssh: s ? `${fmtBytes(s.pss)} (sshd PSS per connection)` : "skipped",
        ratio: ratio(t.perAgent, s?.pss),
        target: "≤ 64 KiB per agent",
        verdict: verdict(t.perAgent <= LIMIT),
        raw: { tether: t, ssh: s },
      },
      {
        key: "6 mem wss",
        figure: `relay memory per idle agent over wss:// (${nTls} agents)`,
        tether: fmtBytes(tls.perAgent),
        ssh: s ? `${fmtBytes(s.pss)} (sshd PSS per connection)` : "skipped",
        ratio: ratio(tls.perAgent, s?.pss),
        target: "≤ 32 KiB per agent (issue 18)",
        verdict: verdict(tls.perAgent <= 32 * KiB),
        raw: { tether: tls },
      },
      {
        key: "6 cpu wss",
        figure: `relay CPU at rest with ${nTls} idle agents over wss://`,
        tether: `${(tls.loadedCpu * 100).toFixed(2)}% of a core (${
          cpuText((tls.loadedCpu - tls.idleCpu) / tls.n * 1e6)
        })`,
        ssh: s ? cpuText(sCpu!) : "skipped",
        ratio: ratio((tls.loadedCpu - tls.idleCpu) / tls.n * 1e6, sCpu),
        target: "≤ 5% of a core (issue 18)",
        verdict: verdict(tls.loadedCpu <= 0.05),
      },
      {
        key: "6 cpu wss 20s",
        figure: `the same with \`relay serve --idle-heartbeat 20s\` (the default before keepalive)`,
        tether: `${(slow.loadedCpu * 100).toFixed(2)}% of a core (${
          cpuText((slow.loadedCpu - slow.idleCpu) / slow.n * 1e6)
        })`,
        ssh: s ? cpuText(sCpu!) : "skipped",
        ratio: ratio((slow.loadedCpu - slow.idleCpu) / slow.n * 1e6, sCpu),
        target: "",
        verdict: "n/a",
      },
      {
        key: "6 cpu",
        figure: `heartbeat CPU of ${n} idle agents (relay)`,
        tether: `${(t.loadedCpu * 100).toFixed(2)}% of a core (${cpuText(tCpu)})`,
        ssh: s ? cpuText(sCpu!) : "skipped",
        ratio: ratio(tCpu, sCpu),
        target: "",
        verdict: "n/a",
      },
    ],
    details: [
      "### 6. Relay memory and heartbeat CPU with idle agents",
      "",
      "- A fresh relay (no agent process); `scripts/bench/agents_load.ts` holds the agents in " +
      "one process through the project's own `dial()`/`Conn` (hello with agent info, " +
      "enrollment with the agent key, heartbeats as an agent with nothing open: the relay " +
      `probes each link after ${IDLE_HEARTBEAT_MS / 1000} s of silence (\`--idle-heartbeat\`), ` +
      "the agent answers; kernel keepalive on the relay's sockets looks for vanished hosts). It " +
      "first dials " +
      `${t.warm} agents (warm-up); the relay's baseline RSS is then taken (median of 3), ` +
      `then ${n} more agents are dialed (${t.dialMs} ms, 32 at a time), and after ${
        ctx.quick ? 1 : period / 1000
      } s of idling (a heartbeat period: every link's first probe is behind) the relay's RSS ` +
      `is sampled every second for ${t.windowS} s (median), its CPU taken over that window. ` +
      "Per agent = (loaded − baseline) / N.",
      `- tether: baseline ${fmtBytes(t.base)}, with ${n} more agents ${fmtBytes(t.loaded)} → ` +
      `${fmtBytes(t.perAgent)} per agent. ` +
      (typeof t.online === "number"
        ? `\`tether machines\` listed ${t.online} online (expected ${n + t.warm}); `
        : `**\`tether machines --json\` failed with ${n + t.warm} machines: ${t.online}**; `) +
      `${t.closed} connections dropped while idle. Over wss:// (\`relay serve ` +
      `--tls-self-signed\`, the agents given its CA), ${nTls} agents (${tls.dialMs} ms to ` +
      `dial), CPU over ${tls.windowS} s: baseline ` +
      `${fmtBytes(tls.base)}, loaded ${fmtBytes(tls.loaded)} → ${fmtBytes(tls.perAgent)} per ` +
      `agent, ${(tls.loadedCpu * 100).toFixed(2)}% of a core; ` +
      (typeof tls.online === "number"
        ? `${tls.online} listed online`
        : `**\`tether machines --json\` failed: ${tls.online}**`) +
      `, ${tls.closed} connections dropped while idle; the rest of the machine (the kernel's ` +
      `keepalive probes, which the relay's CPU does not count, and whatever else ran) used ` +
      `${(tls.restCpu * 100).toFixed(2)}% of a core. With \`--idle-heartbeat 20s\` ` +
      `(another relay, the same load, CPU over ${slow.windowS} s): ` +
      `${(slow.loadedCpu * 100).toFixed(2)}% of a core, ` +
      `${fmtBytes(slow.perAgent)} per agent, ${slow.closed} dropped; the rest of the machine ` +
      `${(slow.restCpu * 100).toFixed(2)}%.`,
      `- Relay CPU (utime+stime from /proc/PID/stat): ${(t.idleCpu * 100).toFixed(2)}% of a ` +
      `core with the ${t.warm} warm-up agents, ${(t.loadedCpu * 100).toFixed(2)}% with ${
        n + t.warm
      } over ${t.windowS} s → ${cpuText(tCpu)} (${
        (tCpu * t.windowS).toFixed(1)
      } µs per agent per ${t.windowS} s${
        ctx.quick ? "" : ", a probe and its answer"
      }, with the relay's periodic sweep that ` +
      "persists last-seen times). The load process itself used " +
      `${(t.loadCpu * 100).toFixed(2)}% of a core.`,
      s
        ? `- OpenSSH analogue: ${s.m} idle \`ssh -N -o ServerAliveInterval=2\` connections ` +
          "(sshd has `ClientAliveInterval 2`, so both sides send a keepalive every 2 s of silence). " +
          `The ${s.procs} per-connection sshd processes (privileged monitor + unprivileged child) ` +
          `hold ${fmtBytes(s.pss)} PSS (${fmtBytes(s.rss)} RSS, which counts shared pages ` +
          `once per process) per connection and use ${cpuText(sCpu!)}.`
        : `- OpenSSH: ${ctx.sshSkipped}`,
      "",
    ],
  };
}
