/**
 * Test harness: real relays, agents and CLI runs as subprocesses on
 * 127.0.0.1 with random ports and temp dirs. The CLI under test is the
 * bundle (`deno task bundle` → dist/tether.js), run with the permission set
 * from deno.json, as users run it.
 */
import { join } from "node:path";

export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
export const BUNDLE = join(ROOT, "dist", "tether.js");
export const CONFIG = join(ROOT, "deno.json");

function entry(): string {
  const override = Deno.env.get("TETHER_TEST_ENTRY");
  if (override) return override;
  try {
    Deno.statSync(BUNDLE);
    return BUNDLE;
  } catch {
    throw new Error("dist/tether.js is missing: run `deno task bundle` (or `deno task test`)");
  }
}

/** Global options that take a value, to find the command in an argv. */
const GLOBAL_VALUES = new Set([
  "--relay",
  "--api-key",
  "--ca-file",
  "--config-dir",
  "--dial-timeout",
]);

/**
 * The permission set (deno.json) a command runs with, as its role needs: the relay and the
 * client without `run` (both with `ffi`: socket options, OpenSSL's cipher, stdin reads); only
 * what runs an agent (`agent run`, `up`, `ci hold`) with it.
 */
export function permissionSet(args: string[]): "relay" | "agent" | "client" {
  const words: string[] = [];
  for (let i = 0; i < args.length && words.length < 2; i++) {
    if (GLOBAL_VALUES.has(args[i])) i++;
    else if (!args[i].startsWith("-")) words.push(args[i]);
  }
  const [cmd, sub] = words;
  if (cmd === "relay") return "relay";
  if (cmd === "agent" || cmd === "up" || (cmd === "ci" && sub === "hold")) return "agent";
  return "client";
}

/** argv that runs the tether CLI under test, with its role's permission set. */
export function tetherArgv(args: string[]): string[] {
  return [
    Deno.execPath(),
    "run",
    "-q",
    `--permission-set=${permissionSet(args)}`,
    "--config",
    CONFIG,
    entry(),
    ...args,
  ];
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Uint8Array;
}

export interface RunOptions {
  env?: Record<string, string>;
  /** Bytes or text for stdin; default: /dev/null. */
  stdin?: string | Uint8Array | "inherit-pipe";
  /** Hard limit; a run that outlives it fails the test. */
  timeoutMs?: number;
  cwd?: string;
}

const dec = new TextDecoder();

/** Environment shared by every process a test starts: isolated from the user's own. */
export function baseEnv(home: string): Record<string, string> {
  return {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    HOME: home,
    XDG_CONFIG_HOME: join(home, ".config"),
    XDG_DATA_HOME: join(home, ".local", "share"),
    XDG_STATE_HOME: join(home, ".local", "state"),
    DENO_DIR: Deno.env.get("DENO_DIR") ?? join(Deno.env.get("HOME") ?? "/root", ".cache", "deno"),
    NO_COLOR: "1",
    LANG: "C.UTF-8",
  };
}

/** Runs the CLI to completion under a hard timeout. */
export async function run(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...rest] = tetherArgv(args);
  const child = new Deno.Command(cmd, {
    args: rest,
    env: opts.env,
    clearEnv: !!opts.env,
    cwd: opts.cwd,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    const data = typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin;
    w.write(data as Uint8Array).then(() => w.close()).catch(() => {});
  }
  const timeoutMs = opts.timeoutMs ?? 30_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const res = {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
    stdoutBytes: out.stdout,
  };
  if (timedOut) {
    throw new Error(
      `tether ${
        args.join(" ")
      } did not finish within ${timeoutMs} ms\nstdout: ${res.stdout}\nstderr: ${res.stderr}`,
    );
  }
  return res;
}

/** A long-running process whose output is collected and can be waited on. */
export class Proc {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  readonly status: Promise<Deno.CommandStatus>;
  private waiters: (() => void)[] = [];
  private stdinWriter?: WritableStreamDefaultWriter<Uint8Array>;

  constructor(argv: string[], opts: { env?: Record<string, string>; stdin?: boolean } = {}) {
    this.child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: opts.env,
      clearEnv: !!opts.env,
      stdin: opts.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (opts.stdin) this.stdinWriter = this.child.stdin.getWriter();
    const pumps = [
      this.collect(this.child.stdout, (s) => (this.stdout += s)),
      this.collect(this.child.stderr, (s) => (this.stderr += s)),
    ];
    this.status = Promise.all(pumps).then(() => this.child.status);
  }

  static tether(args: string[], opts: { env?: Record<string, string>; stdin?: boolean } = {}) {
    return new Proc(tetherArgv(args), opts);
  }

  get pid(): number {
    return this.child.pid;
  }

