/**
 * Latency: turn round trips through `exec --stream` (item 3), whole-command
 * time of `exec -- true` (item 4), and attach-to-ready time of `connect`
 * (item 5).
 */
import {
  CONFIG,
  cpuSeconds,
  descendants,
  fmtMs,
  log,
  median,
  percentile,
  Proc,
  readWithin,
  ROOT,
  run,
  shq,
  sleep,
} from "./lib.ts";
import { join } from "node:path";
import type { Sshd } from "./openssh.ts";
import { type Ctx, type ItemResult, pairedRatio, ratio, type Row, verdict } from "./report.ts";
import type { TetherWorld } from "./tether.ts";

const dec = () => new TextDecoder();

/** Processes whose CPU time is counted per turn, by label. */
type CpuGroups = (clientPid: number) => Promise<{ label: string; pids: number[] }[]>;

export interface Turns {
  times: number[];
  /** CPU microseconds per recorded turn, by label (all threads of each process). */
  cpu: { label: string; us: number }[];
}

async function groupCpu(groups: { label: string; pids: number[] }[]) {
  return await Promise.all(groups.map(async (g) => await cpuSeconds(g.pids)));
}

/**
 * Drives a line echo: writes one line, waits for it to come back, `n` times
 * after `warm` unrecorded turns. Returns each turn's milliseconds and the CPU
 * the processes in `cpuGroups` spent per recorded turn.
 */
export async function turns(
  argv: string[],
  env: Record<string, string> | undefined,
  n: number,
  warm: number,
  cpuGroups: CpuGroups,
): Promise<Turns> {
  const p = new Proc(argv, { env, stdin: "piped", stdout: "raw" });
  const reader = p.child.stdout.getReader();
  const d = dec();
  const times: number[] = [];
  let pending = "";
  let groups: { label: string; pids: number[] }[] = [];
  let cpu0: number[] = [];
  try {
    for (let i = 0; i < warm + n; i++) {
      if (i === warm) {
        groups = await cpuGroups(p.pid);
        cpu0 = await groupCpu(groups);
      }
      const line = `{"turn":${i},"text":"${"x".repeat(40)}"}`;
      const t0 = performance.now();
      await p.write(line + "\n");
      let got: string;
      for (;;) {
        const nl = pending.indexOf("\n");
        if (nl >= 0) {
          got = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          break;
        }
        const { value, done } = await readWithin(reader, 10_000, `turn ${i}`);
        if (done) throw new Error(`the echo ended at turn ${i}: ${p.stderr.slice(-500)}`);
        pending += d.decode(value, { stream: true });
      }
      const dt = performance.now() - t0;
      if (got !== line) throw new Error(`turn ${i}: sent ${line}, got ${got.slice(0, 200)}`);
      if (i >= warm) times.push(dt);
    }
    const cpu1 = await groupCpu(groups);
    const cpu = groups.map((g, i) => ({ label: g.label, us: (cpu1[i] - cpu0[i]) / n * 1e6 }));
    reader.releaseLock();
    await p.closeStdin();
    const st = await p.wait(10_000);
    if (st.code !== 0) throw new Error(`the echo exited ${st.code}: ${p.stderr.slice(-500)}`);
    return { times, cpu };
  } finally {
    await p.stop();
  }
}

/** One way to run the line echo: a client argv, its env, and whose CPU counts. */
export interface TurnPath {
  name: string;
  argv: string[];
  env?: Record<string, string>;
  cpu: CpuGroups;
}

/** tether's `exec --stream` to `awk` through world `w` (ws:// or wss://). */
export function tetherPath(
  name: string,
  w: TetherWorld,
  awk: string[],
  clientFlags: string[] = [],
): TurnPath {
  return {
    name,
    argv: w.exec(awk, ["--stream"], clientFlags),
    env: w.env(),
    cpu: async (client) => [
      { label: "client", pids: [client] },
      { label: "relay", pids: [w.relay!.pid] },
      { label: "agent", pids: [w.agent!.pid] },
      { label: "awk", pids: await descendants(w.agent!.pid, "awk") },
    ],
  };
}

