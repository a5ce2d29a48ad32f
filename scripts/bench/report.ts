/** Result rows, the context every benchmark gets, and the Markdown report. */
import { fmtBytes, output, ROOT } from "./lib.ts";
import type { Sshd } from "./openssh.ts";
import type { TetherWorld } from "./tether.ts";

export interface Ctx {
  quick: boolean;
  /** Parent of every temp dir this run makes. */
  tmp: string;
  /** The CLI bundle under test. */
  bundle: string;
  /** A relay and an agent `bench`, shared by items 1–5 and 8. */
  world: TetherWorld;
  /** The same over wss:// (`relay serve --tls-self-signed`), for items 1–3 and 8. */
  tlsWorld?: TetherWorld;
  sshd?: Sshd;
  /** Why there is no OpenSSH comparison, when there is none. */
  sshSkipped?: string;
  /** argv of the line echo for turn latency (same for both). */
  awk: string[];
}

export type Verdict = "met" | "missed" | "n/a" | "skipped" | "error";

export interface Row {
  /** Item number and sub-figure, e.g. "3 p50". */
  key: string;
  figure: string;
  tether: string;
  ssh: string;
  /** tether/OpenSSH, formatted. */
  ratio: string;
  target: string;
  verdict: Verdict;
  /** Raw numbers for --json. */
  raw?: Record<string, unknown>;
}

export interface ItemResult {
  rows: Row[];
  /** Lines for the details section (how it was measured, every run). */
  details: string[];
}

/** tether/OpenSSH as "1.23×", or "—" when either side is missing. */
export function ratio(t: number | undefined, s: number | undefined): string {
  if (t === undefined || s === undefined || !Number.isFinite(t) || !Number.isFinite(s) || s === 0) {
    return "—";
  }
  const r = t / s;
  return `${r >= 10 ? r.toFixed(1) : r.toFixed(2)}×`;
}

/**
 * The median of per-run ratios t[i] / s[i], for runs taken in pairs (interleaved, each pair
 * back to back): on this VM the machine's speed drifts by tens of percent within minutes,
 * which the ratio of two medians takes for a difference between the two.
 */
export function pairedRatio(t: number[], s: number[]): number | undefined {
  const n = Math.min(t.length, s.length);
  if (n === 0) return undefined;
  const rs = Array.from({ length: n }, (_, i) => t[i] / s[i]).sort((a, b) => a - b);
  return n % 2 ? rs[(n - 1) / 2] : (rs[n / 2 - 1] + rs[n / 2]) / 2;
}

export function verdict(ok: boolean | undefined): Verdict {
  return ok === undefined ? "n/a" : ok ? "met" : "missed";
}

export function errorRows(key: string, figure: string, e: unknown): ItemResult {
  const msg = (e as Error)?.message?.split("\n")[0] ?? String(e);
  return {
    rows: [{
      key,
      figure,
      tether: `error: ${msg}`,
      ssh: "—",
      ratio: "—",
      target: "",
      verdict: "error",
    }],
    details: [`Item ${key} failed: ${(e as Error)?.stack ?? e}`],
  };
}

function cell(s: string): string {
  return s.replaceAll("|", "\\|").replaceAll("\n", " ");
}

export function table(rows: Row[]): string {
  const head = "| # | figure | tether | OpenSSH | tether/OpenSSH | target | status |\n" +
    "| --- | --- | ---: | ---: | ---: | --- | --- |\n";
  return head +
    rows.map((r) =>
      `| ${cell(r.key)} | ${cell(r.figure)} | ${cell(r.tether)} | ${cell(r.ssh)} | ${
        cell(r.ratio)
      } | ${cell(r.target)} | ${r.verdict} |`
    ).join("\n") + "\n";
}

export interface Machine {
  date: string;
  cores: number;
  cpu: string;
  memory: string;
  kernel: string;
  deno: string;
  ssh: string;
  sshAlgorithms: string;
  commit: string;
  command: string;
  durationS: number;
  /** 1-minute load average when the run started and when it ended. */
  load: string;
}

/** The 1-minute load average (from /proc/loadavg, read by a subprocess). */
export async function loadAverage(): Promise<string> {
  return (await output(["cat", "/proc/loadavg"]))?.split(" ")[0] ?? "?";
}

