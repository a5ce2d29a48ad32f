/**
 * What end-to-end encryption costs (issue 19): the same client with its streams sealed
 * (the default: a Noise IK handshake per stream, ChaCha20-Poly1305 on every DATA frame) and
 * in the clear (`TETHER_E2E=off` in the client's environment; the agent takes both), run by
 * run, against the same relay and agent.
 *
 *  - Turns: `exec --stream -- cat` line round trips (interactive.ts's `turns`) over ws:// and
 *    over wss:// (a private CA made for the run), each run a new client process, on and off
 *    interleaved (which goes first alternates), p50 and p99 as the median over runs.
 *  - Throughput: `tether exec bench -- head -c SIZE /dev/zero | wc -c` and
 *    `head -c SIZE /dev/zero | tether exec bench -- sh -c 'cat >/dev/null'` over ws://
 *    (transfer.ts's `transfer`, as items 1 and 2 of the main bench), on and off interleaved.
 *
 *   ./scripts/deno task bench:e2e [--quick] [--runs N] [--turns N] [--size MiB]
 *        [--transfer-runs N] [--only ws,wss,stdout,stdin] [--bundle F] [--write]
 *        [--no-wait] [--max-wait S]
 *
 * On a shared machine other work moves these figures more than encryption does: before each
 * pair of runs (off, on) the script waits until other processes are idle, and takes a pair
 * again when they were not while it ran (Guard); `--no-wait` only counts such pairs, and
 * `--max-wait` bounds the waiting (600 s in all by default).
 *
 * Targets (issue 19): turn p50 with encryption ≤ 1.10× without, judged by the median over
 * pairs of runs of each pair's ratio; throughput ≥ 0.80×. p99 is reported.
 * `--write` puts the table in docs/BENCHMARKS.md (its "e2e" section).
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Turns, turns } from "./interactive.ts";
import {
  descendants,
  fmtMs,
  fmtRate,
  GiB,
  initClock,
  log,
  median,
  MiB,
  output,
  percentile,
  procStats,
  ROOT,
  run,
  sleep,
  stopAll,
} from "./lib.ts";
import { loadAverage, machineInfo, machineLine, verdict, withSection } from "./report.ts";
import { bundleUnderTest, TetherWorld } from "./tether.ts";
import { sizeText, type Transfer, transfer } from "./transfer.ts";

type Mode = "off" | "on";
const MODES: Mode[] = ["off", "on"];

/** The client's environment for `mode`: the default (sealed), or TETHER_E2E=off. */
function clientEnv(w: TetherWorld, mode: Mode): Record<string, string> {
  return mode === "off" ? { ...w.env(), TETHER_E2E: "off" } : w.env();
}

/** The runs of one figure, with encryption off and on. */
type Pair<T> = Record<Mode, T[]>;

interface Row {
  figure: string;
  off: string;
  on: string;
  /** on / off */
  ratio: number;
  /** For turns: on / off of the medians over runs (the ratio above is of pairs). */
  ofMedians?: number;
  target: string;
  /** The ratio the target allows; undefined: reported, no target. */
  limit?: number;
  met?: boolean;
}