/** `ssh -T 127.0.0.1 awk …` to the benchmark's sshd. */
export function sshPath(sshd: Sshd, awk: string[]): TurnPath {
  return {
    name: "OpenSSH",
    argv: sshd.argv(awk),
    cpu: async (client) => [
      { label: "ssh", pids: [client] },
      { label: "sshd", pids: await sshd.sessionPids("sshd") },
      { label: "awk", pids: await sshd.sessionPids("awk") },
    ],
  };
}

/** The minimal Deno chain of scripts/bench/chain.ts, its relay and agent running. */
export class Chain {
  private constructor(
    readonly relay: Proc,
    readonly agent: Proc,
    readonly port: number,
    private readonly denoFlags: string[],
  ) {}

  static async start(awk: string[], denoFlags: string[] = []): Promise<Chain> {
    const deno = (role: string) => [Deno.execPath(), "run", "-A", ...denoFlags, CHAIN, role];
    const relay = new Proc(deno("relay"));
    const port = Number((await relay.waitFor(/listening (\d+)/, "stdout", 30_000))[1]);
    const agent = new Proc([...deno("agent"), String(port), "--", ...awk]);
    return new Chain(relay, agent, port, denoFlags);
  }

  path(): TurnPath {
    return {
      name: "Deno chain (TCP)",
      argv: [Deno.execPath(), "run", "-A", ...this.denoFlags, CHAIN, "client", String(this.port)],
      cpu: async (client) => [
        { label: "client", pids: [client] },
        { label: "relay", pids: [this.relay.pid] },
        { label: "agent", pids: [this.agent.pid] },
        { label: "awk", pids: await descendants(this.agent.pid, "awk") },
      ],
    };
  }

  async stop(): Promise<void> {
    await this.agent.stop();
    await this.relay.stop();
  }
}

const CHAIN = join(ROOT, "scripts", "bench", "chain.ts");

/**
 * Runs every path `runs` times, interleaved run by run (path 1, path 2, …, then again),
 * each run in a new client process: one run's p50 moves by ±15% on a busy VM, and
 * interleaving spreads whatever disturbs the machine over all paths alike.
 */
export async function interleavedTurns(
  paths: TurnPath[],
  runs: number,
  n: number,
  warm: number,
): Promise<Map<string, Turns[]>> {
  const out = new Map<string, Turns[]>(paths.map((p) => [p.name, []]));
  for (let r = 1; r <= runs; r++) {
    for (const path of paths) {
      const t = await turns(path.argv, path.env, n, warm, path.cpu);
      out.get(path.name)!.push(t);
      log(
        `turns run ${r}/${runs} ${path.name}: p50 ${fmtMs(percentile(t.times, 50))}, ` +
          `p99 ${fmtMs(percentile(t.times, 99))}`,
      );
    }
  }
  return out;
}

/**
 * Item 3: p50 and p99 of line round trips through `exec --stream` to awk, over ws:// and
 * wss://, beside OpenSSH and the minimal Deno chain (issue 18's targets).
 */
