/**
 * Shared pieces of the benchmark suite: subprocesses that are always cleaned
 * up and never waited on without a bound, process resource probes (via `ps`
 * and `cat /proc/…` in a subprocess: Deno guards /proc behind --allow-all),
 * and small statistics and formatting helpers.
 */
import { join } from "node:path";

export const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
export const CONFIG = join(ROOT, "deno.json");
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

const enc = new TextEncoder();
const dec = new TextDecoder();

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Resolves like `p`, or rejects once `ms` have passed. */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Progress lines go to stderr so stdout stays the result. */
export function log(line: string): void {
  console.error(`bench: ${line}`);
}

// ---------------------------------------------------------------------------
// Subprocesses

/** Every process started here that may still run; stopped by stopAll(). */
const live = new Set<Proc>();
/** Set by stopAll(): no new process may start once cleanup has begun. */
let closing = false;

export interface ProcOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** "piped" gives a writer (`proc.write`, `proc.closeStdin`). Default: /dev/null. */
  stdin?: "piped" | "null";
  /** "capture" keeps the last bytes as text; "raw" leaves `child.stdout` to the caller. */
  stdout?: "capture" | "raw" | "null";
  stderr?: "capture" | "null";
}

/** Bytes of each captured stream that are kept (the tail). */
const CAPTURE_LIMIT = 256 * KiB;

/** A child process with bounded output capture; registered for cleanup. */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly argv: string[];
  readonly startedAt = performance.now();
  stdout = "";
  stderr = "";
  /** Set once the process has exited (performance.now()). */
  endedAt?: number;
  readonly status: Promise<Deno.CommandStatus>;
  private writer?: WritableStreamDefaultWriter<Uint8Array>;
  private waiters: (() => void)[] = [];
  private ended = false;

  constructor(argv: string[], opts: ProcOptions = {}) {
    if (closing) throw new Error("the benchmark is shutting down");
    this.argv = argv;
    this.child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: opts.env,
      clearEnv: !!opts.env,
      cwd: opts.cwd,
      stdin: opts.stdin ?? "null",
      stdout: opts.stdout === "null" ? "null" : "piped",
      stderr: opts.stderr === "null" ? "null" : "piped",
    }).spawn();
    live.add(this);
    if (opts.stdin === "piped") this.writer = this.child.stdin.getWriter();
    const pumps: Promise<void>[] = [];
    if (opts.stdout === undefined || opts.stdout === "capture") {
      pumps.push(this.collect(this.child.stdout, (s) => (this.stdout = tail(this.stdout + s))));
    }
    if (opts.stderr !== "null") {
      pumps.push(this.collect(this.child.stderr, (s) => (this.stderr = tail(this.stderr + s))));
    }
    this.status = this.child.status.then(async (s) => {
      this.endedAt = performance.now();
      this.ended = true;
      // Output pumps end with the pipes; a grandchild holding them must not hang us.
      await withTimeout(Promise.all(pumps), 2000, "output pipes").catch(() => {});
      live.delete(this);
      this.wake();
      return s;
    });
  }

  get pid(): number {
    return this.child.pid;
  }

  get exited(): boolean {
    return this.ended;
  }

  private async collect(stream: ReadableStream<Uint8Array>, add: (s: string) => void) {
    const d = new TextDecoder();
    try {
      for await (const chunk of stream) {
        add(d.decode(chunk, { stream: true }));
        this.wake();
      }
    } catch { /* the pipe went away */ }
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async write(data: string | Uint8Array): Promise<void> {
    await this.writer!.write(typeof data === "string" ? enc.encode(data) : data);
  }

  async closeStdin(): Promise<void> {
    const w = this.writer;
    this.writer = undefined;
    await w?.close().catch(() => {});
  }

  /** Waits until `re` matches the captured output; returns the match. */
  async waitFor(
    re: RegExp,
    which: "stdout" | "stderr",
    timeoutMs: number,
  ): Promise<RegExpExecArray> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this[which]);
      if (m) return m;
      const left = deadline - performance.now();
      if (this.ended || left <= 0) {
        throw new Error(
          `${this.ended ? "process ended" : `timed out after ${timeoutMs} ms`} before ${re} ` +
            `appeared on ${which} of ${this.argv.slice(-6).join(" ")}\n` +
            `stdout: ${this.stdout.slice(-2000)}\nstderr: ${this.stderr.slice(-2000)}`,
        );
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  kill(sig: Deno.Signal = "SIGTERM"): void {
    if (this.ended) return;
    try {
      this.child.kill(sig);
    } catch { /* already gone */ }
  }

  /** Waits for the exit; kills it (TERM, then KILL) when it outlives `timeoutMs`. */
  async wait(timeoutMs: number): Promise<Deno.CommandStatus> {
    let timedOut = false;
    const t = setTimeout(() => {
      timedOut = true;
      this.kill("SIGTERM");
      setTimeout(() => this.kill("SIGKILL"), 2000);
    }, timeoutMs);
    try {
      const s = await this.status;
      if (timedOut) {
        throw new Error(
          `${this.argv.slice(-8).join(" ")} did not finish within ${timeoutMs} ms\n` +
            `stdout: ${this.stdout.slice(-1000)}\nstderr: ${this.stderr.slice(-2000)}`,
        );
      }
      return s;
    } finally {
      clearTimeout(t);
    }
  }

  /** Ends the process (SIGTERM, SIGKILL after `graceMs`) and waits for it. */
  async stop(graceMs = 3000): Promise<void> {
    await this.closeStdin();
    if (this.ended) {
      await this.status;
      return;
    }
    this.kill("SIGTERM");
    const t = setTimeout(() => this.kill("SIGKILL"), graceMs);
    await withTimeout(this.status, graceMs + 3000, "stop").catch(() => {});
    clearTimeout(t);
  }
}

