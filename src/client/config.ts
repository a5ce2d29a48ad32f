/**
 * Client configuration: each setting comes from its flag, else its
 * environment variable, else the config file `tether login` wrote (0600).
 */
import { join } from "node:path";
import { parseDuration } from "../common/duration.ts";
import { TetherError, usage } from "../common/errors.ts";
import { writePrivate } from "../common/files.ts";
import { defaultConfigDir } from "../common/paths.ts";
import { DEFAULT_DIAL_TIMEOUT_MS } from "../protocol/dial.ts";

export const CONFIG_FILE = "config.json";
/** The relay's CA, kept by `login --fingerprint`. */
export const PINNED_CA_FILE = "relay-ca.pem";

export interface GlobalFlags {
  relay?: string;
  apiKey?: string;
  caFile?: string;
  configDir?: string;
  json?: boolean;
  interactive?: boolean;
  insecure?: boolean;
  /** `--dial-timeout`: how long reaching the relay may take. */
  dialTimeout?: string;
}

export interface StoredConfig {
  relay?: string;
  api_key?: string;
  ca_file?: string;
  /** The pinned CA's fingerprint (login --fingerprint), for the record. */
  fingerprint?: string;
}

export interface ClientConfig {
  relay: string;
  apiKey: string;
  caFile?: string;
  configDir: string;
  insecure?: boolean;
  /** Bound on reaching the relay: TCP, TLS, upgrade and handshake together. */
  dialTimeoutMs: number;
  /** Told when a machine's end-to-end key is pinned for the first time. */
  onPinned?: (name: string, fingerprint: string) => void;
}

/** `--dial-timeout`, else TETHER_DIAL_TIMEOUT, else 10 s. */
export function dialTimeoutMs(flags: Pick<GlobalFlags, "dialTimeout">): number {
  const text = flags.dialTimeout || Deno.env.get("TETHER_DIAL_TIMEOUT");
  if (!text) return DEFAULT_DIAL_TIMEOUT_MS;
  const ms = parseDuration(text, flags.dialTimeout ? "--dial-timeout" : "TETHER_DIAL_TIMEOUT");
  if (ms <= 0) throw usage(`--dial-timeout must be more than 0 (got '${text}')`);
  return ms;
}

export function configDir(flags: GlobalFlags): string {
  return flags.configDir || defaultConfigDir();
}

export function readStoredConfig(dir: string): StoredConfig {
  const path = join(dir, CONFIG_FILE);
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return {};
    throw new TetherError("not_configured", `cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const o = JSON.parse(text);
    return typeof o === "object" && o ? o : {};
  } catch {
    throw new TetherError("not_configured", `${path} is not valid JSON`, {
      hint: "fix or delete it, then run `tether login`",
    });
  }
}

export function writeStoredConfig(dir: string, cfg: StoredConfig): string {
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, CONFIG_FILE);
  writePrivate(path, JSON.stringify(cfg, null, 2) + "\n");
  return path;
}

/** The relay URL and client key to use, or `not_configured`. */
export function resolveClientConfig(flags: GlobalFlags): ClientConfig {
  const dir = configDir(flags);
  const stored = readStoredConfig(dir);
  const relay = flags.relay || Deno.env.get("TETHER_RELAY") || stored.relay;
  const apiKey = flags.apiKey || Deno.env.get("TETHER_API_KEY") || stored.api_key;
  const caFile = flags.caFile || Deno.env.get("TETHER_CA_FILE") || stored.ca_file;
  if (!relay || !apiKey) {
    const missing = !relay && !apiKey ? "relay URL and API key" : !relay ? "relay URL" : "API key";
    throw new TetherError("not_configured", `no ${missing} configured`, {
      hint: "run `tether login --relay URL --api-key KEY`, or `tether up` for a local relay " +
        "(or set TETHER_RELAY and TETHER_API_KEY)",
    });
  }
  return {
    relay,
    apiKey,
    caFile: caFile || undefined,
    configDir: dir,
    insecure: flags.insecure,
    dialTimeoutMs: dialTimeoutMs(flags),
  };
}