export async function turnLatency(ctx: Ctx): Promise<ItemResult> {
  const n = ctx.quick ? 200 : 2000;
  const runs = ctx.quick ? 1 : 5;
  const warm = 20;
  const chain = await Chain.start(ctx.awk);
  let byPath: Map<string, Turns[]>;
  const paths = [
    tetherPath("tether ws://", ctx.world, ctx.awk),
    ...(ctx.tlsWorld ? [tetherPath("tether wss://", ctx.tlsWorld, ctx.awk)] : []),
    chain.path(),
    ...(ctx.sshd ? [sshPath(ctx.sshd, ctx.awk)] : []),
  ];
  try {
    byPath = await interleavedTurns(paths, runs, n, warm);
  } finally {
    await chain.stop();
  }
  const get = (name: string) => byPath.get(name) ?? [];
  const ws = get("tether ws://"), wss = get("tether wss://");
  const deno = get(chain.path().name), ssh = get("OpenSSH");
  const med = (rs: Turns[], p: number) =>
    rs.length ? median(rs.map((r) => percentile(r.times, p))) : undefined;
  const cpuOf = (rs: Turns[]) =>
    rs[0].cpu.map((c, i) => ({ label: c.label, us: median(rs.map((r) => r.cpu[i].us)) }));
  const cpuText = (cpu: { label: string; us: number }[]) =>
    cpu.map((c) => `${c.label} ${c.us.toFixed(0)} µs`).join(", ") +
    ` (total ${cpu.reduce((a, c) => a + c.us, 0).toFixed(0)} µs)`;
  const perRun = (rs: Turns[]) =>
    rs.map((r) => `${fmtMs(percentile(r.times, 50))} / ${fmtMs(percentile(r.times, 99))}`).join(
      ", ",
    );
  const row = (
    key: string,
    figure: string,
    rs: Turns[],
    p: number,
    baseRuns: Turns[],
    limit: number,
    against = "OpenSSH",
  ): Row => {
    const t = med(rs, p), base = med(baseRuns, p);
    const at = (xs: Turns[]) => xs.map((r) => percentile(r.times, p));
    const r = pairedRatio(at(rs), at(baseRuns));
    return {
      key,
      figure,
      tether: t === undefined ? "skipped" : fmtMs(t),
      ssh: base !== undefined ? fmtMs(base) : "skipped",
      ratio: ratio(r, 1),
      target: `≤ ${limit}× ${against} (issue 18)`,
      verdict: r === undefined ? "skipped" : verdict(r <= limit),
      raw: rs.length ? { runs: rs.map((r) => summary(r.times)), cpu_us: cpuOf(rs) } : undefined,
    };
  };
  const awkText = ctx.awk.map(shq).join(" ");
  const pathLine = (label: string, rs: Turns[]) =>
    rs.length
      ? `- ${label} p50 / p99 per run: ${perRun(rs)}; first run: ${summaryText(rs[0].times)}; ` +
        `CPU per turn: ${cpuText(cpuOf(rs))}`
      : `- ${label}: skipped`;
  return {
    rows: [
      row(
        "3 p50",
        `turn latency p50: ${n} line round trips, \`exec --stream\` to awk`,
        ws,
        50,
        ssh,
        1.5,
      ),
      row("3 p99", "turn latency p99", ws, 99, ssh, 3),
      row("3 wss p50", "turn latency p50 over wss://", wss, 50, ssh, 1.8),
      row("3 wss p99", "turn latency p99 over wss://", wss, 99, ssh, 3),
      row(
        "3 chain",
        "turn latency p50 against the minimal Deno chain (its p50 in the OpenSSH column)",
        ws,
        50,
        deno,
        1,
        "the chain",
      ),
    ],
    details: [
      "### 3. Turn latency",
      "",
      `- tether: \`tether exec bench --stream -- ${awkText}\`, over ws:// and over wss:// ` +
      "(`relay serve --tls-self-signed`, its CA given to client and agent); OpenSSH: " +
      `\`ssh -T … 127.0.0.1 "${awkText}"\` (the remote shell runs the same argv); the minimal ` +
      "Deno chain (scripts/bench/chain.ts: three processes copying bytes with plain read/write " +
      "loops, TCP_NODELAY, no protocol) in front of the same awk. The benchmark writes a " +
      `${`{"turn":N,"text":"${"x".repeat(40)}"}`.length + 1}-byte JSON line to the client's ` +
      `stdin and times until that line is back on its stdout; ${n} turns after ${warm} ` +
      `unrecorded ones per run, ${runs} run${runs > 1 ? "s" : ""} of each path, interleaved, ` +
      "each in a new client process; the table gives the median over runs of each run's " +
      "percentile, and the ratio is the median of each run's ratio to the run beside it. CPU per turn: utime+stime of every thread, from /proc/PID/stat over the " +
      `recorded turns, median over runs (10 ms clock ticks, so ±${(10_000 / n).toFixed(0)} µs).`,
      pathLine("tether ws://", ws),
      pathLine("tether wss://", wss),
      pathLine("Deno chain", deno),
      ssh.length ? pathLine("OpenSSH", ssh) : `- OpenSSH: ${ctx.sshSkipped}`,
      "",
    ],
  };
}

