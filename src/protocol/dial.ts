/**
 * Dialing the relay, for agents and clients alike: WebSocket upgrade with
 * `Authorization: Bearer`, then the hello/welcome version handshake. When the
 * upgrade is refused, its HTTP status says why (401 key, 403 role, 429 throttled).
 */
import { isFinal, TetherError } from "../common/errors.ts";
import { Conn, type ConnOptions } from "./conn.ts";
import {
  type AgentInfo,
  type Control,
  MAX_RELAY_MESSAGE,
  parseControl,
  type Role,
  type Welcome,
} from "./messages.ts";
import { connectWebSocket, DialTimeout, UpgradeRefused } from "./ws_client.ts";
import { tlsProblem } from "./tls_pin.ts";
import type { WsSocket } from "./ws_socket.ts";
import { PROTOCOL_VERSION, VERSION } from "./version.ts";

/**
 * How long a client waits, by default, to reach a relay and hear its answer
 * (`--dial-timeout` / TETHER_DIAL_TIMEOUT). A relay answers a connection's key check well
 * within it, even when its store does not answer (relay/store_postgres.ts).
 */
export const DEFAULT_DIAL_TIMEOUT_MS = 10_000;

export interface DialOptions extends ConnOptions {
  relay: string;
  key: string;
  role: Role;
  agent?: AgentInfo;
  caFile?: string;
  /** Milliseconds for the upgrade plus handshake. */
  timeoutMs?: number;
  /** Allow plain ws:// to a host that is not loopback. */
  insecure?: boolean;
  /** The Authorization header instead of `Bearer <key>` (a relay's fleet token). */
  authorization?: string;
  /**
   * Kernel keepalive on the connection (common/tcp_options.ts); by default an agent's only,
   * whose idle link the kernel watches between the relay's rare probes (conn.ts).
   */
  keepalive?: boolean;
}

export interface Dialed {
  conn: Conn;
  welcome: Welcome;
  /** The relay that answered (one of a list). */
  relay: string;
}

/** The relays a `--relay` value names: one URL, or several separated by commas. */
export function relayList(relay: string): string[] {
  const list = relay.split(",").map((r) => r.trim()).filter(Boolean);
  if (list.length === 0) throw new TetherError("usage", "no relay URL given");
  for (const r of list) relayBase(r);
  return list;
}

/**
 * The addresses to try for a relay: each of its host name's (IPv4, then IPv6) when it has
 * several, so that a name for a fleet reaches a relay that is up; otherwise the name
 * itself (undefined) for the system to resolve (it knows /etc/hosts, too).
 */
async function addressesOf(relay: string): Promise<(string | undefined)[]> {
  const host = relayBase(relay).hostname.replace(/^\[|\]$/g, "");
  if (/^[\d.]+$/.test(host) || host.includes(":")) return [undefined];
  const found = await Promise.all(
    (["A", "AAAA"] as const).map((t) => Deno.resolveDns(host, t).catch(() => [] as string[])),
  );
  const all = found.flat();
  return all.length > 1 ? all : [undefined];
}

/**
 * Opens an authenticated, version-checked connection to the first relay of the list that
 * answers (and, for a name with several addresses, the first address). A refusal retrying
 * cannot change (a revoked key) ends it at once: every relay of a fleet would say the same.
 */
export async function dial(opts: DialOptions): Promise<Dialed> {
  const relays = relayList(opts.relay);
  // What is reported when none answers: the first thing a relay said (a TLS problem, a 503)
  // tells more than an address where nothing listens.
  let said: TetherError | undefined;
  let silent: TetherError | undefined;
  for (const relay of relays) {
    for (const address of await addressesOf(relay)) {
      try {
        return { ...await dialOne({ ...opts, relay }, address), relay };
      } catch (e) {
        if (!(e instanceof TetherError) || isFinal(e.code)) throw e;
        if (e.cause && e.message.startsWith("cannot reach relay")) silent ??= e;
        else said ??= e;
      }
    }
  }
  throw said ?? silent;
}

/** Normalizes a relay URL (ws, wss, http or https) to its WebSocket base, without a trailing slash. */
export function relayBase(relay: string): URL {
  let u: URL;
  try {
    u = new URL(relay);
  } catch {
    throw new TetherError("usage", `invalid relay URL '${relay}'`, {
      hint: "use a URL like ws://127.0.0.1:7420 or wss://relay.example.com",
    });
  }
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TetherError("usage", `relay URL must be ws:// or wss:// (got '${relay}')`);
  }
  u.pathname = u.pathname.replace(/\/+$/, "");
  u.search = "";
  u.hash = "";
  return u;
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|\[?::1\]?)$/i;

/**
 * Refuses plain ws:// to a host that is not loopback (keys and everything
 * typed would cross the network in clear) unless `insecure`; returns the
 * warning to show when it is allowed that way.
 */
export function checkTransport(relay: string, insecure = false): string | undefined {
  const warnings: string[] = [];
  for (const r of relayList(relay)) {
    const u = relayBase(r);
    if (u.protocol !== "ws:" || LOOPBACK.test(u.hostname)) continue;
    if (!insecure) {
      throw new TetherError(
        "usage",
        `refusing plain ws:// to ${u.hostname}: keys and data would cross the network unencrypted`,
        {
          hint: "use wss:// (relay serve --tls-cert/--tls-key), or pass --insecure if you " +
            "really mean it",
        },
      );
    }
    warnings.push(
      `WARNING: --insecure: talking to ${u.host} over plain ws://; ` +
        "keys, passwords and everything you type cross the network UNENCRYPTED",
    );
  }
  return warnings.length ? warnings.join("\n") : undefined;
}

