/**
 * The tools people already use, through tether and through OpenSSH on loopback (issue 16):
 *
 *  1. `rsync -a` of one 1 GiB file to the machine: `-e 'tether ssh'` against `-e ssh`.
 *  2. `rsync -a` of 10,000 small files (100 directories of 100 files of 1 KiB).
 *  3. `tether forward` against `ssh -L`: 1 GiB read through the forwarded port from a
 *     server on the machine's side that writes it and closes.
 *
 * Runs alternate tether and OpenSSH; each figure is the median of the runs.
 *
 *   ./scripts/deno task bench:tools [--quick] [--bundle dist/tether.js] [--no-write]
 *
 * A full run writes its section of docs/BENCHMARKS.md (main.ts keeps it when it rewrites).
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Sshd } from "./openssh.ts";
import { freePort, listening, log, median, MiB, output, Proc, ROOT, run, stopAll } from "./lib.ts";
import { withSection } from "./report.ts";
import { bundleUnderTest, TetherWorld } from "./tether.ts";

const GiB = 1024 * MiB;

/** A shell word. */
const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** A server that writes `size` zero bytes to each connection, then closes it. */
const SOURCE = `
import socket, sys
size = int(sys.argv[2]); chunk = bytes(1 << 20)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept(); left = size
    try:
        while left > 0:
            n = c.send(chunk[:min(left, len(chunk))]); left -= n
    except OSError:
        pass  # a reader that left (the readiness probe)
    c.close()
`;

/** Reads one connection to its end; prints the byte count. */
const SINK = `
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); n = 0; buf = bytearray(1 << 20)
while True:
    r = c.recv_into(buf)
    if not r: break
    n += r
print(n)
`;

