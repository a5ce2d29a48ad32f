/**
 * Holds many idle agent connections in one process, speaking the real
 * protocol through the project's own dial() and Conn (hello with agent info,
 * enrollment, heartbeats both ways, probing as an agent with nothing open does). Used by the
 * relay-memory benchmark.
 *
 *   TETHER_AGENT_KEY=… deno run -P scripts/bench/agents_load.ts \
 *     --relay ws://127.0.0.1:PORT --n 1000 [--warmup 10] [--concurrency 32] [--prefix load-]
 *
 * Protocol on stdout/stdin, one JSON line per step:
 *   dials `--warmup` agents, prints {"warm":W,…}, waits for a line on stdin;
 *   dials `--n` more, prints {"ready":N,"failed":F,"ms":T,…};
 *   on stdin EOF (or SIGTERM) prints {"closed_while_idle":C} and exits.
 */
import { parseArgs } from "node:util";
import type { Conn } from "../../src/protocol/conn.ts";
import { dial } from "../../src/protocol/dial.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    relay: { type: "string" },
    n: { type: "string", default: "1000" },
    warmup: { type: "string", default: "0" },
    concurrency: { type: "string", default: "32" },
    prefix: { type: "string", default: "load-" },
  },
});
const relay = values.relay;
const key = Deno.env.get("TETHER_AGENT_KEY");
if (!relay || !key) {
  console.error("usage: TETHER_AGENT_KEY=… agents_load.ts --relay URL --n N [--warmup W]");
  Deno.exit(2);
}
const n = Number(values.n);
const warmup = Number(values.warmup);
const concurrency = Math.max(1, Number(values.concurrency));
const prefix = values.prefix!;

const conns: Conn[] = [];
let closed = 0;
let idle = false;
let nextIndex = 0;
let firstError: string | undefined;

async function dialOne(i: number): Promise<boolean> {
  try {
    const { conn, welcome } = await dial({
      relay: relay!,
      key: key!,
      caFile: Deno.env.get("TETHER_CA_FILE"),
      role: "agent",
      agent: {
        name: `${prefix}${i}`,
        hostname: `${prefix}${i}`,
        labels: { bench: "idle" },
        os: Deno.build.os,
        arch: Deno.build.arch,
      },
      timeoutMs: 30_000,
      // What is measured is the relay's side, which has keepalive from its listener; here each
      // dial would search this process's 20,000 descriptors for its socket.
      keepalive: false,
    });
    // As agent.ts does: nothing is ever open on these links.
    if (welcome.idle_heartbeat_ms) {
      conn.probeIdleAfter(welcome.idle_heartbeat_ms + welcome.heartbeat_ms, () => true);
    }
    conn.start({
      onControl() {},
      onFrame() {},
      onClose() {
        if (idle) closed++;
      },
    });
    conns.push(conn);
    return true;
  } catch (e) {
    firstError ??= (e as Error).message;
    return false;
  }
}

async function dialMany(count: number): Promise<{ ok: number; failed: number; ms: number }> {
  const t0 = performance.now();
  let ok = 0, failed = 0, left = count;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (left > 0) {
        left--;
        if (await dialOne(nextIndex++)) ok++;
        else failed++;
      }
    }),
  );
  return { ok, failed, ms: Math.round(performance.now() - t0) };
}

function say(obj: Record<string, unknown>): void {
  console.log(JSON.stringify(obj));
}

const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
async function nextLine(): Promise<boolean> {
  for (;;) {
    const { value, done } = await lines.read();
    if (done) return false;
    if (value.includes("\n")) return true;
  }
}

function finish(): never {
  say({ closed_while_idle: closed, open: conns.filter((c) => c.isOpen).length });
  idle = false;
  for (const c of conns) c.close(1000, "load done");
  Deno.exit(0);
}
Deno.addSignalListener("SIGTERM", finish);

const w = await dialMany(warmup);
say({ warm: w.ok, failed: w.failed, ms: w.ms, error: firstError });
if (!(await nextLine())) finish();
const r = await dialMany(n);
say({ ready: r.ok, failed: r.failed, ms: r.ms, error: firstError });
idle = true;
// Hold the connections until stdin ends.
while (await nextLine()) { /* ignore further lines */ }
finish();
