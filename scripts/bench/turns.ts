/**
 * Turn latency against the runtime's floor (issue 18): `exec --stream` line round trips
 * through tether over ws:// and over wss:// (a private CA made for the run), through the
 * minimal Deno three-process chain (chain.ts), and through OpenSSH, interleaved run by run,
 * each run in a new client process. Reports p50 and p99 (median over runs, and their spread)
 * and CPU per turn by process.
 *
 *   ./scripts/deno task bench:turns [--quick] [--runs N] [--turns N] [--bundle F]
 *        [--single-threaded client,relay,agent,chain] [--only ws,wss,chain,ssh] [--write]
 *
 * `--single-threaded` runs those roles with `--v8-flags=--single-threaded`. `--write` puts
 * the table in docs/BENCHMARKS.md (its "turns" section), with the command that made it.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  Chain,
  interleavedTurns,
  sshPath,
  tetherPath,
  type TurnPath,
  type Turns,
} from "./interactive.ts";
import { awkArgv, fmtMs, log, median, output, percentile, ROOT, stopAll } from "./lib.ts";
import { Sshd } from "./openssh.ts";
import { bundleUnderTest, TetherWorld } from "./tether.ts";
import { withSection } from "./report.ts";

const ST = "--v8-flags=--single-threaded";

export interface Variant {
  name: string;
  runs: Turns[];
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      turns: { type: "string" },
      bundle: { type: "string" },
      "single-threaded": { type: "string", default: "" },
      only: { type: "string", default: "ws,wss,chain,ssh" },
      write: { type: "boolean", default: false },
    },
  });
  const quick = values.quick!;
  const runs = Number(values.runs ?? (quick ? 2 : 5));
  const n = Number(values.turns ?? (quick ? 300 : 2000));
  const warm = 50;
  const st = new Set(values["single-threaded"]!.split(",").filter(Boolean));
  const flags = (role: string) => (st.has(role) ? [ST] : []);
  const only = new Set(values.only!.split(","));
  const tmp = await Deno.makeTempDir({ prefix: "tether-bench-turns-" });
  const awk = await awkArgv();
  const load0 = (await output(["cat", "/proc/loadavg"]))?.split(" ").slice(0, 3).join(" ");
  const worlds: TetherWorld[] = [];
  let sshd: Sshd | undefined;
  let chain: Chain | undefined;
  try {
    const bundle = await bundleUnderTest(values.bundle, tmp);
    const make = async (tls: boolean) => {
      const w = await TetherWorld.create(bundle, tmp, false, flags("relay"), {}, tls);
      worlds.push(w);
      await w.startAgent(flags("agent"));
      return w;
    };
    const paths: TurnPath[] = [];
    if (only.has("ws")) {
      paths.push(tetherPath("tether ws://", await make(false), awk, flags("client")));
    }
    if (only.has("wss")) {
      paths.push(tetherPath("tether wss://", await make(true), awk, flags("client")));
    }
    if (only.has("chain")) {
      chain = await Chain.start(awk, flags("chain"));
      paths.push(chain.path());
    }
    if (only.has("ssh")) {
      const s = await Sshd.start(tmp);
      if (!(s instanceof Sshd)) throw new Error(s.skipped);
      sshd = s;
      paths.push(sshPath(s, awk));
    }
    const byPath = await interleavedTurns(paths, runs, n, warm);
    const variants: Variant[] = paths.map((p) => ({ name: p.name, runs: byPath.get(p.name)! }));
    const table = report(variants, { n, runs, st: [...st] });
    console.log(table);
    if (values.write) {
      const command = ["./scripts/deno", "task", "bench:turns", ...Deno.args].join(" ");
      const md = [
        "## Turn latency against the runtime's floor (issue 18)",
        "",
        `\`${command}\`, ${new Date().toISOString().slice(0, 16)} UTC; load average ${load0} ` +
        "before the run. `exec --stream` line round trips to awk (as item 3) through tether " +
        "over ws:// and over wss:// (`relay serve --tls-self-signed`, its CA given to client " +
        "and agent), through the minimal Deno chain (scripts/bench/chain.ts: three processes " +
        "copying bytes with plain read/write loops, TCP_NODELAY, no protocol), and through " +
        "OpenSSH on 127.0.0.1. Each run is a new client process; runs interleave the paths; " +
        "p50 and p99 are the median over runs, with the spread of the runs in brackets; " +
        "CPU is utime+stime per recorded turn by process (10 ms ticks).",
        "",
        table,
        "",
      ].join("\n");
      const out = join(ROOT, "docs", "BENCHMARKS.md");
      await Deno.writeTextFile(out, withSection(await Deno.readTextFile(out), "turns", md));
      log(`wrote ${out}`);
    }
    return 0;
  } finally {
    for (const w of worlds) await w.dispose().catch(() => {});
    await chain?.stop().catch(() => {});
    await sshd?.stop().catch(() => {});
    await stopAll();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

/** A markdown table: each variant's p50 and p99 (median over runs, spread), CPU per turn. */
export function report(
  variants: Variant[],
  opts: { n: number; runs: number; st: string[] },
): string {
  const ssh = variants.find((v) => v.name === "OpenSSH");
  const chain = variants.find((v) => v.name.startsWith("Deno chain"));
  const at = (v: Variant, p: number) => v.runs.map((r) => percentile(r.times, p));
  const spread = (xs: number[]) => `${fmtMs(Math.min(...xs))}–${fmtMs(Math.max(...xs))}`;
  const rel = (v: Variant, base: Variant | undefined, p: number) =>
    base ? `${(median(at(v, p)) / median(at(base, p))).toFixed(2)}×` : "–";
  const cpu = (v: Variant) =>
    v.runs[0].cpu.map((c, i) => `${c.label} ${median(v.runs.map((r) => r.cpu[i].us)).toFixed(0)}`)
      .join(", ");
  const lines = [
    `${opts.n} turns × ${opts.runs} runs, interleaved; single-threaded V8: ${
      opts.st.length ? opts.st.join(", ") : "none"
    }`,
    "",
    "| path | p50 (spread) | p99 (spread) | p50 / ssh | p99 / ssh | p50 / chain | CPU µs per turn |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  for (const v of variants) {
    const p50 = `${fmtMs(median(at(v, 50)))} (${spread(at(v, 50))})`;
    const p99 = `${fmtMs(median(at(v, 99)))} (${spread(at(v, 99))})`;
    lines.push(
      `| ${v.name} | ${p50} | ${p99} | ${rel(v, ssh, 50)} | ${rel(v, ssh, 99)} | ` +
        `${rel(v, chain, 50)} | ${cpu(v)} |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) Deno.exit(await main());