function tail(s: string): string {
  return s.length > CAPTURE_LIMIT ? s.slice(s.length - CAPTURE_LIMIT) : s;
}

/** Stops every process still registered and refuses new ones (cleanup on any exit path). */
export async function stopAll(): Promise<void> {
  closing = true;
  for (let i = 0; i < 3 && live.size > 0; i++) {
    await Promise.all([...live].map((p) => p.stop(1500)));
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs argv to completion under a hard timeout. */
export async function run(
  argv: string[],
  opts: ProcOptions & { timeoutMs?: number; input?: string } = {},
): Promise<RunResult> {
  const p = new Proc(argv, { ...opts, stdin: opts.input !== undefined ? "piped" : opts.stdin });
  if (opts.input !== undefined) {
    p.write(opts.input).then(() => p.closeStdin()).catch(() => {});
  }
  const s = await p.wait(opts.timeoutMs ?? 30_000);
  return { code: s.code, stdout: p.stdout, stderr: p.stderr, ms: p.endedAt! - p.startedAt };
}

/** Runs argv and returns its stdout, or undefined when it fails or is missing. */
export async function output(argv: string[], timeoutMs = 10_000): Promise<string | undefined> {
  try {
    const r = await run(argv, { timeoutMs });
    return r.code === 0 ? r.stdout : undefined;
  } catch {
    return undefined;
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Reads from `reader` under a timeout; a stall becomes an error. */
export async function readWithin(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  ms: number,
  what: string,
): Promise<ReadableStreamReadResult<Uint8Array>> {
  return await withTimeout(reader.read(), ms, what);
}

export function decode(b: Uint8Array): string {
  return dec.decode(b);
}

// ---------------------------------------------------------------------------
// Process resources

/** Resident set size in bytes (NaN when the process is gone). */
export async function rss(pid: number): Promise<number> {
  const out = await output(["ps", "-o", "rss=", "-p", String(pid)], 5000);
  return out === undefined ? NaN : Number(out.trim()) * KiB;
}

/** The median of `n` RSS samples of `pid`, `gapMs` apart. */
export async function rssSamples(pid: number, n: number, gapMs: number): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < n; i++) {
    xs.push(await rss(pid));
    if (i < n - 1) await sleep(gapMs);
  }
  return median(xs);
}

/** Waits until something accepts connections on 127.0.0.1:port (10 s at most). */
export async function listening(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await sleep(50);
    }
  }
  throw new Error(`nothing listens on ${port}`);
}

export interface ProcStat {
  pid: number;
  /** utime + stime in seconds. */
  cpu: number;
  /** cutime + cstime in seconds: children (and their reaped descendants) that have ended. */
  childCpu: number;
  rss: number;
  /** The anonymous (private) part of rss, from RssAnon in /proc/PID/status; the rest is file pages, mostly the program's code. */
  anon: number;
}

let clockTicks = 100;
/** Reads `getconf CLK_TCK` once. */
export async function initClock(): Promise<void> {
  const t = Number((await output(["getconf", "CLK_TCK"]))?.trim());
  if (t > 0) clockTicks = t;
}