function summary(xs: number[]) {
  return {
    n: xs.length,
    min: Math.min(...xs),
    p50: percentile(xs, 50),
    p90: percentile(xs, 90),
    p99: percentile(xs, 99),
    max: Math.max(...xs),
  };
}

export function summaryText(xs: number[]): string {
  const s = summary(xs);
  return `min ${fmtMs(s.min)}, p50 ${fmtMs(s.p50)}, p90 ${fmtMs(s.p90)}, p99 ${fmtMs(s.p99)}, max ${
    fmtMs(s.max)
  }`;
}

/**
 * Item 4: process start to exit of `exec -- true`, beside OpenSSH and beside the runtime's
 * floor (scripts/bench/floor_cli.ts: a bundle that loads only commander and node:crypto).
 */
export async function execTrue(ctx: Ctx): Promise<ItemResult> {
  const runs = ctx.quick ? 5 : 15;
  const w = ctx.world;
  const once = async (argv: string[], env?: Record<string, string>) => {
    const r = await run(argv, { env, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr.trim().slice(-500)}`);
    return r.ms;
  };
  const floorJs = join(ctx.tmp, "floor.js");
  const b = await run(
    [
      Deno.execPath(),
      "bundle",
      "-q",
      "--platform",
      "deno",
      "-o",
      floorJs,
      "scripts/bench/floor_cli.ts",
    ],
    { cwd: ROOT, timeoutMs: 120_000 },
  );
  if (b.code !== 0) throw new Error(`bundling floor_cli.ts failed: ${b.stderr}`);
  const fArgv = [Deno.execPath(), "run", "-q", "-P", "--config", CONFIG, floorJs];
  const tArgv = w.exec(["true"]);
  const sArgv = ctx.sshd?.argv(["true"]);
  // One unrecorded run each: page cache, code cache, first connection.
  await once(tArgv, w.env());
  await once(fArgv, w.env());
  if (sArgv) await once(sArgv);
  const t: number[] = [], f: number[] = [], s: number[] = [];
  for (let i = 0; i < runs; i++) {
    t.push(await once(tArgv, w.env()));
    f.push(await once(fArgv, w.env()));
    if (sArgv) s.push(await once(sArgv));
  }
  const tm = median(t), fm = median(f), sm = sArgv ? median(s) : undefined;
  log(
    `exec true: tether ${fmtMs(tm)}, floor ${fmtMs(fm)}, ssh ${
      sm === undefined ? "skipped" : fmtMs(sm)
    }`,
  );
  const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(", ") + " ms";
  return {
    rows: [{
      key: "4",
      figure: "whole-command time of `exec -- true` (process start to exit)",
      tether: fmtMs(tm),
      ssh: sm === undefined ? "skipped" : fmtMs(sm),
      ratio: ratio(pairedRatio(t, s), 1),
      target: "≤ 0.5× OpenSSH (issue 18)",
      verdict: sm === undefined ? "skipped" : verdict(pairedRatio(t, s)! <= 0.5),
      raw: { tether_ms: t, floor_ms: f, ssh_ms: s },
    }, {
      key: "4 floor",
      figure: "the runtime's floor: a bundle that loads only commander and node:crypto, then exits",
      tether: fmtMs(fm),
      ssh: sm === undefined ? "skipped" : fmtMs(sm),
      ratio: ratio(pairedRatio(f, s), 1),
      target: "",
      verdict: "n/a",
    }],
    details: [
      "### 4. `exec -- true`",
      "",
      "- tether: `tether exec bench -- true` (a new CLI process: Deno start, dial, " +
      "`machines` to resolve the name, the end-to-end handshake, open, exit); OpenSSH: " +
      "`ssh -T … 127.0.0.1 true` (a new connection: key exchange, authentication, session). " +
      "stdin is /dev/null for both. Wall time from spawn to exit; " +
      `${runs} runs each after one unrecorded, alternating, median.`,
      "- The floor: scripts/bench/floor_cli.ts bundled and run as tether is (`deno run -q -P " +
      "--config deno.json floor.js`): it loads commander (the command-line library DESIGN.md " +
      "names) and node:crypto (which the end-to-end handshake needs) and exits. Whatever " +
      "tether does, a command of this program cannot start faster than this.",
      `- tether runs: ${list(t)}`,
      `- floor runs: ${list(f)}`,
      `- OpenSSH runs: ${sArgv ? list(s) : ctx.sshSkipped}`,
      "",
    ],
  };
}