  private async collect(stream: ReadableStream<Uint8Array>, add: (s: string) => void) {
    const d = new TextDecoder();
    for await (const chunk of stream) {
      add(d.decode(chunk, { stream: true }));
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async write(text: string | Uint8Array): Promise<void> {
    await this.stdinWriter!.write(typeof text === "string" ? new TextEncoder().encode(text) : text);
  }

  async closeStdin(): Promise<void> {
    await this.stdinWriter?.close().catch(() => {});
    this.stdinWriter = undefined;
  }

  /** Waits until `re` matches the chosen output; returns the match. */
  async waitFor(re: RegExp, which: "stdout" | "stderr" = "stderr", timeoutMs = 20_000) {
    const deadline = Date.now() + timeoutMs;
    let ended = false;
    this.status.then(() => (ended = true));
    for (;;) {
      const m = re.exec(this[which]);
      if (m) return m;
      if (ended) {
        throw new Error(
          `process ended before ${re} appeared on ${which}\n` +
            `stdout: ${this.stdout}\nstderr: ${this.stderr}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `timed out waiting for ${re} on ${which}\n` +
            `stdout: ${this.stdout}\nstderr: ${this.stderr}`,
        );
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Waits until `pred` holds for the collected output. */
  async waitUntil(pred: (p: Proc) => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this)) {
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${what}\nstderr: ${this.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  kill(sig: Deno.Signal = "SIGTERM"): void {
    try {
      this.child.kill(sig);
    } catch { /* already gone */ }
  }

  /** The exit status, or a failure (and SIGKILL) after `ms`: a hang fails the test. */
  async ended(ms = 30_000): Promise<Deno.CommandStatus> {
    let t: ReturnType<typeof setTimeout> | undefined;
    const limit = new Promise<never>((_, reject) => {
      t = setTimeout(() => {
        this.kill("SIGKILL");
        reject(new Error(`process did not end within ${ms} ms\nstderr: ${this.stderr}`));
      }, ms);
    });
    try {
      return await Promise.race([this.status, limit]);
    } finally {
      clearTimeout(t);
    }
  }

  /** Kills (if needed) and waits for the process to end. */
  async stop(sig: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    await this.closeStdin();
    this.kill(sig);
    const t = setTimeout(() => this.kill("SIGKILL"), 5000);
    const s = await this.status;
    clearTimeout(t);
    return s;
  }
}

/**
 * A test that needs something from the machine (root, a Debian package): skipped with a
 * loud message on a developer's machine without it, but failing on CI
 * (TETHER_TEST_STRICT=1, set by .ci/run), where a silent skip would hide a gap.
 */
export function requirement(missing: string | undefined): { ignore: boolean; check(): void } {
  const strict = Deno.env.get("TETHER_TEST_STRICT") === "1";
  if (missing && !strict) console.error(`skipped: ${missing}`);
  return {
    ignore: !!missing && !strict,
    check() {
      if (missing) throw new Error(missing);
    },
  };
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Whether `cmd` runs on this machine (found on PATH and exits 0 with `args`). */
export function hasCommand(cmd: string, args: string[] = ["--version"]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

export interface Keys {
  workspace: string;
  client_key: string;
  agent_key: string;
}

/**
 * One test's world: a temp home, a relay with a workspace and keys, and any
 * agents started in it. Dispose stops everything and removes the temp dir.
 */
export class World {
  readonly home: string;
  readonly relayDir: string;
  keys!: Keys;
  relay?: Proc;
  url = "";
  port = 0;
  readonly agents: Proc[] = [];
  /** A command the relay and agents started here run under (e.g. nsenter into a namespace). */
  launcher: string[] = [];
  private readonly others: Proc[] = [];

  private constructor(home: string) {
    this.home = home;
    this.relayDir = join(home, "relay");
  }

  static async create(
    opts: { startRelay?: boolean; prepare?: (w: World) => Promise<void> } = {},
  ): Promise<World> {
    const w = new World(await Deno.makeTempDir({ prefix: "tether-test-" }));
    await opts.prepare?.(w);
    const init = await run(["relay", "init", "--data-dir", w.relayDir, "--json"], { env: w.env() });
    if (init.code !== 0) throw new Error(`relay init failed: ${init.stderr}`);
    w.keys = JSON.parse(init.stdout);
    if (opts.startRelay !== false) await w.startRelay();
    return w;
  }

  /** Env for client commands: isolated home, relay URL and client key set. */
  env(extra: Record<string, string> = {}): Record<string, string> {
    return {
      ...baseEnv(this.home),
      ...(this.url ? { TETHER_RELAY: this.url, TETHER_API_KEY: this.keys?.client_key ?? "" } : {}),
      ...extra,
    };
  }

  /** Starts (or restarts, on the same port) the relay. */
  async startRelay(args: string[] = []): Promise<void> {
    const listen = `127.0.0.1:${this.port}`;
    this.relay = this.launch([
      "relay",
      "serve",
      "--listen",
      listen,
      "--data-dir",
      this.relayDir,
      ...args,
    ], {
      env: baseEnv(this.home),
    });
    const m = await this.relay.waitFor(/relay listening on (ws:\/\/[^\s]+)/, "stdout");
    this.url = m[1];
    this.port = Number(new URL(this.url).port);
  }

  async stopRelay(sig: Deno.Signal = "SIGTERM"): Promise<void> {
    await this.relay?.stop(sig);
    this.relay = undefined;
  }

  /** Starts an agent and waits until it is online. */
  async startAgent(
    name: string,
    opts: {
      labels?: string[];
      stateDir?: string;
      key?: string;
      wait?: boolean;
      args?: string[];
      relay?: string;
      env?: Record<string, string>;
    } = {},
  ): Promise<Proc> {
    const stateDir = opts.stateDir ?? join(this.home, "agents", name);
    const relay = opts.relay ?? this.url;
    const args = ["agent", "run", "--relay", relay, "--name", name, "--state-dir", stateDir];
    for (const l of opts.labels ?? []) args.push("--label", l);
    args.push(...(opts.args ?? []));
    const p = this.launch(args, {
      env: {
        ...baseEnv(this.home),
        SHELL: "/bin/bash",
        TETHER_AGENT_KEY: opts.key ?? this.keys.agent_key,
        ...opts.env,
      },
    });
    this.agents.push(p);
    if (opts.wait !== false) await p.waitFor(/online as /);
    return p;
  }

  private launch(args: string[], opts: { env?: Record<string, string> }): Proc {
    return new Proc([...this.launcher, ...tetherArgv(args)], opts);
  }

  /** Runs a client command against this world's relay. */
  tether(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return run(args, { ...opts, env: this.env(opts.env) });
  }

  spawn(args: string[], opts: { stdin?: boolean; env?: Record<string, string> } = {}): Proc {
    const p = Proc.tether(args, { stdin: opts.stdin, env: this.env(opts.env) });
    this.others.push(p);
    return p;
  }

  async machines(): Promise<{ id: string; name: string; online: boolean; [k: string]: unknown }[]> {
    const r = await this.tether(["machines", "--json"]);
    if (r.code !== 0) throw new Error(`machines failed: ${r.stdout} ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  /** Polls `machines` until `pred` holds (agents report asynchronously). */
  async waitMachines(
    pred: (ms: { id: string; name: string; online: boolean }[]) => boolean,
    timeoutMs = 20_000,
  ) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ms = await this.machines();
      if (pred(ms)) return ms;
      if (Date.now() > deadline) throw new Error(`machines never matched: ${JSON.stringify(ms)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all([...this.others, ...this.agents].map((p) => p.stop()));
    await this.stopRelay();
    await Deno.remove(this.home, { recursive: true }).catch(() => {});
  }
}

/**
 * Polls `check` (every 100 ms) until it returns a truthy value, and returns it; fails
 * with `what` after `timeoutMs`. For state that has no event to wait on (a listing, a
 * process table); the timeout only guards against a hang.
 */
export async function eventually<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 20_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Pids (space-separated) of processes whose command line is `cmdline`, its program named by
 * path or not (`sleep 5` or `/usr/bin/sleep 5`); "" if none.
 */
export async function pgrep(cmdline: string): Promise<string> {
  const re = `^([^ ]*/)?${cmdline.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`;
  const out = await new Deno.Command("pgrep", { args: ["-f", re] }).output();
  return new TextDecoder().decode(out.stdout).trim().split("\n").filter(Boolean).join(" ");
}

/** Resident set size of a process in bytes (via ps: Deno guards /proc behind --allow-all). */
export async function rss(pid: number): Promise<number> {
  const out = await new Deno.Command("ps", { args: ["-o", "rss=", "-p", String(pid)] }).output();
  return Number(new TextDecoder().decode(out.stdout).trim()) * 1024;
}

/** Every file under `dir`, recursively. */
export function* walkFiles(dir: string): Generator<string> {
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* walkFiles(p);
    else if (e.isFile) yield p;
  }
}

/**
 * argv of `awk '{print; fflush()}'`. Debian's default awk is mawk, which
 * block-buffers its *input* from a pipe unless given `-W interactive`.
 */
export async function awkEchoArgv(): Promise<string[]> {
  const v = await new Deno.Command("awk", { args: ["-W", "version"], stderr: "piped" }).output()
    .catch(() => undefined);
  const text = v ? new TextDecoder().decode(v.stdout) + new TextDecoder().decode(v.stderr) : "";
  return /mawk/i.test(text)
    ? ["awk", "-W", "interactive", "{print; fflush()}"]
    : ["awk", "{print; fflush()}"];
}