/** This machine, the Deno running the benchmark and the commit checked out. */
export async function machineInfo(command: string): Promise<Omit<Machine, "durationS" | "load">> {
  const cpu = (await output(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"]))
    ?.replace(/^model name\s*:\s*/, "").trim() ?? "unknown CPU";
  const nproc = Number((await output(["nproc"]))?.trim()) || navigator.hardwareConcurrency;
  const head = (await output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]))?.trim() ??
    "unknown";
  const dirty = (await output(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "main.ts"]))
    ?.trim();
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    cores: nproc,
    cpu,
    memory: fmtBytes(Deno.systemMemoryInfo().total).replace(/(\.\d)\d? GiB/, "$1 GiB"),
    kernel: `Linux ${Deno.osRelease()}`,
    deno: `Deno ${Deno.version.deno} (V8 ${Deno.version.v8})`,
    ssh: "",
    sshAlgorithms: "",
    commit: dirty ? `${head} + uncommitted changes in src/` : head,
    command,
  };
}

/** "2 cores (CPU), 7.8 GiB memory, Linux …": the machine row of a report. */
export function machineLine(m: Pick<Machine, "cores" | "cpu" | "memory" | "kernel">): string {
  return `${m.cores} cores (${m.cpu}), ${m.memory} memory, ${m.kernel}`;
}