/** CPU time and RSS of each pid that still exists (from /proc/PID/stat). */
export async function procStats(pids: number[]): Promise<ProcStat[]> {
  if (pids.length === 0) return [];
  const out = await output(
    [
      "sh",
      "-c",
      'for p; do cat "/proc/$p/stat" 2>/dev/null && grep -h "^RssAnon:" "/proc/$p/status"; done',
      "sh",
      ...pids.map(String),
    ],
    10_000,
  ) ?? "";
  const stats: ProcStat[] = [];
  for (const line of out.split("\n")) {
    const anon = /^RssAnon:\s+(\d+) kB/.exec(line);
    if (anon) {
      if (stats.length) stats[stats.length - 1].anon = Number(anon[1]) * 1024;
      continue;
    }
    const close = line.lastIndexOf(")");
    if (close < 0) continue;
    const pid = Number(line.slice(0, line.indexOf(" ")));
    const f = line.slice(close + 2).split(" ");
    // f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17, rss (pages) 24.
    stats.push({
      pid,
      cpu: (Number(f[11]) + Number(f[12])) / clockTicks,
      childCpu: (Number(f[13]) + Number(f[14])) / clockTicks,
      rss: Number(f[21]) * 4096,
      anon: NaN,
    });
  }
  return stats;
}

/** Summed CPU seconds of the pids. */
export async function cpuSeconds(pids: number[]): Promise<number> {
  return (await procStats(pids)).reduce((a, s) => a + s.cpu, 0);
}

/** Summed proportional set size (PSS) and RSS in bytes, from smaps_rollup. */
export async function pssOf(pids: number[]): Promise<{ pss: number; rss: number }> {
  if (pids.length === 0) return { pss: 0, rss: 0 };
  const out = await output(
    [
      "sh",
      "-c",
      'for p; do grep -E "^(Pss|Rss):" "/proc/$p/smaps_rollup" 2>/dev/null; done',
      "sh",
      ...pids.map(String),
    ],
    10_000,
  ) ?? "";
  let pss = 0, rssSum = 0;
  for (const m of out.matchAll(/^(Pss|Rss):\s+(\d+) kB/gm)) {
    if (m[1] === "Pss") pss += Number(m[2]) * KiB;
    else rssSum += Number(m[2]) * KiB;
  }
  return { pss, rss: rssSum };
}

/** Every process below `root` (children, grandchildren, …), optionally only those named `comm`. */
export async function descendants(root: number, comm?: string): Promise<number[]> {
  const out = await output(["ps", "-e", "-o", "pid=,ppid=,comm="], 5000) ?? "";
  const kids = new Map<number, number[]>();
  const names = new Map<number, string>();
  for (const line of out.split("\n")) {
    const [pid, ppid, name] = line.trim().split(/\s+/);
    if (!Number(pid)) continue;
    names.set(Number(pid), name ?? "");
    if (!kids.has(Number(ppid))) kids.set(Number(ppid), []);
    kids.get(Number(ppid))!.push(Number(pid));
  }
  const found: number[] = [];
  const todo = [root];
  while (todo.length) {
    for (const k of kids.get(todo.pop()!) ?? []) {
      if (comm === undefined || names.get(k) === comm) found.push(k);
      todo.push(k);
    }
  }
  return found;
}

/** Samples a value every `everyMs` until stopped; keeps every sample. */
export class Sampler<T> {
  readonly samples: T[] = [];
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(probe: () => Promise<T>, everyMs: number) {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          this.samples.push(await probe());
        } catch { /* a probe failure is a missing sample */ }
        await sleep(everyMs);
      }
    })();
  }

  async stop(): Promise<T[]> {
    this.stopped = true;
    await withTimeout(this.loop, 15_000, "sampler").catch(() => {});
    return this.samples;
  }
}

// ---------------------------------------------------------------------------
// Statistics and formatting

export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(xs: number[], p: number): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * s.length));
  return s[Math.min(s.length, rank) - 1];
}

export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return "n/a";
  const a = Math.abs(n);
  if (a >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  if (a >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  if (a >= KiB) return `${(n / KiB).toFixed(1)} KiB`;
  return `${Math.round(n)} B`;
}

export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return "n/a";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(3)} ms`;
}

export function fmtRate(bytesPerSec: number): string {
  return Number.isFinite(bytesPerSec) ? `${(bytesPerSec / MiB).toFixed(0)} MiB/s` : "n/a";
}

/** POSIX shell quoting of one word. */
export function shq(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/** An awk that echoes each line at once (the far end of the turn benchmarks). */
export async function awkArgv(): Promise<string[]> {
  const r = await new Deno.Command("awk", {
    args: ["-W", "version"],
    stdout: "piped",
    stderr: "piped",
  })
    .output().catch(() => undefined);
  const text = r ? new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr) : "";
  // mawk block-buffers its input from a pipe unless told otherwise.
  return /mawk/i.test(text)
    ? ["awk", "-W", "interactive", "{print; fflush()}"]
    : ["awk", "{print; fflush()}"];
}
