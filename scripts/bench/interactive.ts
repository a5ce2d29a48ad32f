/**
 * Latency: turn round trips through `exec --stream` (item 3), whole-command
 * time of `exec -- true` (item 4), and attach-to-ready time of `connect`
 * (item 5).
 */
import {
  cpuSeconds,
  descendants,
  fmtMs,
  log,
  median,
  percentile,
  Proc,
  readWithin,
  run,
  shq,
} from "./lib.ts";
import { type Ctx, type ItemResult, ratio, verdict } from "./report.ts";

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

/** Item 3: p50 and p99 of line round trips through `exec --stream` to awk. */
export async function turnLatency(ctx: Ctx): Promise<ItemResult> {
  const n = ctx.quick ? 200 : 2000;
  const runs = ctx.quick ? 1 : 5;
  const warm = 20;
  const w = ctx.world;
  const relay = w.relay!.pid, agent = w.agent!.pid;
  const sshd = ctx.sshd;
  // Several runs, alternating tether and OpenSSH, each in a fresh client process: the
  // median of each run's percentiles is reported (one run's p50 moves by ±15% on a busy VM).
  const tRuns: Turns[] = [], sRuns: Turns[] = [];
  for (let r = 1; r <= runs; r++) {
    const tr = await turns(w.exec(ctx.awk, ["--stream"]), w.env(), n, warm, async (client) => [
      { label: "client", pids: [client] },
      { label: "relay", pids: [relay] },
      { label: "agent", pids: [agent] },
      { label: "awk", pids: await descendants(agent, "awk") },
    ]);
    tRuns.push(tr);
    log(`turn latency run ${r}/${runs}: tether p50 ${fmtMs(percentile(tr.times, 50))}`);
    if (sshd) {
      const sr = await turns(sshd.argv(ctx.awk), undefined, n, warm, async (client) => [
        { label: "ssh", pids: [client] },
        { label: "sshd", pids: await sshd.sessionPids("sshd") },
        { label: "awk", pids: await sshd.sessionPids("awk") },
      ]);
      sRuns.push(sr);
      log(`turn latency run ${r}/${runs}: ssh p50 ${fmtMs(percentile(sr.times, 50))}`);
    }
  }
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
  const t50 = med(tRuns, 50)!, t99 = med(tRuns, 99)!;
  const s50 = med(sRuns, 50), s99 = med(sRuns, 99);
  const awkText = ctx.awk.map(shq).join(" ");
  return {
    rows: [
      {
        key: "3 p50",
        figure: `turn latency p50: ${n} line round trips, \`exec --stream\` to awk`,
        tether: fmtMs(t50),
        ssh: s50 !== undefined ? fmtMs(s50) : "skipped",
        ratio: ratio(t50, s50),
        target: "≤ 2× OpenSSH",
        verdict: s50 !== undefined ? verdict(t50 <= 2 * s50) : "skipped",
        raw: {
          tether_ms: tRuns.map((r) => summary(r.times)),
          ssh_ms: sRuns.map((r) => summary(r.times)),
          tether_cpu_us: cpuOf(tRuns),
          ssh_cpu_us: sRuns.length ? cpuOf(sRuns) : undefined,
        },
      },
      {
        key: "3 p99",
        figure: "turn latency p99",
        tether: fmtMs(t99),
        ssh: s99 !== undefined ? fmtMs(s99) : "skipped",
        ratio: ratio(t99, s99),
        target: "",
        verdict: "n/a",
      },
    ],
    details: [
      "### 3. Turn latency",
      "",
      `- tether: \`tether exec bench --stream -- ${awkText}\`; OpenSSH: \`ssh -T … 127.0.0.1 ` +
      `"${awkText}"\` (the remote shell runs the same argv). The benchmark writes a ${
        `{"turn":N,"text":"${"x".repeat(40)}"}`.length + 1
      }-byte JSON line to the client's stdin and times until that line is back on its ` +
      `stdout; ${n} turns after ${warm} unrecorded ones per run, ${runs} run${
        runs > 1 ? "s" : ""
      } alternating tether and OpenSSH, each in a new client process; the table gives the ` +
      "median over runs of each run's percentile.",
      `- tether p50 / p99 per run: ${perRun(tRuns)}; first run: ${summaryText(tRuns[0].times)}`,
      `- OpenSSH p50 / p99 per run: ${
        sRuns.length
          ? `${perRun(sRuns)}; first run: ${summaryText(sRuns[0].times)}`
          : ctx.sshSkipped
      }`,
      "- CPU per turn (utime+stime of every thread, from /proc/PID/stat over the recorded " +
      `turns, median over runs; 10 ms clock ticks, so ±${(10_000 / n).toFixed(0)} µs): ` +
      `tether ${cpuText(cpuOf(tRuns))}` +
      (sRuns.length ? `; OpenSSH ${cpuText(cpuOf(sRuns))}.` : "."),
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

/** Item 4: process start to exit of `exec -- true`. */
export async function execTrue(ctx: Ctx): Promise<ItemResult> {
  const runs = ctx.quick ? 5 : 15;
  const w = ctx.world;
  const once = async (argv: string[], env?: Record<string, string>) => {
    const r = await run(argv, { env, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr.trim().slice(-500)}`);
    return r.ms;
  };
  const tArgv = w.exec(["true"]);
  const sArgv = ctx.sshd?.argv(["true"]);
  // One unrecorded run each: page cache, first connection.
  await once(tArgv, w.env());
  if (sArgv) await once(sArgv);
  const t: number[] = [], s: number[] = [];
  for (let i = 0; i < runs; i++) {
    t.push(await once(tArgv, w.env()));
    if (sArgv) s.push(await once(sArgv));
  }
  const tm = median(t), sm = sArgv ? median(s) : undefined;
  log(`exec true: tether ${fmtMs(tm)}, ssh ${sm === undefined ? "skipped" : fmtMs(sm)}`);
  const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(", ") + " ms";
  return {
    rows: [{
      key: "4",
      figure: "whole-command time of `exec -- true` (process start to exit)",
      tether: fmtMs(tm),
      ssh: sm === undefined ? "skipped" : fmtMs(sm),
      ratio: ratio(tm, sm),
      target: "≤ 1.0× OpenSSH",
      verdict: sm === undefined ? "skipped" : verdict(tm <= sm),
      raw: { tether_ms: t, ssh_ms: s },
    }],
    details: [
      "### 4. `exec -- true`",
      "",
      "- tether: `tether exec bench -- true` (a new CLI process: Deno start, dial, " +
      "`machines` to resolve the name, open, exit); OpenSSH: `ssh -T … 127.0.0.1 true` " +
      "(a new connection: key exchange, authentication, session). stdin is /dev/null for both. " +
      `Wall time from spawn to exit; ${runs} runs each after one unrecorded, alternating, median.`,
      `- tether runs: ${list(t)}`,
      `- OpenSSH runs: ${sArgv ? list(s) : ctx.sshSkipped}`,
      "",
    ],
  };
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
  const p = new Proc(["script", "-qfc", cmdline, "/dev/null"], {
    env: { ...env, TERM: "xterm", SHELL: "/bin/sh" },
    stdin: "piped",
    stdout: "raw",
  });
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
