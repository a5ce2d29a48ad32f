/**
 * tether under test: the CLI bundle run as users run it (`deno run -q -P
 * --config deno.json tether.js …`), a relay on 127.0.0.1 with a throwaway
 * data dir, and an agent, each its own process.
 */
import { join } from "node:path";
import { CONFIG, log, output, Proc, ROOT, run } from "./lib.ts";

export interface Keys {
  workspace: string;
  client_key: string;
  agent_key: string;
}

/** Builds the CLI bundle from the current source into `out` (not dist/, which tests share). */
export async function buildBundle(out: string): Promise<void> {
  const r = await run(
    [Deno.execPath(), "bundle", "-q", "--platform", "deno", "-o", out, "main.ts"],
    { cwd: ROOT, timeoutMs: 180_000 },
  );
  if (r.code !== 0) throw new Error(`deno bundle failed:\n${r.stderr}`);
}

/** The bundle under test: `given` (--bundle), or the current source bundled into `tmp`. */
export async function bundleUnderTest(given: string | undefined, tmp: string): Promise<string> {
  if (given) return given.startsWith("/") ? given : join(Deno.cwd(), given);
  const out = join(tmp, "tether.js");
  log("bundling the current source");
  await buildBundle(out);
  return out;
}

/** Environment of every tether process: an isolated home, nothing from the user's config. */
export function baseEnv(home: string): Record<string, string> {
  return {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    HOME: home,
    XDG_CONFIG_HOME: join(home, ".config"),
    XDG_DATA_HOME: join(home, ".local", "share"),
    XDG_STATE_HOME: join(home, ".local", "state"),
    DENO_DIR: Deno.env.get("DENO_DIR") ?? join(Deno.env.get("HOME") ?? "/root", ".cache", "deno"),
    SHELL: Deno.env.get("SHELL") ?? "/bin/sh",
    NO_COLOR: "1",
    LANG: "C.UTF-8",
  };
}

let account: { home: string; shell: string } | undefined;

/**
 * The running user's home and login shell (from the passwd database): the
 * agent runs with them, as an agent on a real machine does, so `connect`
 * starts the same login shell with the same profile as `ssh -tt` does.
 */
export async function loginAccount(): Promise<{ home: string; shell: string }> {
  if (account) return account;
  const user = (await output(["id", "-un"]))?.trim() ?? "";
  const entry = (await output(["getent", "passwd", user]))?.trim().split(":") ?? [];
  account = {
    home: entry[5] || Deno.env.get("HOME") || "/",
    shell: entry[6] || Deno.env.get("SHELL") || "/bin/sh",
  };
  return account;
}

/** One relay (plus, optionally, an agent named `bench`) in its own temp home. */
export class TetherWorld {
  readonly home: string;
  readonly relayDir: string;
  keys!: Keys;
  url = "";
  relay?: Proc;
  agent?: Proc;
  readonly machine = "bench";

  /** Extra `deno run` flags for the relay and agent (e.g. --cpu-prof when profiling). */
  serverFlags: string[] = [];
  /** With `tls`: the private CA the relay made (`relay serve --tls-self-signed`). */
  caFile?: string;

  private constructor(readonly bundle: string, home: string) {
    this.home = home;
    this.relayDir = join(home, "relay");
  }

  static async create(
    bundle: string,
    parent: string,
    withAgent = true,
    serverFlags: string[] = [],
    serverEnv: Record<string, string> = {},
    /** Serve wss:// with a private CA made for the run (clients and agents get its file). */
    tls = false,
    /** More `relay serve` options (e.g. --idle-heartbeat). */
    relayArgs: string[] = [],
  ): Promise<TetherWorld> {
    const w = new TetherWorld(bundle, await Deno.makeTempDir({ dir: parent, prefix: "tether-" }));
    w.serverFlags = serverFlags;
    try {
      const init = await run(w.argv(["relay", "init", "--data-dir", w.relayDir, "--json"]), {
        env: baseEnv(w.home),
        timeoutMs: 30_000,
      });
      if (init.code !== 0) throw new Error(`relay init failed: ${init.stdout}${init.stderr}`);
      w.keys = JSON.parse(init.stdout);
      w.relay = new Proc(
        w.argv(
          [
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            w.relayDir,
            ...(tls ? ["--tls-self-signed"] : []),
            ...relayArgs,
          ],
          serverFlags,
        ),
        { env: { ...baseEnv(w.home), ...serverEnv } },
      );
      const m = await w.relay.waitFor(/relay listening on (wss?:\/\/\S+)/, "stdout", 30_000);
      w.url = m[1];
      if (tls) w.caFile = join(w.relayDir, "tls", "ca.pem");
      if (withAgent) await w.startAgent(serverFlags, serverEnv);
      return w;
    } catch (e) {
      await w.dispose();
      throw e;
    }
  }

  /** Starts the agent (with the login account's HOME and shell) and waits until it is online. */
  async startAgent(denoFlags: string[] = [], env: Record<string, string> = {}): Promise<void> {
    const acct = await loginAccount();
    this.agent = new Proc(
      this.argv([
        "agent",
        "run",
        "--relay",
        this.url,
        "--name",
        this.machine,
        "--state-dir",
        join(this.home, "agent"),
      ], denoFlags),
      {
        env: {
          ...baseEnv(this.home),
          HOME: acct.home,
          SHELL: acct.shell,
          TETHER_AGENT_KEY: this.keys.agent_key,
          ...(this.caFile ? { TETHER_CA_FILE: this.caFile } : {}),
          ...env,
        },
      },
    );
    await this.agent.waitFor(/online as /, "stderr", 30_000);
  }

  /** argv running the CLI under test. */
  argv(args: string[], denoFlags: string[] = []): string[] {
    return [
      Deno.execPath(),
      "run",
      "-q",
      "-P",
      "--config",
      CONFIG,
      ...denoFlags,
      this.bundle,
      ...args,
    ];
  }

  /** Client env: relay URL and client key set. */
  env(): Record<string, string> {
    return {
      ...baseEnv(this.home),
      TETHER_RELAY: this.url,
      TETHER_API_KEY: this.keys.client_key,
      ...(this.caFile ? { TETHER_CA_FILE: this.caFile } : {}),
    };
  }

  /** argv of `tether exec bench [flags] -- CMD…`. */
  exec(cmd: string[], flags: string[] = [], denoFlags: string[] = []): string[] {
    return this.argv(["exec", this.machine, ...flags, "--", ...cmd], denoFlags);
  }

  async dispose(): Promise<void> {
    await this.agent?.stop();
    await this.relay?.stop();
    if (this.relay?.stderr.includes("internal error")) {
      log(`relay log mentions an internal error:\n${this.relay.stderr.slice(-2000)}`);
    }
    await Deno.remove(this.home, { recursive: true }).catch(() => {});
  }
}
