/**
 * Dialing the relay, for agents and clients alike: WebSocket upgrade with
 * `Authorization: Bearer`, then the hello/welcome version handshake. When the
 * upgrade fails, a plain HTTP request to the same endpoint tells a refused
 * key (401) from a relay that is not there.
 */
import { TetherError } from "../common/errors.ts";
import { Conn, type ConnOptions } from "./conn.ts";
import { type AgentInfo, type Control, parseControl, type Role, type Welcome } from "./messages.ts";
import { PROTOCOL_VERSION, VERSION } from "./version.ts";

export interface DialOptions extends ConnOptions {
  relay: string;
  key: string;
  role: Role;
  agent?: AgentInfo;
  caFile?: string;
  /** Milliseconds for the upgrade plus handshake. */
  timeoutMs?: number;
}

export interface Dialed {
  conn: Conn;
  welcome: Welcome;
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

export function endpointUrl(relay: string, role: Role): string {
  const u = relayBase(relay);
  u.pathname = `${u.pathname.replace(/\/+$/, "")}/v1/${role}`;
  return u.toString();
}

function httpClient(caFile?: string): Deno.HttpClient | undefined {
  if (!caFile) return undefined;
  let pem: string;
  try {
    pem = Deno.readTextFileSync(caFile);
  } catch (e) {
    throw new TetherError("usage", `cannot read CA file ${caFile}: ${(e as Error).message}`);
  }
  return Deno.createHttpClient({ caCerts: [pem] });
}

/** Opens an authenticated, version-checked connection to the relay. */
export async function dial(opts: DialOptions): Promise<Dialed> {
  const url = endpointUrl(opts.relay, opts.role);
  const client = httpClient(opts.caFile);
  const headers = { Authorization: `Bearer ${opts.key}` };
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const ws = new WebSocket(url, { headers, client } as WebSocketOptions);
  ws.binaryType = "arraybuffer";

  const first = await new Promise<Control | "failed">((resolve, reject) => {
    const timer = setTimeout(() => {
      try {
        ws.close();
      } catch { /* ignore */ }
      reject(
        new TetherError("relay_unreachable", `relay at ${opts.relay} did not answer in time`, {
          hint: "check the relay URL and that the relay is running",
        }),
      );
    }, timeoutMs);
    ws.onopen = () => {
      ws.send(JSON.stringify({
        t: "hello",
        v: PROTOCOL_VERSION,
        role: opts.role,
        version: VERSION,
        ...(opts.agent ? { agent: opts.agent } : {}),
      }));
    };
    ws.onmessage = (ev) => {
      clearTimeout(timer);
      try {
        resolve(parseControl(String(ev.data)));
      } catch (e) {
        reject(new TetherError("internal", `bad handshake from relay: ${(e as Error).message}`));
      }
    };
    ws.onerror = () => {};
    ws.onclose = () => {
      clearTimeout(timer);
      resolve("failed");
    };
  });

  if (first === "failed") {
    throw await diagnose(url, opts.relay, headers, client);
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
  const conn = new Conn(ws, { ...opts, label: "relay", heartbeatMs: first.heartbeat_ms });
  return { conn, welcome: first };
}

async function diagnose(
  wsUrl: string,
  relay: string,
  headers: Record<string, string>,
  client?: Deno.HttpClient,
): Promise<TetherError> {
  const httpUrl = wsUrl.replace(/^ws/, "http");
  let res: Response;
  try {
    res = await fetch(httpUrl, { headers, client, signal: AbortSignal.timeout(5000) });
    await res.body?.cancel();
  } catch (e) {
    return new TetherError("relay_unreachable", `cannot reach relay at ${relay}`, {
      hint: `is the relay running and the URL right? (${(e as Error).message.split("\n")[0]})`,
      cause: e,
    });
  }
  if (res.status === 401) {
    return new TetherError("unauthenticated", `the relay at ${relay} refused the key`, {
      hint:
        "check --api-key / TETHER_API_KEY (or TETHER_AGENT_KEY for agents), or run `tether login`",
    });
  }
  if (res.status === 403) {
    return new TetherError(
      "forbidden",
      `the relay at ${relay} refused this key for this endpoint`,
      {
        hint: "client commands need a client key; agents need an agent key",
      },
    );
  }
  if (res.status === 429) {
    const after = res.headers.get("retry-after");
    return new TetherError("rate_limited", `the relay at ${relay} is throttling this address`, {
      hint: `too many failed attempts; retry in ${after ?? "a while"} s`,
    });
  }
  return new TetherError(
    "relay_unreachable",
    `relay at ${relay} refused the WebSocket (HTTP ${res.status})`,
    { hint: "check that the URL points at a tether relay" },
  );
}
