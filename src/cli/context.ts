/** What every command shares: global flags, the exit code, and the failure code. */
import type { Command } from "@commander-js/extra-typings";
import { usage } from "../common/errors.ts";
import { type ClientConfig, type GlobalFlags, resolveClientConfig } from "../client/config.ts";
import { checkTransport } from "../protocol/dial.ts";

export const state = {
  /** Exit code when the command returns normally. */
  exitCode: 0,
  /** Exit code when tether itself fails: 255 for exec and connect (as ssh), 1 otherwise. */
  failureCode: 1,
  json: false,
  /** The argv main() was given (to see where `--` was). */
  argv: [] as string[],
};

export interface Globals extends GlobalFlags {
  json: boolean;
  interactive: boolean;
}

// deno-lint-ignore no-explicit-any
export function globals(cmd: Command<any, any, any>): Globals {
  // A command's own option (login --relay) and the global one (tether --relay login) agree.
  const o = cmd.optsWithGlobals() as Record<string, unknown>;
  const json = !!o.json;
  state.json = json;
  return {
    relay: o.relay as string | undefined,
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
