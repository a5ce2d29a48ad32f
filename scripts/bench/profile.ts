/**
 * Where the time goes: runs one benchmark scenario with V8's CPU profiler on
 * the relay, the agent and the client (`deno run --cpu-prof`), then prints
 * the functions with the most self time in each, and their CPU totals.
 *
 *   deno run -P scripts/bench/profile.ts turns|stdout|stdin|slow [--size MiB] [--keep DIR]
 *        [--bundle F] [--e2e off] [--tls]
 *
 * --no-profile runs the scenario without the profiler and prints only the
 * time and the relay's and agent's CPU during it. --bundle runs a prebuilt
 * tether.js instead of bundling the current source; --e2e off runs the client
 * with TETHER_E2E=off (its streams in the clear); --tls serves wss:// (a private CA made for
 * the run, as the benchmark's wss:// rows).
 *
 * The .cpuprofile files open in Chrome DevTools (Performance → Load profile);
 * pass --keep DIR to keep them.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { fmtBytes, MiB, Proc, procStats, readWithin, run, sleep, stopAll } from "./lib.ts";
import { bundleUnderTest, TetherWorld } from "./tether.ts";

interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
  }[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Self time per function (ms), largest first. */
export function summarize(p: CpuProfile): { name: string; ms: number }[] {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]);
    if (!n) continue;
    const f = n.callFrame;
    const where = f.url ? ` ${f.url.replace(/^.*\//, "")}:${f.lineNumber + 1}` : "";
    const key = `${f.functionName || "(anonymous)"}${where}`;
    self.set(key, (self.get(key) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
  }
  return [...self.entries()].map(([name, ms]) => ({ name, ms })).sort((a, b) => b.ms - a.ms);
}

function report(label: string, file: string, top: number): void {
  const p = JSON.parse(Deno.readTextFileSync(file)) as CpuProfile;
  const rows = summarize(p);
  const total = rows.reduce((a, r) => a + r.ms, 0);
  const busy = rows.filter((r) => !r.name.startsWith("(idle)")).reduce((a, r) => a + r.ms, 0);
  console.log(
    `\n== ${label}: ${(total / 1000).toFixed(2)} s profiled, ${(busy / 1000).toFixed(2)} s ` +
      `not idle (main thread only)`,
  );
  for (const r of rows.filter((r) => !r.name.startsWith("(idle)")).slice(0, top)) {
    console.log(
      `${r.ms.toFixed(1).padStart(9)} ms  ${
        (r.ms / busy * 100).toFixed(1).padStart(5)
      }%  ${r.name}`,
    );
  }
}

