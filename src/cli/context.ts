/** What every command shares: global flags, the client configuration, option parsers. */
import type { Command } from "@commander-js/extra-typings";
import { TetherError, usage } from "../common/errors.ts";
import { defaultConfigDir } from "../common/paths.ts";
import { visible } from "../common/text.ts";
import {
  type ClientConfig,
  type GlobalFlags,
  readStoredConfig,
  resolveClientConfig,
} from "../client/config.ts";
import { checkTransport } from "../protocol/dial.ts";
import { RelayClient } from "../client/relay_client.ts";

/** A command's action: it returns its exit status (nothing means 0) or throws. */
export type Run<A extends unknown[]> = (...args: A) => Promise<number | void> | number | void;

/**
 * Turns a command's action into commander's, so that the status it returns reaches
 * main(). `failure`: the exit status a failure of tether itself gets from this command —
 * 255 for exec and connect, as ssh (other commands: 1; bad usage: always 2).
 */
export type Act = <A extends unknown[]>(
  fn: Run<A>,
  opts?: { failure?: number },
) => (...args: A) => Promise<void>;

export interface Globals extends GlobalFlags {
  json: boolean;
  interactive: boolean;
}

// deno-lint-ignore no-explicit-any
export function globals(cmd: Command<any, any, any>): Globals {
  // A command's own option (login --relay) and the global one (tether --relay login) agree.
  const o = cmd.optsWithGlobals() as Record<string, unknown>;
  const json = !!o.json;
  return {
    // --relay may be given several times; a list is kept as its comma-separated form.
    relay: (Array.isArray(o.relay) ? o.relay.join(",") : o.relay as string | undefined) ||
      undefined,
    apiKey: o.apiKey as string | undefined,
    caFile: o.caFile as string | undefined,
    configDir: o.configDir as string | undefined,
    insecure: !!o.insecure,
    dialTimeout: o.dialTimeout as string | undefined,
    json,
    // --json implies --no-interactive; prompts also need a terminal on both ends.
    interactive: o.interactive !== false && !json && Deno.stdin.isTerminal() &&
      Deno.stderr.isTerminal(),
  };
}

/**
 * Refuses plain ws:// to a host that is not loopback unless --insecure, and
 * prints the loud warning when --insecure allows it.
 */
export function warnTransport(relay: string, insecure: boolean | undefined): void {
  const warning = checkTransport(relay, insecure);
  if (warning) console.error(`tether: ${warning}`);
}

/** The client configuration for a command, with the transport policy applied. */
export function clientConfig(g: Globals): ClientConfig {
  const cfg = resolveClientConfig(g);
  warnTransport(cfg.relay, g.insecure);
  // As ssh says "Permanently added … to the list of known hosts", on a terminal.
  cfg.onPinned = (name, fp) => {
    if (Deno.stderr.isTerminal()) {
      console.error(visible(`tether: pinned ${name}'s end-to-end key ${fp} (first use)`));
    }
  };
  return cfg;
}

/** Collects a repeatable option into an array. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Turns `k=v` pairs into an object, or a usage error naming the flag. */
export function parsePairs(pairs: string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    if (i <= 0) throw usage(`${flag} expects KEY=VALUE, got '${p}'`);
    out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}

/** Parses `HOST:PORT` (or `[v6]:PORT`, or a bare port). */
export function parseListen(text: string): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text) ?? /^()()(\d+)$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw usage(`invalid --listen '${text}'`, "use HOST:PORT, e.g. 127.0.0.1:7420");
  }
  return { hostname: m[1] || m[2] || "127.0.0.1", port };
}

/** Resolves on SIGINT or SIGTERM. */
export function untilSignal(): Promise<Deno.Signal> {
  return new Promise((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => resolve(sig));
    }
  });
}

/** The arguments the whole command line was given (to see where `--` was). */
// deno-lint-ignore no-explicit-any
export function rawArgs(cmd: Command<any, any, any>): string[] {
  // deno-lint-ignore no-explicit-any
  let root: Command<any, any, any> = cmd;
  while (root.parent) root = root.parent;
  // Commander keeps them on the program it parsed with (not in its typings).
  return (root as unknown as { rawArgs?: string[] }).rawArgs ?? [];
}

/**
 * The relay an agent (or a CI hold) dials: --relay, TETHER_RELAY, or the stored config;
 * `not_configured` (with `hint`) without one. The transport policy applies.
 */
export function agentRelay(g: Globals, who: string, hint: string): string {
  const relay = g.relay || Deno.env.get("TETHER_RELAY") ||
    readStoredConfig(g.configDir || defaultConfigDir()).relay;
  if (!relay) throw new TetherError("not_configured", `no relay URL for the ${who}`, { hint });
  warnTransport(relay, g.insecure);
  return relay;
}

/** Runs `fn` with a connection to the relay, closed afterwards whatever happens. */
export async function withClient<T>(
  g: Globals,
  fn: (client: RelayClient) => Promise<T>,
): Promise<T> {
  const client = await RelayClient.connect(clientConfig(g));
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

/**
 * Reads an environment variable and removes it: the commands and shells an agent starts
 * inherit its environment, and must not see its enrollment key.
 */
export function takeEnv(name: string): string | undefined {
  const v = Deno.env.get(name) || undefined;
  Deno.env.delete(name);
  return v;
}