async function timed(cmd: string, env: Record<string, string>, cwd: string): Promise<number> {
  const r = await run(["sh", "-c", cmd], { env, cwd, timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`${cmd}: exit ${r.code}: ${r.stderr.slice(-500)}`);
  return r.ms;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      bundle: { type: "string" },
      "no-write": { type: "boolean", default: false },
      /** For trying a change: only these figures (big, small, forward); writes nothing. */
      only: { type: "string" },
    },
  });
  const quick = values.quick!;
  const only = values.only ? new Set(values.only.split(",")) : undefined;
  const want = (k: string) => !only || only.has(k);
  const runs = quick ? 1 : 3;
  const bigSize = quick ? 128 * MiB : GiB;
  const files = quick ? 1000 : 10_000;
  const command = ["./scripts/deno", "task", "bench:tools", ...Deno.args].join(" ");
  const load0 = (await output(["cat", "/proc/loadavg"]))?.split(" ").slice(0, 3).join(" ");
  const tmp = await Deno.makeTempDir({ prefix: "tether-bench-tools-" });
  let world: TetherWorld | undefined;
  let sshd: Sshd | undefined;
  try {
    const bundle = await bundleUnderTest(values.bundle, tmp);
    const s = await Sshd.start(tmp);
    if (!(s instanceof Sshd)) throw new Error(s.skipped);
    sshd = s;
    world = await TetherWorld.create(bundle, tmp, true);
    const w = world;
    // `tether ssh` as users install it: a one-line script on PATH.
    const bin = join(tmp, "bin");
    await Deno.mkdir(bin);
    await Deno.writeTextFile(
      join(bin, "tether-ssh"),
      `#!/bin/sh\nexec ${w.argv(["ssh"]).map(q).join(" ")} "$@"\n`,
    );
    await Deno.chmod(join(bin, "tether-ssh"), 0o755);
    const env = { ...w.env(), PATH: `${bin}:${Deno.env.get("PATH")}` };
    // ssh as the bench's other items run it (throwaway key, no config), minus host and command.
    const sshArgv = sshd.argv("").slice(0, -2);
    const sshCmd = sshArgv.map(q).join(" ");

    const src = join(tmp, "src");
    await Deno.mkdir(join(src, "small"), { recursive: true });
    await run(["sh", "-c", `head -c ${bigSize} /dev/urandom > ${q(join(src, "big.bin"))}`], {
      timeoutMs: 300_000,
    });
    for (let d = 0; d < files / 100; d++) {
      const dir = join(src, "small", `d${d}`);
      await Deno.mkdir(dir);
      const kib = new Uint8Array(1024);
      for (let f = 0; f < 100; f++) {
        crypto.getRandomValues(kib);
        await Deno.writeFile(join(dir, `f${f}`), kib);
      }
    }
    const dst = join(tmp, "dst");
    await Deno.mkdir(dst);
    let n = 0;
    const fresh = () => join(dst, `r${++n}`);
    const rsyncBy = {
      tether: (from: string) => `rsync -a -e tether-ssh ${q(from)} bench:${q(fresh())}/`,
      ssh: (from: string) => `rsync -a -e ${q(sshCmd)} ${q(from)} 127.0.0.1:${q(fresh())}/`,
    };
    const results: Record<string, { tether: number[]; ssh: number[] }> = {
      big: { tether: [], ssh: [] },
      small: { tether: [], ssh: [] },
      forward: { tether: [], ssh: [] },
    };
    for (let r = 1; r <= runs; r++) {
      for (const who of want("big") ? ["tether", "ssh"] as const : []) {
        const ms = await timed(rsyncBy[who](join(src, "big.bin")), env, tmp);
        results.big[who].push(ms);
        log(`rsync big via ${who} run ${r}/${runs}: ${(ms / 1000).toFixed(2)} s`);
        await Deno.remove(join(dst, `r${n}`), { recursive: true });
      }
      for (const who of want("small") ? ["tether", "ssh"] as const : []) {
        const ms = await timed(rsyncBy[who](join(src, "small") + "/"), env, tmp);
        results.small[who].push(ms);
        log(`rsync ${files} files via ${who} run ${r}/${runs}: ${(ms / 1000).toFixed(2)} s`);
        await Deno.remove(join(dst, `r${n}`), { recursive: true });
      }
    }

    // Forwarding: a source on the machine's side, read through each forward.
    const srcPort = freePort();
    const source = new Proc(["python3", "-c", SOURCE, String(srcPort), String(bigSize)]);
    await listening(srcPort);
    const fwd = new Proc(w.argv(["forward", "bench", `0:127.0.0.1:${srcPort}`, "--json"]), {
      env: w.env(),
    });
    const m = await fwd.waitFor(/"port":(\d+)/, "stdout", 30_000);
    const tetherPort = Number(m[1]);
    const sshPort = freePort();
    const sshL = new Proc([
      ...sshArgv,
      "-N",
      "-o",
      "ExitOnForwardFailure=yes",
      "-L",
      `${sshPort}:127.0.0.1:${srcPort}`,
      "127.0.0.1",
    ]);
    await listening(sshPort);
    const ports = { tether: tetherPort, ssh: sshPort };
    for (let r = 1; r <= runs; r++) {
      for (const who of want("forward") ? ["tether", "ssh"] as const : []) {
        const res = await run(["python3", "-c", SINK, String(ports[who])], { timeoutMs: 600_000 });
        if (Number(res.stdout.trim()) !== bigSize) {
          throw new Error(
            `forward via ${who}: ${res.stdout.trim()} bytes ${res.stderr}` +
              (who === "tether" ? fwd.stderr : sshL.stderr),
          );
        }
        results.forward[who].push(res.ms);
        log(
          `forward via ${who} run ${r}/${runs}: ${
            (bigSize / MiB / (res.ms / 1000)).toFixed(0)
          } MiB/s`,
        );
      }
    }
    await Promise.all([fwd.stop(), sshL.stop(), source.stop()]);

    const secs = (xs: number[]) => `${(median(xs) / 1000).toFixed(2)} s`;
    const rate = (xs: number[]) => `${(bigSize / MiB / (median(xs) / 1000)).toFixed(0)} MiB/s`;
    const ratio = (t: number[], s: number[]) => (median(t) / median(s)).toFixed(2) + "×";
    const all = (xs: number[]) => xs.map((x) => (x / 1000).toFixed(2)).join(", ");
    const sizeText = bigSize >= GiB ? `${bigSize / GiB} GiB` : `${bigSize / MiB} MiB`;
    const row = (figure: string, k: string, fmt: (xs: number[]) => string, better: string) => {
      const t = results[k].tether, s = results[k].ssh;
      const met = median(t) <= median(s) ? "met" : "missed";
      return `| ${figure} | ${fmt(t)} | ${fmt(s)} | ${ratio(t, s)} (${better}) | ${met} |`;
    };
    const md = [
      "## The tools people already use (issue 16)",
      "",
      `\`${command}\`, ${new Date().toISOString().slice(0, 16)} UTC; load average ${load0} ` +
      `before the run; ${sshd.version}, ${sshd.algorithms}. The same relay and agent as above ` +
      "on 127.0.0.1; OpenSSH's sshd on 127.0.0.1. Each figure is the median of " +
      `${runs} runs, tether and OpenSSH alternating.`,
      "",
      "| figure | tether | OpenSSH | time tether/OpenSSH | at least as fast |",
      "| --- | ---: | ---: | ---: | --- |",
      row(
        `rsync -a of one ${sizeText} file (random data) to the machine`,
        "big",
        secs,
        "lower is better",
      ),
      row(
        `rsync -a of ${files.toLocaleString("en")} files of 1 KiB`,
        "small",
        secs,
        "lower is better",
      ),
      row(
        `${sizeText} through \`tether forward\` / \`ssh -L\``,
        "forward",
        rate,
        "time; lower is better",
      ),
      "",
      `- rsync: \`rsync -a -e tether-ssh SRC bench:DST/\` (tether-ssh: \`exec tether ssh "$@"\`) ` +
      "against `rsync -a -e 'ssh -F /dev/null -i KEY -p PORT …' SRC 127.0.0.1:DST/`, each into a " +
      `new directory. Runs (s): big tether ${all(results.big.tether)}, ssh ${
        all(results.big.ssh)
      }; ` +
      `small tether ${all(results.small.tether)}, ssh ${all(results.small.ssh)}.`,
      `- forward: a Python server on the machine's side writes ${sizeText} to each connection and ` +
      "closes it; a Python reader connects to the local port of `tether forward bench " +
      "0:127.0.0.1:PORT` or of `ssh -N -L PORT:127.0.0.1:PORT 127.0.0.1` and reads to the end. " +
      `Runs (s): tether ${all(results.forward.tether)}, ssh ${all(results.forward.ssh)}.`,
      "",
    ].join("\n");
    console.log(md);
    if (!quick && !only && !values["no-write"]) {
      const out = join(ROOT, "docs", "BENCHMARKS.md");
      await Deno.writeTextFile(out, withSection(await Deno.readTextFile(out), "tools", md));
      log(`wrote ${out}`);
    }
    return 0;
  } finally {
    await world?.dispose().catch(() => {});
    await sshd?.stop().catch(() => {});
    await stopAll();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

Deno.exit(await main());