export function endpointUrl(relay: string, role: Role): string {
  const u = relayBase(relay);
  u.pathname = `${u.pathname.replace(/\/+$/, "")}/v1/${role}`;
  return u.toString();
}

function caCerts(caFile?: string): string[] | undefined {
  if (!caFile) return undefined;
  try {
    return [Deno.readTextFileSync(caFile)];
  } catch (e) {
    throw new TetherError("usage", `cannot read CA file ${caFile}: ${(e as Error).message}`);
  }
}

/** Opens an authenticated, version-checked connection to one relay (at `address`). */
async function dialOne(
  opts: DialOptions,
  address: string | undefined,
): Promise<Omit<Dialed, "relay">> {
  checkTransport(opts.relay, opts.insecure);
  const url = endpointUrl(opts.relay, opts.role);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  let ws: WsSocket;
  try {
    ws = await connectWebSocket(url, {
      headers: { Authorization: opts.authorization ?? `Bearer ${opts.key}` },
      caCerts: caCerts(opts.caFile),
      timeoutMs,
      // Each frame is a view into the read buffer: a client copies the output it keeps,
      // and an agent the input it keeps, into buffers they reuse (agent/input_pool.ts).
      borrowBinary: true,
      address,
      keepalive: opts.keepalive ?? opts.role === "agent",
    });
  } catch (e) {
    if (e instanceof TetherError) throw e;
    if (e instanceof UpgradeRefused) {
      throw refusedError(e.refused.status, opts.relay, e.refused.headers);
    }
    if (e instanceof DialTimeout) {
      throw new TetherError(
        "relay_unreachable",
        `could not reach the relay at ${opts.relay} within ${e.ms / 1000}s`,
        {
          hint: "check the URL and the network path to it; a slow link may need a longer " +
            "--dial-timeout (env TETHER_DIAL_TIMEOUT)",
        },
      );
    }
    const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
    throw tlsProblem(e, opts.relay, host) ??
      new TetherError("relay_unreachable", `cannot reach relay at ${opts.relay}`, {
        hint: `is the relay running and the URL right? (${(e as Error).message.split("\n")[0]})`,
        cause: e,
      });
  }

  const first = await new Promise<Control | "failed">((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.close();
      reject(
        new TetherError("relay_unreachable", `relay at ${opts.relay} did not answer in time`, {
          hint: "check the relay URL and that the relay is running",
        }),
      );
    }, Math.max(0, deadline - Date.now()));
    ws.onmessage = (ev) => {
      clearTimeout(timer);
      try {
        resolve(parseControl(String(ev.data)));
      } catch (e) {
        reject(new TetherError("internal", `bad handshake from relay: ${(e as Error).message}`));
      }
    };
    ws.onclose = () => {
      clearTimeout(timer);
      resolve("failed");
    };
    ws.send(JSON.stringify({
      t: "hello",
      v: PROTOCOL_VERSION,
      role: opts.role,
      version: VERSION,
      ...(opts.agent ? { agent: opts.agent } : {}),
    }));
  });

  if (first === "failed") {
    throw new TetherError("relay_unreachable", `the relay at ${opts.relay} closed the connection`, {
      hint: "check the relay's log",
    });
  }
  if (first.t === "error") {
    ws.close();
    throw new TetherError(first.code, first.message, { hint: first.hint });
  }
  if (first.t !== "welcome") {
    ws.close();
    throw new TetherError("internal", `relay answered '${first.t}' instead of welcome`);
  }
  if (first.v !== PROTOCOL_VERSION) {
    ws.close();
    throw new TetherError(
      "internal",
      `protocol version mismatch: relay speaks v${first.v}, this ${opts.role} speaks v${PROTOCOL_VERSION}`,
      { hint: "run the same tether release on relay, agents and clients" },
    );
  }
  const conn = new Conn(ws, {
    ...opts,
    label: opts.label ?? "relay",
    heartbeatMs: first.heartbeat_ms,
    maxControl: MAX_RELAY_MESSAGE,
  });
  return { conn, welcome: first };
}

function refusedError(status: number, relay: string, headers: Headers): TetherError {
  if (status === 401) {
    return new TetherError("unauthenticated", `the relay at ${relay} refused the key`, {
      hint:
        "check --api-key / TETHER_API_KEY (or TETHER_AGENT_KEY for agents), or run `tether login`",
    });
  }
  if (status === 403) {
    return new TetherError(
      "forbidden",
      `the relay at ${relay} refused this key for this endpoint`,
      {
        hint: "client commands need a client key; agents need an agent key",
      },
    );
  }
  if (status === 429) {
    const after = Number(headers.get("retry-after"));
    const seconds = Number.isFinite(after) && after > 0 ? after : undefined;
    return new TetherError("rate_limited", `the relay at ${relay} is throttling this address`, {
      hint: `too many failed key checks from this address; retry in ${seconds ?? "a few"} s`,
      retryAfterMs: seconds ? seconds * 1000 : undefined,
    });
  }
  if (status === 503) {
    return new TetherError("relay_unavailable", `the relay at ${relay} is not ready`, {
      hint: "its store cannot be used right now (see the relay's log); retry shortly",
    });
  }
  return new TetherError(
    "relay_unreachable",
    `relay at ${relay} refused the WebSocket (HTTP ${status})`,
    { hint: "check that the URL points at a tether relay" },
  );
}