/** `cmdline` on a PTY of util-linux `script`, as in a person's terminal; its stdin piped. */
function onPty(cmdline: string, env: Record<string, string>): Proc {
  return new Proc(["script", "-qfc", cmdline, "/dev/null"], {
    env: { ...env, TERM: "xterm", SHELL: "/bin/sh" },
    stdin: "piped",
    stdout: "raw",
  });
}

/**
 * Runs `cmdline` on a PTY (util-linux `script`) and returns milliseconds from
 * spawn to the first output byte after the line matching `after` (or to the
 * first output byte at all). `leave` is typed afterwards to end the session.
 */
async function attachTime(
  cmdline: string,
  env: Record<string, string>,
  after: RegExp | undefined,
  leave: string,
): Promise<number> {
  const p = onPty(cmdline, env);
  const reader = p.child.stdout.getReader();
  const d = dec();
  let buf = "";
  let from = after ? -1 : 0;
  try {
    for (;;) {
      const { value, done } = await readWithin(reader, 20_000, "attach");
      const now = performance.now();
      if (done) throw new Error(`ended before the first prompt byte: ${JSON.stringify(buf)}`);
      buf += d.decode(value, { stream: true });
      if (from < 0) {
        const m = after!.exec(buf);
        const eol = m ? buf.indexOf("\n", m.index) : -1;
        if (eol >= 0) from = eol + 1;
      }
      if (from >= 0 && buf.length > from) {
        await p.write(leave).catch(() => {});
        await p.wait(5000).catch(() => {});
        return now - p.startedAt;
      }
    }
  } finally {
    reader.releaseLock();
    await p.stop();
  }
}

/** Item 5: attach-to-ready of `connect` (first prompt byte after the banner). */
export async function attachReady(ctx: Ctx): Promise<ItemResult> {
  const runs = ctx.quick ? 3 : 10;
  const w = ctx.world;
  const help = await run(w.argv(["connect", "--help"]), { env: w.env(), timeoutMs: 30_000 })
    .catch((e) => ({ code: -1, stdout: "", stderr: String(e) }));
  // An unknown command's --help shows the program's help (exit 0), so look for connect's own.
  const available = help.code === 0 && /Usage: tether connect/.test(help.stdout);
  const hasScript = (await run(["script", "--version"], { timeoutMs: 5000 }).catch(() => null))
    ?.code === 0;
  const t: number[] = [], s: number[] = [];
  const tLine = w.argv(["connect", "--new", w.machine]).map(shq).join(" ");
  const sLine = ctx.sshd ? ctx.sshd.argv([], { tty: true }).map(shq).join(" ") : "";
  let skipped: string | undefined;
  if (!hasScript) skipped = "skipped: `script` (util-linux) not found to provide a PTY";
  else if (!available) skipped = "skipped: connect not available";
  if (hasScript) {
    const banner = /attached/;
    for (let i = 0; i <= runs; i++) {
      // Run 0 is unrecorded (warm-up).
      if (!skipped) {
        const ms = await attachTime(tLine, w.env(), banner, "exit\r");
        if (i > 0) t.push(ms);
      }
      if (ctx.sshd) {
        const env = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", HOME: w.home };
        const ms = await attachTime(sLine, env, undefined, "exit\r");
        if (i > 0) s.push(ms);
      }
    }
  }
  const tm = t.length ? median(t) : undefined;
  const sm = s.length ? median(s) : undefined;
  log(
    `attach: tether ${tm === undefined ? skipped : fmtMs(tm)}, ssh ${
      sm === undefined ? "skipped" : fmtMs(sm)
    }`,
  );
  const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(", ") + " ms";
  return {
    rows: [{
      key: "5",
      figure: "attach-to-ready time of `connect` (to the first prompt byte)",
      tether: tm === undefined ? skipped! : fmtMs(tm),
      ssh: sm === undefined ? (hasScript ? "skipped" : skipped!) : fmtMs(sm),
      ratio: ratio(tm, sm),
      target: "",
      verdict: tm === undefined ? "skipped" : "n/a",
      raw: { tether_ms: t, ssh_ms: s },
    }],
    details: [
      "### 5. Attach to ready",
      "",
      "- Each client runs on a PTY from util-linux `script -qfc CMD /dev/null`. tether: " +
      "`tether connect --new bench` (a new session: the agent starts `$SHELL -l`), timed from " +
      "spawn to the first output byte after the `attached …` banner line (stderr and stdout " +
      "share the PTY); OpenSSH: `ssh -tt … 127.0.0.1` (the login shell; `PrintMotd no`, " +
      "`PrintLastLog no`), timed to its first output byte. Both then type `exit`. The agent " +
      "runs with the user's HOME and login shell, so both start the same shell with the same " +
      `profile. ${runs} runs each after one unrecorded, alternating, median.`,
      `- tether: ${t.length ? list(t) : skipped}`,
      `- OpenSSH: ${s.length ? list(s) : ctx.sshSkipped ?? skipped}`,
      "",
    ],
  };
}