export function markdown(m: Machine, rows: Row[], details: string[], quick: boolean): string {
  const met = rows.filter((r) => r.verdict === "met").length;
  const missed = rows.filter((r) => r.verdict === "missed");
  return `# Benchmarks

Generated by \`scripts/bench/main.ts\` (issue 8); do not edit by hand — rerun it.
${
    quick
      ? "\n**This is a `--quick` run (small sizes, few repeats); its figures are indicative only.**\n"
      : ""
  }
To reproduce (the full run takes about seventeen minutes; \`--quick\` about one, and writes
nothing unless given \`--out FILE\`):

\`\`\`sh
${m.command}
\`\`\`

| | |
| --- | --- |
| date | ${m.date} |
| machine | ${machineLine(m)} |
| tether | commit ${m.commit}, run as \`deno run -q -P --config deno.json tether.js\` (a bundle of the current source), ${m.deno} |
| OpenSSH | ${m.ssh} |
| OpenSSH algorithms | ${m.sshAlgorithms} |
| transport | tether: relay and agent on 127.0.0.1, \`ws://\`, and for the rows marked wss:// a second relay and agent over \`wss://\` (\`relay serve --tls-self-signed\`, its CA given to client and agent); OpenSSH: \`sshd\` on 127.0.0.1 with a throwaway host key, key authentication, default ciphers |
| run time | ${
    m.durationS.toFixed(0)
  } s; 1-minute load average ${m.load} (before the first item it should be near 0; more means other work shared the machine and perturbed the figures) |

## Results

Medians over the runs listed below. The ratio is always tether divided by OpenSSH: for
throughput higher is better, for times and memory lower is better. Where runs alternate
(items 1–4 and 8) it is the median of each run's ratio to the OpenSSH run beside it, and the
target is judged on it: this VM's speed drifts by tens of percent within minutes, so two
medians taken over different minutes would compare the minutes, not the programs.

${table(rows)}
Targets met: ${met}; missed: ${missed.length}${
    missed.length ? ` (${missed.map((r) => r.key).join(", ")})` : ""
  }.

## Where the time and memory go

Profiles and measurements behind these notes: \`deno run -P scripts/bench/profile.ts
turns|stdout|stdin|slow\` (CPU profiles of relay, agent and client; \`--no-profile\` for plain
timings and the relay's and agent's CPU), \`strace -c -f\`, and \`Deno.memoryUsage()\` sampled
during a slow read.

- **Throughput.** CPU-bound on 2 cores: tether has three processes on the path (client, relay,
  agent) where OpenSSH has two, and each 64 KiB frame costs a read and a write syscall in each.
  Done: every connection, the relay's included, runs on one WebSocket module over a plain
  \`Deno.Conn\` (\`src/protocol/ws_socket.ts\`) with one reused read buffer and one write buffer;
  the relay forwards a frame as a view into its read buffer, with the stream id rewritten in
  place, copied once into the other connection's write buffer (Deno's \`WebSocket\` server made
  a new ArrayBuffer, a \`MessageEvent\` and another copy per frame: ~1.9 CPU-s per GiB in the
  relay, now ~1.4); the agent reads the command's output with BYOB reads into one buffer.
  The client writes the output to a piped stdout through node:net, on the event loop, with no
  copy (\`src/client/stdout.ts\`), where Deno's own write handed each 64 KiB chunk to its
  blocking thread pool and back: 1 GiB went 290–312 → 349–375 MiB/s in 3 alternating runs
  (December 3). The agent takes frames from its link as views of the read buffer and copies
  the stdin it keeps into reused 64 KiB buffers (\`src/agent/input_pool.ts\`): a new buffer per
  frame cost ~30 µs a frame in allocation and page faults, plus collections (~8% of stdin
  throughput). The client reads a bulk stdin at once when bytes are waiting (FIONREAD, then
  read(2) through FFI) and through Deno's blocking thread only when the pipe is empty, one
  chunk ahead of what it seals and sends (\`openBulkStdin\`, \`ReadAhead\` in
  \`src/client/stdin.ts\`): each of Deno's reads was a hand-off to its thread and back, ~55 µs
  of the event loop per 64 KiB in a CPU profile; 1 GiB of stdin went ~1.2× faster (median of
  6 alternating runs, December 3; read-ahead alone ~1.06×, the direct read alone ~1.12×).
  Over wss:// this does not show: a CPU profile of 512 MiB of stdin (\`profile.ts stdin
  --tls\`) has the relay's TLS reads and writes at 0.8 s of its 1.1 s, the agent's TLS reads
  at 0.23 s: two TLS hops, each end decrypting and encrypting every byte, besides the
  end-to-end seal, where OpenSSH encrypts once; Deno offers no choice of cipher.
  Tried and not kept: a 4 MiB output window instead of 1 MiB (slower over
  wss://, 207 against 231–242 MiB/s: the transfer is not window-bound), \`F_SETPIPE_SZ\` 1 MiB on
  the client's stdin and stdout pipes (no gain in 3 alternations; again with the direct
  read, which could then take 256 KiB at a time: 0.88–1.26×, median 1.04×, in 5), and node:net for a bulk
  stdin (slower: node's stream machinery and a copy per read). What remains is the syscalls
  themselves and one memcpy per hop, and over wss:// the TLS records at both ends of each hop.
  A Linux pipe gives at most 64 KiB per read, and each read became a frame with its own seal
  and a write at every hop: once a command's output fills a whole 64 KiB read, the agent now
  gives its pipe 256 KiB (\`F_SETPIPE_SZ\` through the child's \`/proc/PID/fd\`, as
  \`Deno.Command\` does not give the descriptor; at most 16 pipes at a time, for the per-user
  pipe quota; \`src/agent/pipe_size.ts\`) and reads and frames up to 256 KiB at a time:
  1 GiB of stdout went 347–411 → 415–493 MiB/s over ws:// (median ratio ~1.27×) and
  219–237 → 236–258 MiB/s over wss:// (~1.11×), 4 runs alternating on one agent (December
  3), and the slow reader's growth fell (fewer, larger frames in flight). The child's stdin pipe enlarged the same way gave nothing (0.92–1.08×).
- **Turn latency.** Each turn crosses the relay: two TCP hops and three event loops on each way
  where OpenSSH has one hop and two. On this VM every wake-up of a sleeping process costs tens
  of microseconds of CPU even for a trivial echo server (measured the same for Deno's WebSocket
  server, our own, and a Python socket loop: ~60–80 µs CPU per message), so the relay's hop is
  a fixed cost of the architecture, not of its code: \`strace\` shows it does one \`recvfrom\`,
  one \`sendto\` and one \`epoll_wait\` per message. Done: TCP_NODELAY on every connection
  (Deno's \`WebSocket\` client waited ~40 ms for delayed ACKs), no credit frame per turn, and
  \`exec --stream\` reads a piped stdin on the event loop (node:net, non-blocking) instead of
  Deno's blocking stdin thread, which cost four futex hand-offs plus a dup and a close per
  read (\`src/client/stdin.ts\`; ~10% off the median turn). The agent already reads and writes
  the command's pipes through epoll. The client's stdout write went through Deno's blocking
  thread as well: a synchronous write whenever the pipe had room (checked through libc's
  FIONREAD) made no measurable difference over 4 alternating runs of 2000 turns and was not
  kept, but writing a piped stdout through node:net, on the event loop, as \`tether ssh\`
  does (\`src/client/stdout.ts\`), took ~14 µs of client CPU off each turn (140–153 against
  160–167 µs, 3 alternating runs of \`bench:turns --runs 3 --turns 1500 --only ws,chain\`,
  December 3) and the p50 against the chain from 1.14–1.17× to 1.03–1.17×. \`--v8-flags=--single-threaded\` on every process (client,
  relay, agent, and the chain's) gave no gain: tether's ws:// p50 0.233–0.279 ms against
  0.234–0.323 ms without it, 3 alternating runs of \`bench:turns --runs 3 --turns 1500
  --single-threaded client,relay,agent,chain\`; only the chain's p99 fell, by ~20%. Small chunks (a turn's line) are kept for a resume as exact copies, not in the
  client's pooled 256 KiB buffers: credit comes back in batches, so a pooled buffer per line
  made the client allocate and zero 256 KiB per turn (median 1.04 ms against 0.25 ms, same
  machine, same hour; \`BufferPool\` in \`src/common/bytes.ts\`).
- **Slow reader.** Flow control holds every hop to its 1 MiB window. Nothing is allocated per
  frame and no collection is forced: the relay forwards each frame from its read buffer into
  the other socket's write buffer; the agent reads into one buffer, keeps output in the exec's
  ring (grown once, to 1 MiB) and builds frames from it in one reused buffer
  (\`src/agent/fanout.ts\`); the client takes each received frame as a view of its read buffer
  and keeps it in pooled buffers until written (\`BufferPool\` in \`src/common/bytes.ts\`).
  Private memory grows by a few MiB while the first back-pressured stream warms up and then
  stays flat. The remaining RSS growth is file pages of the \`deno\` executable (code run for
  the first time), shared and reclaimable.

- **Starting a command (item 4).** A trace of one \`exec bench -- true\` (marks in the client,
  December 3): the runtime is ready after ~45 ms, evaluating the bundle takes ~90 ms (~35 ms of
  it Deno's Node compatibility layer, which commander and node:crypto need), building the
  command line ~10 ms, dialing and the hello ~11 ms, the end-to-end handshake ~7 ms of CPU
  and one round trip, the agent's start of the command and the exit the rest. The floor row
  is a bundle that does nothing but load commander and node:crypto: 0.48× OpenSSH by itself,
  so 0.5× cannot be reached by a program written this way. Done: the relay's and the agent's
  modules (prom-client, postgres, the YAML library) load only when their commands run, and the
  prompts come from their own packages (the bundle was 2.2 MiB, ~130 ms to evaluate); the agent
  starts a command through \`setsid(1)\` (Deno's \`detached\` spawn forks the whole agent, ~11 ms
  against ~3 ms); the relay's SQLite no longer flushes the disk for each audit row (two per
  command, ~3 ms each, on the relay's event loop). \`--v8-flags=--single-threaded\` made no
  difference to the client's start (12 interleaved runs each). What is left of the bundle's
  cost is its size, not what runs: with \`performance.now()\` at the top of the module and
  at \`main\`, a 1.5 MB bundle starts evaluating ~85 ms after an empty script does, its own
  top-level code then takes ~7 ms, and 1.5 MB of code that never runs (one uncalled
  function) costs ~40 ms by itself, even from V8's code cache; the node: modules the bundle
  imports cost ~7 ms together, and its 187 KB of page assets (strings) nothing measurable.
  \`deno bundle --code-splitting\` (the client's part 290 KB, the relay and agent in chunks
  loaded on use) took ~30 ms off \`exec -- true\` (216 → ~182 ms, 2 × 9 runs) but makes the
  bundle a directory of ~25 files where README's CI recipe downloads one file; not adopted
  (a binary from \`deno compile\`, built from the sources, keeps their dynamic imports, which load on use; not measurable here, where compile cannot fetch its runtime). \`--minify\` saved ~9 ms.
- **Keystroke to echo (item 8).** Back to back, a key's echo takes ~0.55 ms through tether; with
  5 ms between keys, as when typing, ~1.1–1.4 ms, and the CPU each process spends per key
  doubles (client ~400 µs, relay and agent ~430 µs, against ~150–200 µs back to back): every
  process on the way wakes from sleep for each key, and on this VM a wake-up is expensive.
  tether has three event loops on the way and, on a terminal, Deno's blocking threads for
  stdin and stdout (a terminal cannot be read from the event loop: node:net refuses a TTY and
  node:tty reads through the same thread); OpenSSH has two processes. A synchronous stdout write
  for short output was tried and made no measurable difference.
- **The relay at rest (item 6).** A CPU profile of the relay with 19,900 idle wss:// agents
  (\`--cpu-prof\`, 42 s at rest): 39% of its busy time is the TLS write of each probe (~25 µs in
  Deno's TLS op, one per agent per 20 s), 14% the read of each answer (~8.5 µs), 9% garbage
  collection, the rest the timers and the 2 s sweep. Done: an idle link sleeps in its ticker
  until its probe is due, and the sweep makes no arrays of every link. The probes themselves
  are what remains: with 19,900 agents settled, the relay used 0.9% of a core when
  nothing was probed (\`--idle-heartbeat 1h\`) and 7–10% when each link was probed every 20 s,
  ~65–95 µs of CPU per probe and its answer, three times what the profiler shows in JavaScript
  and Deno's ops (the rest is in the kernel, 2 points, in V8's collector threads, 1.7 points,
  and in the runtime around the ops: \`strace -c\` over 20 s at rest counts one \`sendto\` and
  two \`recvfrom\` per probe and ~6 \`epoll_wait\` a second, so the wake-ups are already
  batched). Batching them harder does not help: probes grouped into 5 s or 10 s ticks instead of
  1 s cost the same (9.9% and 8.8% against 10.1%, December 3), and agents that sent their own
  unanswered probe every 20 s, spread out, cost more (10.1%: a wake-up per message). So the
  probes became rarer, and the kernel took over the host check they were for: kernel TCP
  keepalive on both ends of every agent link (20 s idle, 5 probes 2 s apart, TCP_USER_TIMEOUT
  30 s; \`common/tcp_options.ts\`) notices a vanished host within 30 s (the 20 s heartbeat:
  26 s), and costs the relay nothing measurable (0.95% of a core with 19,900 agents, keepalive
  on, nothing probed, against 0.91% without); the heartbeat, now every 45 s, is left to find a
  peer that hangs, or one behind a proxy (within 51 s), and to keep proxies from closing idle
  links (HAProxy's stock timeout is 50 s, nginx's 60 s: the default stays under both). Rows 6
  cpu wss and 6 cpu wss 20s show both periods (6.2% against 9.5% in the run above), CPU taken
  over whole periods after a period's rest (a shorter window counts the first probes of agents
  dialed together as if they came that often). A probe costs more the rarer it is (~120 µs at
  45 s, ~85 µs at 20 s in the run above): each link's state is colder by then. Over ws:// a
  probe costs ~50 µs (row 6 cpu): most of a wss:// probe is Deno's TLS read and write of two
  tiny records. The 5% target is met only with rarer probes than proxies allow by default:
  \`--idle-heartbeat 75s\` gave 3.6–4.7% in three runs (December 3). Those runs also showed why
  keepalive gives up after five missed probes, not three: keepalive timers fall due in bursts
  (the kernel's timer wheel puts 20 s timers in half-second slots, and links probed together
  fall due together), loopback's receive queue (\`net.core.netdev_max_backlog\`, 1000 packets)
  dropped tens of thousands of packets per run (\`/proc/net/softnet_stat\`), and with three
  probes 0.4–1.5% of the live idle links were cut as dead (295 and 84 of 19,900 in two runs;
  with five, none).
  \`--v8-flags=--single-threaded\` on the relay cut its CPU at rest by ~2
  points of a core (8.1% and 7.7% against 9.7% and 11.1%, interleaved) but grew its RSS by
  ~230 MiB at 19,900 agents (~39 KiB per agent, over the 32 KiB target): not adopted.
  \`perf record\` of the relay at rest (19,900 wss:// agents, default heartbeat, 30 s,
  December 3) puts 61% of its samples in the \`deno\` executable itself (V8's builtins and
  collector, tokio, rustls), 18% in the kernel, 13% in libc (malloc and free alone ~8%), 1% in
  the vDSO and 7.5% in JIT-compiled JavaScript (the ticker ~2.5%, the 2 s sweep ~1.4%, the
  WebSocket read loop ~1%): what a probe costs is the runtime's work per I/O operation, not
  tether's code.

## How each figure is taken

${details.join("\n")}
`;
}

// ---------------------------------------------------------------------------
// Sections other scripts keep in the same file (e.g. scripts/bench/fleet.ts)

const begin = (id: string) => `<!-- section ${id}: written by scripts/bench/${id}.ts -->`;
const end = (id: string) => `<!-- end of section ${id} -->`;

/** `doc` with the section `id` replaced by `body` (appended when it has none yet). */
export function withSection(doc: string, id: string, body: string): string {
  const block = `${begin(id)}\n\n${body.trim()}\n\n${end(id)}\n`;
  const i = doc.indexOf(begin(id)), j = doc.indexOf(end(id));
  if (i >= 0 && j > i) return doc.slice(0, i) + block + doc.slice(j + end(id).length + 1);
  return `${doc.trimEnd()}\n\n${block}`;
}

/** Every section of `doc` written by another script, to carry over when the file is rewritten. */
export function keptSections(doc: string): string {
  const out: string[] = [];
  const re = /<!-- section ([\w-]+): written by [^\n]*-->[\s\S]*?<!-- end of section \1 -->\n?/g;
  for (const m of doc.matchAll(re)) out.push(m[0].trimEnd() + "\n");
  return out.length ? "\n" + out.join("\n") : "";
}