/** A ratio to two places, or three when two would round onto the target. */
function ratioText(ratio: number, limit?: number): string {
  const two = ratio.toFixed(2);
  return `${Number(two) === limit ? ratio.toFixed(3) : two}×`;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      turns: { type: "string" },
      size: { type: "string" },
      "transfer-runs": { type: "string" },
      only: { type: "string", default: "ws,wss,stdout,stdin" },
      bundle: { type: "string" },
      write: { type: "boolean", default: false },
      "no-wait": { type: "boolean", default: false },
      "max-wait": { type: "string", default: "600" },
    },
  });
  const quick = values.quick!;
  // A run's p50 moves by ±25% from one client process to the next here (where the scheduler
  // puts four busy processes on two cores), far more than sealing adds: many short runs.
  const runs = Number(values.runs ?? (quick ? 2 : 15));
  const n = Number(values.turns ?? (quick ? 300 : 2000));
  const size = Number(values.size ?? (quick ? 64 : 1024)) * MiB;
  const tRuns = Number(values["transfer-runs"] ?? (quick ? 1 : 3));
  const warm = 50;
  const only = new Set(values.only!.split(","));
  const started = performance.now();
  const command = ["./scripts/deno", "task", "bench:e2e", ...Deno.args].join(" ");
  await initClock();
  const info = await machineInfo(command);
  const load0 = await loadAverage();
  // Other work on the machine moves these figures more than anything measured: keep its trace.
  const cpu0 = await cpuNow(), tCpu0 = performance.now();
  const tmp = await Deno.makeTempDir({ prefix: "tether-bench-e2e-" });
  const worlds: TetherWorld[] = [];
  try {
    const bundle = await bundleUnderTest(values.bundle, tmp);
    const make = async (tls: boolean) => {
      const w = await TetherWorld.create(bundle, tmp, true, [], {}, tls);
      worlds.push(w);
      await warmUp(w);
      return w;
    };
    const ws = only.has("ws") || only.has("stdout") || only.has("stdin")
      ? await make(false)
      : undefined;
    const wss = only.has("wss") ? await make(true) : undefined;
    const guard = new Guard(
      () => worlds.flatMap((w) => [w.relay!.pid, w.agent!.pid]),
      !values["no-wait"],
      Number(values["max-wait"]),
    );

    // Turns: per run, one client with encryption off and one with it on (order alternating).
    const turnPairs: { name: string; w: TetherWorld; runs: Pair<Turns> }[] = [];
    if (ws && only.has("ws")) turnPairs.push({ name: "ws://", w: ws, runs: { off: [], on: [] } });
    if (wss) turnPairs.push({ name: "wss://", w: wss, runs: { off: [], on: [] } });
    const once = (w: TetherWorld, mode: Mode, count: number) =>
      turns(w.exec(["cat"], ["--stream"]), clientEnv(w, mode), count, warm, async (c) => [
        { label: "client", pids: [c] },
        { label: "relay", pids: [w.relay!.pid] },
        { label: "agent", pids: [w.agent!.pid] },
        { label: "cat", pids: await descendants(w.agent!.pid, "cat") },
      ]);
    // One unrecorded round: the agent's and relay's code paths for both modes get compiled.
    for (const t of turnPairs) for (const m of MODES) await once(t.w, m, 300);
    for (let r = 1; r <= runs; r++) {
      for (const t of turnPairs) {
        const got = await guard.pair(`run ${r}/${runs} ${t.name}`, r, async (m) => {
          const x = await once(t.w, m, n);
          log(
            `run ${r}/${runs} ${t.name} e2e ${m}: p50 ${fmtMs(percentile(x.times, 50))}, ` +
              `p99 ${fmtMs(percentile(x.times, 99))}`,
          );
          return x;
        });
        for (const m of MODES) t.runs[m].push(got[m]);
      }
    }

    // Throughput over ws://, the same way as items 1 and 2 of the main bench.
    const dirs = (["stdout", "stdin"] as const).filter((d) => only.has(d));
    const xfers: { dir: "stdout" | "stdin"; runs: Pair<Transfer> }[] = [];
    for (const dir of dirs) {
      const w = ws!;
      const remote = dir === "stdout"
        ? ["head", "-c", String(size), "/dev/zero"]
        : ["sh", "-c", "cat >/dev/null"];
      const x = { dir, runs: { off: [], on: [] } as Pair<Transfer> };
      xfers.push(x);
      for (let r = 1; r <= tRuns; r++) {
        const got = await guard.pair(`${dir} run ${r}/${tRuns}`, r, async (m) => {
          const t = await transfer(
            dir,
            w.exec(remote),
            clientEnv(w, m),
            size,
            300_000,
            [w.relay!.pid, w.agent!.pid],
            false,
            tmp,
          );
          log(`${dir} run ${r}/${tRuns} e2e ${m}: ${fmtRate(size / (t.ms / 1000))}`);
          return t;
        });
        for (const m of MODES) x.runs[m].push(got[m]);
      }
    }

    // The table.
    const rows: Row[] = [];
    const at = (xs: Turns[], p: number) => xs.map((x) => percentile(x.times, p));
    const spread = (xs: number[]) =>
      `${fmtMs(Math.min(...xs)).replace(" ms", "")}–${fmtMs(Math.max(...xs))}`;
    for (const t of turnPairs) {
      for (const p of [50, 99]) {
        const off = at(t.runs.off, p), on = at(t.runs.on, p);
        // Each pair ran back to back on the same relay and agent: their ratio cancels what
        // drifts between pairs (where the scheduler put the processes, the machine's state).
        const ratio = median(on.map((x, i) => x / off[i]));
        const limit = p === 50 ? 1.10 : undefined;
        rows.push({
          figure: `turn p${p}, ${t.name}`,
          off: `${fmtMs(median(off))} (${spread(off)})`,
          on: `${fmtMs(median(on))} (${spread(on)})`,
          ratio,
          ofMedians: median(on) / median(off),
          target: limit ? "≤ 1.10× off" : "(reported)",
          limit,
          met: limit ? ratio <= limit : undefined,
        });
      }
    }
    const rate = (xs: Transfer[]) => size / (median(xs.map((x) => x.ms)) / 1000);
    const rates = (xs: Transfer[]) =>
      xs.map((x) => (size / MiB / (x.ms / 1000)).toFixed(0)).join(", ");
    for (const x of xfers) {
      const off = rate(x.runs.off), on = rate(x.runs.on);
      const ratio = on / off;
      rows.push({
        figure: x.dir === "stdout"
          ? `stdout throughput, ${sizeText(size)} from \`head -c\`, ws://`
          : `stdin throughput, ${sizeText(size)} into \`cat >/dev/null\`, ws://`,
        off: `${fmtRate(off)} (${rates(x.runs.off)})`,
        on: `${fmtRate(on)} (${rates(x.runs.on)})`,
        ratio,
        target: "≥ 0.80× off",
        limit: 0.80,
        met: ratio >= 0.80,
      });
    }
    const table = [
      "| figure | e2e off | e2e on | on / off | on / off of the medians | target | status |",
      "| --- | ---: | ---: | ---: | ---: | --- | --- |",
      ...rows.map((r) =>
        `| ${r.figure} | ${r.off} | ${r.on} | ${ratioText(r.ratio, r.limit)} | ${
          r.ofMedians === undefined ? "" : ratioText(r.ofMedians, r.limit)
        } | ${r.target} | ${verdict(r.met)} |`
      ),
    ].join("\n");
    const judged = rows.filter((r) => r.met !== undefined);
    const missed = judged.filter((r) => !r.met).map((r) => r.figure);
    const notes: string[] = [];
    const cpuTurn = (xs: Turns[]) =>
      xs[0].cpu.map((c, i) => `${c.label} ${median(xs.map((x) => x.cpu[i].us)).toFixed(0)}`)
        .join(", ");
    for (const t of turnPairs) {
      notes.push(
        `- CPU µs per turn, ${t.name} (median of runs; 10 ms ticks, so ±${
          (10_000 / n).toFixed(0)
        } µs): off ${cpuTurn(t.runs.off)}; on ${cpuTurn(t.runs.on)}.`,
      );
    }
    const perGiB = (xs: Transfer[], f: (x: Transfer) => number) =>
      (median(xs.map(f)) / (size / GiB)).toFixed(2);
    const cpuXfer = (xs: Transfer[]) =>
      `client ${perGiB(xs, (x) => x.client)}, relay ${perGiB(xs, (x) => x.byPid[0])}, agent ${
        perGiB(xs, (x) => x.byPid[1])
      }`;
    for (const x of xfers) {
      notes.push(
        `- CPU s per GiB, ${x.dir} (median of runs; the client from GNU time, relay and agent ` +
          `from /proc/PID/stat): off ${cpuXfer(x.runs.off)}; on ${cpuXfer(x.runs.on)}.`,
      );
    }
    const durationS = (performance.now() - started) / 1000;
    // Every process this run started has ended (and been waited for): the rest is foreign.
    for (const w of worlds.splice(0)) await w.dispose().catch(() => {});
    const cpu1 = await cpuNow();
    const foreign = ((cpu1.all - cpu0.all) - (cpu1.own - cpu0.own)) /
      ((performance.now() - tCpu0) / 1000) / info.cores;
    const load1 = await loadAverage();
    console.log(table);
    console.log(`\n${notes.join("\n")}`);
    console.log(
      `\nTargets met: ${judged.length - missed.length} of ${judged.length}` +
        `${missed.length ? `; missed: ${missed.join("; ")}` : ""}. ${durationS.toFixed(0)} s.`,
    );
    if (values.write) {
      const md = [
        "## What end-to-end encryption costs (issue 19)",
        "",
        `\`${command}\`, ${info.date.slice(0, 16).replace("T", " ")} UTC, ${
          durationS.toFixed(0)
        } s; ${machineLine(info)}; ${info.deno}; ${
          values.bundle
            ? `the prebuilt bundle ${values.bundle} (the checkout was at ${info.commit})`
            : `a bundle of the current source (${info.commit})`
        }; 1-minute load average ${load0} before the run, ${load1} after it; other ` +
        `processes used ${(foreign * 100).toFixed(0)}% of the ${info.cores} cores during it ` +
        "(all CPU time from /proc/stat less this run's own and its children's, waits included). " +
        "The same relay and agent on 127.0.0.1 for both modes; the client either seals its " +
        "streams (the default: a Noise IK handshake per stream, ChaCha20-Poly1305 on every DATA " +
        "frame: WebAssembly up to 512 bytes, the system's OpenSSL above; docs/PROTOCOL.md) or " +
        "opens them in the clear (`TETHER_E2E=off` in the client's " +
        "environment). Each run is a new client process, and the two modes alternate run by " +
        "run (which goes first alternates too), after one unrecorded round of each. " +
        (values["no-wait"]
          ? "Runs did not wait for other work to stop. "
          : `Each pair of runs (off, on) waited until other processes used under ${FOREIGN_LIMIT} ` +
            `core for 2 s (${guard.waitedS.toFixed(0)} s of waiting in all), and was taken ` +
            `again when they used more while it ran (${guard.repeated} pair${
              guard.repeated === 1 ? "" : "s"
            } taken again). `) +
        (guard.dirty.length
          ? `Pairs kept with other work running: ${guard.dirty.join(", ")}.`
          : "Every pair kept ran with the machine otherwise idle."),
        "",
        ...(turnPairs.length
          ? [
            `- Turns: \`tether exec bench --stream -- cat\`, a ${
              `{"turn":N,"text":"${"x".repeat(40)}"}`.length + 1
            }-byte line written to the client's stdin and timed until it is back on its ` +
            `stdout; ${n} turns after ${warm} unrecorded ones per run, ${runs} run${
              runs === 1 ? "" : "s"
            } per mode over ${turnPairs.map((t) => t.name).join(" and ")}${
              wss
                ? " (wss://: `relay serve --tls-self-signed`, its CA given to client and agent)"
                : ""
            }. p50 and p99 are the median over runs of each run's percentile, the range of the ` +
            "runs in brackets; on / off is the median over pairs of runs of each pair's ratio " +
            "(a pair ran back to back, so what drifts between pairs cancels out), and beside " +
            "it the ratio of the two medians. The target is the issue's: ≤ 10% of turn latency " +
            "(p50); p99, where one scheduling delay in 2000 turns moves a run by 50%, is reported.",
          ]
          : []),
        ...(xfers.length
          ? [
            `- Throughput over ws://: \`sh -c 'tether exec bench -- head -c ${size} /dev/zero | ` +
            `wc -c'\` (the count checked) and \`sh -c 'head -c ${size} /dev/zero | tether exec ` +
            `bench -- sh -c "cat >/dev/null"'\` (the exit code checked), as items 1 and 2 ` +
            "above: wall time of the whole command (so the connection and the handshake are " +
            `included), ${tRuns} run${tRuns === 1 ? "" : "s"} per mode, median; each run's ` +
            "MiB/s in brackets.",
          ]
          : []),
        "",
        table,
        "",
        `Targets met: ${judged.length - missed.length} of ${judged.length}${
          missed.length ? `; missed: ${missed.join("; ")}` : ""
        }.`,
        "",
        ...notes,
        "",
      ].join("\n");
      const out = join(ROOT, "docs", "BENCHMARKS.md");
      await Deno.writeTextFile(out, withSection(await Deno.readTextFile(out), "e2e", md));
      log(`wrote ${out}`);
    }
    return 0;
  } finally {
    for (const w of worlds) await w.dispose().catch(() => {});
    await stopAll();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

let ticks = 0;

/**
 * CPU seconds used so far by the whole machine (user, nice, system, irq, softirq: not idle,
 * iowait or steal), and by this run: this process, every child it has waited for, and the
 * live `servers` with the children they waited for.
 */
async function cpuNow(servers: number[] = []): Promise<{ all: number; own: number }> {
  ticks ||= Number((await output(["getconf", "CLK_TCK"]))?.trim()) || 100;
  const f = ((await output(["cat", "/proc/stat"])) ?? "").split("\n")[0].trim().split(/\s+/)
    .slice(1).map(Number);
  const all = (f[0] + f[1] + f[2] + f[5] + f[6]) / ticks;
  const st = await procStats([Deno.pid, ...servers]);
  return { all, own: st.reduce((a, x) => a + x.cpu + x.childCpu, 0) };
}

/** Above this many cores of other work, a pair of runs is taken again. */
const FOREIGN_LIMIT = 0.1;

/**
 * Keeps other work on the machine out of the comparison: before each pair of runs (off and
 * on) it waits until the machine is idle, and it takes a pair again (up to twice) when other
 * processes used more than FOREIGN_LIMIT cores while it ran. Without `wait`, it only counts.
 */
class Guard {
  repeated = 0;
  /** Pairs kept although other work ran during them (after the retries, or without `wait`). */
  dirty: string[] = [];
  waitedS = 0;

  constructor(
    readonly servers: () => number[],
    readonly wait: boolean,
    readonly maxWaitS: number,
  ) {}

  /** Runs `once` for both modes, in the order that alternates with `r`. */
  async pair<T>(label: string, r: number, once: (m: Mode) => Promise<T>): Promise<Record<Mode, T>> {
    for (let attempt = 1;; attempt++) {
      if (this.wait) await this.quiet();
      const c0 = await cpuNow(this.servers()), t0 = performance.now();
      const got = {} as Record<Mode, T>;
      for (const m of r % 2 ? MODES : [...MODES].reverse()) got[m] = await once(m);
      const c1 = await cpuNow(this.servers());
      const foreign = (c1.all - c0.all - (c1.own - c0.own)) / ((performance.now() - t0) / 1000);
      log(`${label}: other work used ${foreign.toFixed(2)} cores meanwhile`);
      if (foreign <= FOREIGN_LIMIT) return got;
      if (!this.wait || attempt === 3 || this.waitedS >= this.maxWaitS) {
        this.dirty.push(`${label} (${foreign.toFixed(2)} cores)`);
        return got;
      }
      this.repeated++;
      log(`${label}: taking it again`);
    }
  }

  /** Waits until less than FOREIGN_LIMIT cores are busy for 2 s (this run is idle then). */
  private async quiet(): Promise<void> {
    let calm = 0, said = false;
    const t0 = performance.now();
    while (calm < 2 && this.waitedS + (performance.now() - t0) / 1000 < this.maxWaitS) {
      const a = await cpuNow(this.servers()), ta = performance.now();
      await sleep(1000);
      const b = await cpuNow(this.servers());
      const busy = (b.all - a.all - (b.own - a.own)) / ((performance.now() - ta) / 1000);
      calm = busy < FOREIGN_LIMIT ? calm + 1 : 0;
      if (!calm && !said) {
        log(`other work is using ${busy.toFixed(2)} cores: waiting`);
        said = true;
      }
    }
    this.waitedS += (performance.now() - t0) / 1000;
  }
}

/**
 * One `exec -- true` each way (page cache, the agent's first streams), and a check that
 * each mode is what it says: only an end-to-end stream pins the machine's key.
 */
async function warmUp(w: TetherWorld): Promise<void> {
  const pinned = async () => !!(await output(["find", w.home, "-name", "known_machines"]))?.trim();
  for (const m of MODES) {
    const r = await run(w.exec(["true"]), { env: clientEnv(w, m), timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`warm-up exec (e2e ${m}) failed: ${r.stderr.slice(-500)}`);
    if (await pinned() !== (m === "on")) {
      throw new Error(
        `after an exec with e2e ${m}, the machine's key is ${
          m === "on" ? "not pinned: was it end to end?" : "pinned: was it in the clear?"
        }`,
      );
    }
  }
}

if (import.meta.main) Deno.exit(await main());