/**
 * Keystroke to echo in an interactive session: `cmdline` runs on a PTY (util-linux
 * `script`, as a person's terminal) and starts the login shell; the shell is replaced by
 * `cat`, so the remote terminal's line discipline echoes each byte; then each of
 * `warm + keys` letters is typed alone and timed until it is read back, 5 ms apart.
 */
async function echoTimes(
  cmdline: string,
  env: Record<string, string>,
  /** What the client prints before the session's own output (tether's banner). */
  banner: RegExp | undefined,
  keys: number,
  warm: number,
): Promise<number[]> {
  const p = onPty(cmdline, env);
  const reader = p.child.stdout.getReader();
  const d = dec();
  try {
    let seen = "";
    const more = async (what: string) => {
      const { value, done } = await readWithin(reader, 20_000, what);
      if (done) throw new Error(`ended before ${what}: ${JSON.stringify(seen.slice(-300))}`);
      seen += d.decode(value, { stream: true });
    };
    // The shell's first output (its prompt) says the session is attached and the client's
    // terminal raw: from then on, what comes back was echoed by the remote side.
    let from = 0;
    while (banner && from === 0) {
      const m = banner.exec(seen);
      if (m) from = m.index + m[0].length;
      else await more("the banner");
    }
    while (seen.length <= from) await more("the prompt");
    await p.write("exec cat\r");
    while (!/exec cat\r*\n/.test(seen.slice(from))) await more("the shell's echo of exec cat");
    const times: number[] = [];
    const letters = "abdfghijklmnopqrsuvwyz"; // none of them in "exec cat"
    for (let i = 0; i < warm + keys; i++) {
      const ch = letters.charCodeAt(i % letters.length);
      const t0 = performance.now();
      await p.write(new Uint8Array([ch]));
      for (;;) {
        const { value, done } = await readWithin(reader, 10_000, `the echo of key ${i}`);
        if (done) throw new Error(`the session ended at key ${i}: ${p.stderr.slice(-300)}`);
        if (value.includes(ch)) break;
      }
      if (i >= warm) times.push(performance.now() - t0);
      await sleep(5);
    }
    // Ctrl-C ends cat, and with it the session (Ctrl-D would detach tether's client).
    await p.write("\x03");
    await p.wait(10_000).catch(() => {});
    return times;
  } finally {
    reader.releaseLock();
    await p.stop();
  }
}

