/**
 * The benchmark suite of issue 8: tether (relay + agent on 127.0.0.1)
 * against OpenSSH (an sshd this script starts on a free loopback port), each
 * figure taken in the same run for both.
 *
 *   ./scripts/deno task bench            full run (~17 min), writes docs/BENCHMARKS.md
 *   ./scripts/deno task bench --quick    small sizes, about a minute, writes nothing
 *
 * Options: --quick, --only 1,3,6 (items), --out FILE (write the report there;
 * `--out -` or --no-write for none), --no-ssh, --bundle FILE (a prebuilt
 * tether.js instead of bundling the current source), --json (rows on stdout).
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { attachReady, execTrue, keystrokeEcho, turnLatency } from "./interactive.ts";
import { idleAgents } from "./idle.ts";
import { awkArgv, initClock, log, ROOT, stopAll } from "./lib.ts";
import { INSTALL_HINT, Sshd } from "./openssh.ts";
import {
  type Ctx,
  errorRows,
  type ItemResult,
  keptSections,
  loadAverage,
  type Machine,
  machineInfo,
  markdown,
  table,
} from "./report.ts";
import { bundleUnderTest, TetherWorld } from "./tether.ts";
import { slowReader, stdinThroughput, stdoutThroughput } from "./transfer.ts";

const ITEMS: { n: number; name: string; fn: (ctx: Ctx) => Promise<ItemResult> }[] = [
  { n: 1, name: "stdout throughput", fn: stdoutThroughput },
  { n: 2, name: "stdin throughput", fn: stdinThroughput },
  { n: 3, name: "turn latency", fn: turnLatency },
  { n: 4, name: "exec -- true", fn: execTrue },
  { n: 5, name: "connect attach-to-ready", fn: attachReady },
  { n: 6, name: "relay memory with idle agents", fn: idleAgents },
  { n: 7, name: "slow reader", fn: slowReader },
  { n: 8, name: "keystroke to echo", fn: keystrokeEcho },
];

const USAGE = `usage: deno task bench [--quick] [--only 1,2,…] [--out FILE | --no-write] [--no-ssh]
                        [--bundle FILE] [--json]
items: ${ITEMS.map((i) => `${i.n} ${i.name}`).join("; ")}`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      only: { type: "string" },
      out: { type: "string" },
      "no-write": { type: "boolean", default: false },
      "no-ssh": { type: "boolean", default: false },
      bundle: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const quick = values.quick!;
  const only = values.only ? new Set(values.only.split(",").map((s) => Number(s.trim()))) : null;
  if (only && [...only].some((n) => !ITEMS.some((i) => i.n === n))) {
    console.error(USAGE);
    return 2;
  }
  const out = values["no-write"] || values.out === "-"
    ? undefined
    : values.out ?? (quick || only ? undefined : join(ROOT, "docs", "BENCHMARKS.md"));
  const command = ["./scripts/deno", "task", "bench", ...Deno.args].join(" ");

  const started = performance.now();
  const loadAtStart = await loadAverage();
  const tmp = await Deno.makeTempDir({ prefix: "tether-bench-" });
  let world: TetherWorld | undefined;
  let tlsWorld: TetherWorld | undefined;
  let sshd: Sshd | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    cleaning ??= (async () => {
      await world?.dispose().catch(() => {});
      await tlsWorld?.dispose().catch(() => {});
      await sshd?.stop().catch(() => {});
      await stopAll();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    })();
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    log("interrupted; cleaning up");
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  try {
    await initClock();
    const info = await machineInfo(command);
    const bundle = await bundleUnderTest(values.bundle, tmp);

    let sshSkipped: string | undefined;
    if (values["no-ssh"]) {
      sshSkipped = "OpenSSH comparison skipped (--no-ssh)";
    } else {
      const s = await Sshd.start(tmp);
      if (s instanceof Sshd) {
        sshd = s;
        info.ssh = s.version;
        info.sshAlgorithms = s.algorithms;
        log(`sshd on 127.0.0.1:${s.port} (${s.algorithms})`);
      } else {
        sshSkipped = s.skipped;
      }
    }
    if (sshSkipped) {
      log(sshSkipped);
      info.ssh = sshSkipped.includes("not found") ? `not installed: ${INSTALL_HINT}` : sshSkipped;
      info.sshAlgorithms = "—";
    }

    log("starting a relay and an agent, and another pair over wss://");
    world = await TetherWorld.create(bundle, tmp, true);
    tlsWorld = await TetherWorld.create(bundle, tmp, true, [], {}, true);
    const ctx: Ctx = {
      quick,
      tmp,
      bundle,
      world,
      tlsWorld,
      sshd,
      sshSkipped,
      awk: await awkArgv(),
    };

    const results: ItemResult[] = [];
    for (const item of ITEMS) {
      if (only && !only.has(item.n)) continue;
      if (interrupted) break;
      log(`${item.n}. ${item.name}`);
      const t0 = performance.now();
      try {
        results.push(await item.fn(ctx));
      } catch (e) {
        log(`${item.n}. ${item.name} failed: ${(e as Error).stack ?? e}`);
        results.push(errorRows(String(item.n), item.name, e));
      }
      log(`${item.n}. done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }

    const rows = results.flatMap((r) => r.rows);
    const details = results.flatMap((r) => r.details);
    const machine: Machine = {
      ...info,
      durationS: (performance.now() - started) / 1000,
      load: `${loadAtStart} before the run, ${await loadAverage()} after it`,
    };
    if (values.json) {
      console.log(JSON.stringify({ machine, quick, rows }, null, 2));
    } else {
      console.log(table(rows));
    }
    if (out) {
      // Sections other benchmark scripts wrote into the same file (fleet.ts) are kept.
      const before = await Deno.readTextFile(out).catch(() => "");
      await Deno.writeTextFile(out, markdown(machine, rows, details, quick) + keptSections(before));
      log(`wrote ${out}`);
    }
    log(`finished in ${machine.durationS.toFixed(1)} s`);
    return rows.some((r) => r.verdict === "error") ? 1 : 0;
  } finally {
    await cleanup();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

Deno.exit(await main());