async function main() {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      size: { type: "string" },
      turns: { type: "string", default: "2000" },
      keep: { type: "string" },
      top: { type: "string", default: "15" },
      "no-profile": { type: "boolean", default: false },
      bundle: { type: "string" },
      e2e: { type: "string", default: "on" },
      tls: { type: "boolean", default: false },
    },
  });
  const scenario = positionals[0] ?? "turns";
  if (!["turns", "stdout", "stdin", "slow"].includes(scenario)) {
    console.error(
      "usage: profile.ts turns|stdout|stdin|slow [--size MiB] [--keep DIR] [--bundle F] " +
        "[--e2e off] [--tls]",
    );
    Deno.exit(2);
  }
  const tmp = await Deno.makeTempDir({ prefix: "tether-prof-" });
  const dir = values.keep ?? join(tmp, "prof");
  await Deno.mkdir(dir, { recursive: true });
  const profile = !values["no-profile"];
  const flag = (name: string) =>
    profile ? [`--cpu-prof`, `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}`] : [];
  let w: TetherWorld | undefined;
  try {
    const bundle = await bundleUnderTest(values.bundle, tmp);
    w = await createProfiled(
      bundle,
      tmp,
      flag("relay.cpuprofile"),
      flag("agent.cpuprofile"),
      values.tls,
    );
    const clientFlags = flag("client.cpuprofile");
    const env = values.e2e === "off" ? { ...w.env(), TETHER_E2E: "off" } : w.env();
    const size = Number(values.size ?? (scenario === "slow" ? 64 : 512)) * MiB;
    const cpu0 = await procStats([w.relay!.pid, w.agent!.pid]);
    const t0 = performance.now();
    if (scenario === "turns") {
      const awk = ["awk", "-W", "interactive", "{print; fflush()}"];
      const p = new Proc(w.exec(awk, ["--stream"], clientFlags), {
        env,
        stdin: "piped",
        stdout: "raw",
      });
      const reader = p.child.stdout.getReader();
      const d = new TextDecoder();
      const n = Number(values.turns);
      let buf = "";
      for (let i = 0; i < n; i++) {
        await p.write(`{"turn":${i},"text":"${"x".repeat(40)}"}\n`);
        while (!buf.includes("\n")) {
          const { value, done } = await readWithin(reader, 10_000, "turn");
          if (done) throw new Error("echo ended");
          buf += d.decode(value, { stream: true });
        }
        buf = buf.slice(buf.indexOf("\n") + 1);
      }
      reader.releaseLock();
      await p.closeStdin();
      await p.wait(20_000);
      console.log(`${n} turns in ${(performance.now() - t0).toFixed(0)} ms`);
    } else if (scenario === "stdout" || scenario === "stdin") {
      const argv = scenario === "stdout"
        ? [
          "sh",
          "-c",
          '"$@" >/dev/null',
          "sh",
          ...w.exec(["head", "-c", String(size), "/dev/zero"], [], clientFlags),
        ]
        : [
          "sh",
          "-c",
          `head -c ${size} /dev/zero | "$@"`,
          "sh",
          ...w.exec(["sh", "-c", "cat >/dev/null"], [], clientFlags),
        ];
      const r = await run(argv, { env, timeoutMs: 300_000 });
      console.log(
        `${fmtBytes(size)} ${scenario} in ${r.ms.toFixed(0)} ms (exit ${r.code}) = ${
          (size / MiB / (r.ms / 1000)).toFixed(0)
        } MiB/s`,
      );
    } else {
      const p = new Proc(w.exec(["head", "-c", String(size), "/dev/zero"], [], clientFlags), {
        env,
        stdout: "raw",
      });
      const reader = p.child.stdout.getReader();
      let got = 0;
      for (;;) {
        const { value, done } = await readWithin(reader, 30_000, "slow");
        if (done) break;
        got += value.length;
        const ahead = got / (10 * MiB) * 1000 - (performance.now() - t0);
        if (ahead > 0) await sleep(ahead);
      }
      reader.releaseLock();
      await p.wait(20_000);
      const st = await procStats([w.relay!.pid, w.agent!.pid]);
      console.log(
        `slow read of ${fmtBytes(got)}; RSS now ${st.map((s) => fmtBytes(s.rss)).join(", ")}`,
      );
    }
    const cpu = await procStats([w.relay!.pid, w.agent!.pid]);
    console.log(
      `CPU during the scenario: relay ${(cpu[0]?.cpu - cpu0[0]?.cpu).toFixed(2)} s, agent ${
        (cpu[1]?.cpu - cpu0[1]?.cpu).toFixed(2)
      } s (whole process, all threads)`,
    );
  } finally {
    // A graceful stop (SIGTERM) lets each Deno write its profile.
    await w?.dispose();
    await stopAll();
  }
  const top = Number(values.top);
  if (!profile) return;
  for (const name of ["client", "relay", "agent"]) {
    const f = join(dir, `${name}.cpuprofile`);
    try {
      report(name, f, top);
    } catch (e) {
      console.log(`\n== ${name}: no profile (${(e as Error).message})`);
    }
  }
  if (values.keep) console.log(`\nprofiles kept in ${dir}`);
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
}

/** A world whose relay and agent each run with their own profiler flags. */
async function createProfiled(
  bundle: string,
  tmp: string,
  relayFlags: string[],
  agentFlags: string[],
  tls: boolean,
): Promise<TetherWorld> {
  // The relay gets relayFlags through TetherWorld; the agent is started with its own.
  const w = await TetherWorld.create(bundle, tmp, false, relayFlags, {}, tls);
  await w.startAgent(agentFlags);
  return w;
}

if (import.meta.main) await main();