/** Item 8: keystroke to echo in `tether connect` (ws:// and wss://) against `ssh -tt`. */
export async function keystrokeEcho(ctx: Ctx): Promise<ItemResult> {
  const keys = ctx.quick ? 50 : 200;
  const runs = ctx.quick ? 1 : 3;
  const warm = 10;
  const worlds = [ctx.world, ...(ctx.tlsWorld ? [ctx.tlsWorld] : [])];
  const scheme = (w: TetherWorld) => w.url.split(":")[0];
  const t: number[][][] = worlds.map(() => []), s: number[][] = [];
  for (let r = 1; r <= runs; r++) {
    for (const [k, w] of worlds.entries()) {
      const line = w.argv(["connect", "--new", w.machine]).map(shq).join(" ");
      const xs = await echoTimes(line, w.env(), /attached[^\n]*\n/, keys, warm);
      t[k].push(xs);
      log(`echo run ${r}/${runs}: tether ${scheme(w)} p50 ${fmtMs(percentile(xs, 50))}`);
    }
    if (ctx.sshd) {
      const env = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", HOME: ctx.world.home };
      const line = ctx.sshd.argv([], { tty: true }).map(shq).join(" ");
      const xs = await echoTimes(line, env, undefined, keys, warm);
      s.push(xs);
      log(`echo run ${r}/${runs}: ssh p50 ${fmtMs(percentile(xs, 50))}`);
    }
  }
  const med = (rs: number[][], p: number) =>
    rs.length ? median(rs.map((xs) => percentile(xs, p))) : undefined;
  const s50 = med(s, 50), s99 = med(s, 99);
  const p50s = (rs: number[][]) => rs.map((xs) => percentile(xs, 50));
  const p99s = (rs: number[][]) => rs.map((xs) => percentile(xs, 99));
  const rows: Row[] = worlds.flatMap((w, k) => {
    const tls = scheme(w) === "wss";
    const t50 = med(t[k], 50)!, t99 = med(t[k], 99)!;
    return [{
      key: tls ? "8 wss p50" : "8 p50",
      figure: `connect: keystroke to echo p50${
        tls ? " over wss://" : ""
      } (\`connect\` / \`ssh -tt\`)`,
      tether: fmtMs(t50),
      ssh: s50 === undefined ? "skipped" : fmtMs(s50),
      ratio: ratio(pairedRatio(p50s(t[k]), p50s(s)), 1),
      target: "≤ 1.5× OpenSSH (issue 18)",
      verdict: s50 === undefined ? "skipped" : verdict(pairedRatio(p50s(t[k]), p50s(s))! <= 1.5),
      raw: { tether: t[k].map((xs) => summary(xs)), ssh: s.map((xs) => summary(xs)) },
    }, {
      key: tls ? "8 wss p99" : "8 p99",
      figure: `keystroke to echo p99${tls ? " over wss://" : ""}`,
      tether: fmtMs(t99),
      ssh: s99 === undefined ? "skipped" : fmtMs(s99),
      ratio: ratio(pairedRatio(p99s(t[k]), p99s(s)), 1),
      target: "",
      verdict: "n/a",
    }];
  });
  const perRun = (rs: number[][]) =>
    rs.map((xs) => `${fmtMs(percentile(xs, 50))} / ${fmtMs(percentile(xs, 99))}`).join(", ");
  return {
    rows,
    details: [
      "### 8. Keystroke to echo",
      "",
      "- Each client runs on a PTY from util-linux `script -qfc CMD /dev/null`. tether: " +
      "`tether connect --new bench` (a new session); OpenSSH: `ssh -tt … 127.0.0.1`. Both " +
      "start the login shell, " +
      "which is told `exec cat`, so that the remote terminal itself echoes what is typed. " +
      `Then ${keys} letters after ${warm} unrecorded ones, each typed alone (written to ` +
      "`script`'s stdin) and timed until it is read back from its stdout, 5 ms apart; " +
      `${runs} run${runs > 1 ? "s" : ""} of each, interleaved, each a new session; the ` +
      "table gives the median over runs of each run's percentile.",
      ...worlds.map((w, k) => `- tether ${scheme(w)}:// p50 / p99 per run: ${perRun(t[k])}`),
      `- OpenSSH p50 / p99 per run: ${s.length ? perRun(s) : ctx.sshSkipped}`,
      "",
    ],
  };
}
