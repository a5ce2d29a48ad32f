/**
 * The relay's HTTP side: /healthz, and the two WebSocket endpoints. Keys are
 * checked before the upgrade (401 without one), then the first message must
 * be a hello with our protocol version.
 */
import {
  CLOSE_AUTH,
  CLOSE_PROTOCOL,
  CLOSE_UNAVAILABLE,
  CLOSE_VERSION,
  Conn,
  HEARTBEAT_MS,
} from "../protocol/conn.ts";
import {
  type Control,
  ProtocolError,
  type Role,
  type ShareGrant,
  type WireError,
} from "../protocol/messages.ts";
import { PROTOCOL_VERSION, VERSION } from "../protocol/version.ts";
import { errorBody, TetherError } from "../common/errors.ts";
import { parseKey } from "../protocol/keys.ts";
import { type AgentLink, type ClientLink, Hub, shareRefused } from "./hub.ts";
import { Fleet, FleetTokens, newRelayId } from "./fleet.ts";
import type { Principal, ShareRow, Store } from "./store.ts";
import { pageAnswer } from "./share_page.ts";
import { SHARE_KEY_PREFIX, SHARE_PATH } from "../protocol/share.ts";
import { SqliteStore } from "./store_sqlite.ts";
import { FailurePacer } from "../common/throttle.ts";
import { visible } from "../common/text.ts";
import { delay } from "../common/async.ts";
import { type HttpAnswer, type HttpRequest, type HttpServer, serveHttp } from "./http.ts";
import { decodeFrame, type Frame, MAX_BINARY_MESSAGE } from "../protocol/frames.ts";
import { RelayMetrics, timedStore } from "./metrics.ts";
import { MAX_AGENT_MESSAGE, MAX_CONTROL_MESSAGE } from "../protocol/messages.ts";

/**
 * Failed key checks per source address: 10 are answered at once, then 5 a
 * second; a failure that would wait more than 10 s gets 429 at once. A valid
 * key is never delayed or refused for what other keys did from its address
 * (one NAT may hide a revoked user and a fleet of agents).
 */
const KEY_FAILURE_BURST = 10;
const KEY_FAILURES_PER_SECOND = 5;
const KEY_FAILURE_MAX_DELAY_MS = 10_000;

export interface RelayOptions {
  hostname: string;
  port: number;
  dataDir: string;
  tlsCert?: string;
  tlsKey?: string;
  /** PEM certificate chain and key, given directly (relay serve --tls-self-signed). */
  tls?: { cert: string; key: string };
  /** Forget machines offline longer than this (default 7 days; 0 never). */
  pruneAfterMs?: number;
  /** Silence after which an idle agent's link is probed (`--idle-heartbeat`, default 45 s). */
  idleHeartbeatMs?: number;
  log?: (line: string) => void;
  /** The store to use; by default the SQLite database in dataDir. The relay closes it. */
  store?: Store;
  /**
   * One of a fleet on a shared store (it must have `fleet`): the secret the relays prove
   * to each other, and how the others reach this one (default: its own URL).
   */
  /** caFile: a private CA the other relays' wss:// certificates are signed by. */
  fleet?: { secret: string; advertise?: string; caFile?: string };
  /**
   * The URL browsers reach this relay at (`--public-url`): share pages whose origin is
   * another are refused. Without it, a page must come from the host it connects to.
   */
  publicUrl?: string;
}

export interface Relay {
  /** ws:// or wss:// URL clients and agents dial. */
  url: string;
  /** In a fleet: this relay's id, and the URL the others reach it by. */
  relayId?: string;
  advertise?: string;
  dataDir: string;
  port: number;
  hub: Hub;
  store: Store;
  finished: Promise<void>;
  shutdown(): Promise<void>;
}

const HELLO_TIMEOUT_MS = 10_000;
const SWEEP_MS = 2_000;

export async function startRelay(opts: RelayOptions): Promise<Relay> {
  const log = opts.log ?? ((line: string) => console.error(`relay: ${visible(line)}`));
  const store: Store = opts.store ?? new SqliteStore(opts.dataDir);
  const metrics = new RelayMetrics();
  const hub = new Hub(timedStore(store, metrics.storeSeconds), log, {
    pruneAfterMs: opts.pruneAfterMs,
    idleHeartbeatMs: opts.idleHeartbeatMs,
  });
  metrics.watch(hub);
  const tls = !!(opts.tlsCert && opts.tlsKey) || !!opts.tls;
  // In a fleet: this relay's id, and the check of the tokens the others present to it.
  const relayId = opts.fleet ? newRelayId() : undefined;
  const fleetTokens = opts.fleet ? new FleetTokens(opts.fleet.secret, relayId!) : undefined;
  if (opts.fleet && !store.fleet) {
    await store.close();
    throw new TetherError("usage", "a fleet of relays needs a shared store", {
      hint: "give every relay of the fleet the same --store postgres://…",
    });
  }
  const pacer = new FailurePacer(
    KEY_FAILURES_PER_SECOND,
    KEY_FAILURE_BURST,
    KEY_FAILURE_MAX_DELAY_MS,
  );
  let server: HttpServer;
  try {
    server = await serveHttp({
      hostname: opts.hostname,
      port: opts.port,
      cert: opts.tls?.cert ?? (tls ? Deno.readTextFileSync(opts.tlsCert!) : undefined),
      key: opts.tls?.key ?? (tls ? Deno.readTextFileSync(opts.tlsKey!) : undefined),
      // The largest message anyone may send; Conn holds each role to its own limit.
      maxMessage: Math.max(MAX_BINARY_MESSAGE, MAX_CONTROL_MESSAGE, MAX_AGENT_MESSAGE),
      log,
    }, (req) =>
      handle(req, hub, pacer, log, fleetTokens, metrics, {
        tls,
        publicOrigin: opts.publicUrl ? publicOrigin(opts.publicUrl) : undefined,
      }));
  } catch (e) {
    store.close().catch(() => {});
    if (e instanceof Deno.errors.AddrInUse) {
      throw new TetherError("usage", `${opts.hostname}:${opts.port} is already in use`, {
        hint: "another relay (or `tether up`) may be running; pick another --listen port",
      });
    }
    throw e;
  }
  const addr = server.addr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  const url = `${tls ? "wss" : "ws"}://${host}:${addr.port}`;
  let fleet: Fleet | undefined;
  if (opts.fleet && store.fleet) {
    fleet = new Fleet({
      relayId: relayId!,
      url: opts.fleet.advertise ?? url,
      secret: opts.fleet.secret,
      caFile: opts.fleet.caFile,
      store: store.fleet,
      hub,
      log,
    });
    try {
      await fleet.start();
    } catch (e) {
      await server.shutdown();
      await store.close().catch(() => {});
      throw e;
    }
    log(`relay ${fleet.relayId} joined the fleet as ${opts.fleet.advertise ?? url}`);
  }
  const sweep = setInterval(() => {
    hub.sweep().catch((e) => log(`sweep failed: ${(e as Error).message}`));
  }, SWEEP_MS);
  let down: Promise<void> | undefined;
  return {
    url,
    relayId: fleet?.relayId,
    advertise: fleet ? opts.fleet?.advertise ?? url : undefined,
    dataDir: opts.dataDir,
    port: addr.port,
    hub,
    store,
    finished: server.finished,
    shutdown() {
      down ??= (async () => {
        clearInterval(sweep);
        // Stop accepting first, so nobody reconnects to a relay that is going away.
        hub.closing = true;
        const stopped = server.shutdown();
        hub.closeAll();
        await stopped;
        await fleet?.stop();
        await hub.flushLastSeen().catch(() => {/* best effort */});
        await store.close();
      })();
      return down;
    },
  };
}

function handle(
  req: HttpRequest,
  hub: Hub,
  pacer: FailurePacer,
  log: (l: string) => void,
  fleetTokens: FleetTokens | undefined,
  metrics: RelayMetrics,
  web: { tls: boolean; publicOrigin?: string },
): HttpAnswer | Promise<HttpAnswer> {
  if (req.path === "/s" || req.path.startsWith("/s/")) {
    return pageAnswer(req.path, req.headers.get("accept-encoding") ?? "").then((page) =>
      page ?? { status: 404, body: "not found\n" }
    );
  }
  if (req.path === SHARE_PATH) return sharePage(req, hub, pacer, log, metrics, web);
  // Liveness: the process serves. Readiness: it can also write its store.
  if (req.path === "/healthz") return { status: 200, body: "ok\n" };
  if (req.path === "/metrics") {
    return metrics.text().then((body) => ({
      status: 200,
      body,
      headers: { "content-type": metrics.contentType },
    }));
  }
  if (req.path === "/readyz") {
    return readiness(hub).then((problem) =>
      problem ? { status: 503, body: `not ready: ${problem}\n` } : { status: 200, body: "ready\n" }
    );
  }
  const role: Role | undefined = req.path === "/v1/agent"
    ? "agent"
    : req.path === "/v1/client"
    ? "client"
    : req.path === "/v1/relay" && fleetTokens
    ? "relay"
    : undefined;
  if (!role) return { status: 404, body: "not found\n" };

  const auth = req.headers.get("authorization") ?? "";
  if (role === "relay") {
    // Another relay of the fleet: it proves the fleet secret, not a key.
    const relayId = fleetTokens!.check(auth);
    const principal: Principal | null = relayId
      ? { kind: "relay", keyId: `relay:${relayId}`, workspace: "", relayId }
      : null;
    return admit(req, role, principal, hub, pacer, log, metrics);
  }
  const m = /^Bearer\s+(\S+)$/i.exec(auth);
  const parsed = m ? parseKey(m[1]) : null;
  if (!parsed) return admit(req, role, null, hub, pacer, log, metrics);
  return hub.store.authenticate(parsed).then(
    (principal) => admit(req, role, principal, hub, pacer, log, metrics),
    (e) => {
      // The store cannot answer: nobody is refused for it, everybody may retry.
      log(`cannot check a key: ${(e as Error).message}`);
      metrics.authFailures.inc({ code: "relay_unavailable" });
      return {
        status: 503,
        body: "relay_unavailable: the relay cannot check keys right now\n",
        headers: { "retry-after": "2" },
      };
    },
  );
}

/**
 * Records a failed key or link check from `host`: how long to hold its refusal (ms), or -1
 * when that would be too long and the answer is "slow down" at once.
 */
function failedCheck(pacer: FailurePacer, metrics: RelayMetrics, host: string): number {
  const wait = pacer.fail(host);
  metrics.authFailures.inc({ code: wait < 0 ? "rate_limited" : "unauthenticated" });
  return wait;
}

/** Answers a request whose key was checked (`principal` null: missing or invalid). */
function admit(
  req: HttpRequest,
  role: Role,
  principal: Principal | null,
  hub: Hub,
  pacer: FailurePacer,
  log: (l: string) => void,
  metrics: RelayMetrics,
): HttpAnswer | Promise<HttpAnswer> {
  const addr = req.remote;
  if (!principal) {
    const wait = failedCheck(pacer, metrics, addr.hostname);
    if (wait < 0) {
      return {
        status: 429,
        body: "too many failed key checks from this address; slow down\n",
        headers: { "retry-after": String(Math.ceil(KEY_FAILURE_MAX_DELAY_MS / 1000)) },
      };
    }
    const refusal: HttpAnswer = {
      status: 401,
      body: "unauthenticated: missing or invalid key\n",
      headers: { "www-authenticate": "Bearer" },
    };
    return wait > 0 ? delay(wait).then(() => refusal) : refusal;
  }
  const allowed = role === "client"
    ? principal.kind === "client"
    : role === "relay"
    ? principal.kind === "relay"
    : principal.kind === "agent" || principal.kind === "machine";
  if (!allowed) {
    metrics.authFailures.inc({ code: "forbidden" });
    return { status: 403, body: `forbidden: this key cannot be used on /v1/${role}\n` };
  }
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return { status: 426, body: "upgrade required\n", headers: { upgrade: "websocket" } };
  }
  const peer = `${role} ${addr.hostname}:${addr.port}`;
  return {
    upgrade: (ws) =>
      accept(
        // Agents answer `sessions` with their execs too, relays with their agents' lists:
        // more than a client ever sends.
        new Conn(ws, {
          label: peer,
          maxControl: role === "client" ? undefined : MAX_AGENT_MESSAGE * 4,
        }),
        role,
        principal,
        hub,
        log,
        addr,
      ),
  };
}

/**
 * `/v1/share`: a share link's page. A browser cannot send a header of its own, so the
 * token comes as the hello's first message (never in a URL the relay logs), and the key
 * check happens there; the `Origin` the browser sent is checked first. A refusal is sent
 * as an error message on the socket, so the page can show it (an HTTP refusal reaches a
 * page's script only as "the connection failed").
 */
function sharePage(
  req: HttpRequest,
  hub: Hub,
  pacer: FailurePacer,
  log: (l: string) => void,
  metrics: RelayMetrics,
  web: { tls: boolean; publicOrigin?: string },
): HttpAnswer {
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return { status: 426, body: "upgrade required\n", headers: { upgrade: "websocket" } };
  }
  const origin = req.headers.get("origin") ?? "";
  const own = web.publicOrigin ?? `${web.tls ? "https" : "http"}://${req.headers.get("host")}`;
  const refusal: WireError | undefined = origin === own ? undefined : {
    code: "forbidden",
    message: origin
      ? `this page's origin (${origin}) is not the relay's own (${own})`
      : "a share page must be opened in a browser (no Origin header)",
    hint: "open the link exactly as `tether share` printed it",
  };
  const addr = req.remote;
  return {
    upgrade: (ws) => {
      const conn = new Conn(ws, { label: `share page ${addr.hostname}:${addr.port}` });
      if (refusal) {
        log(`share page refused: ${refusal.message}`);
        conn.start({ onControl() {}, onFrame() {}, onClose() {} });
        conn.fail(CLOSE_AUTH, refusal);
        return;
      }
      accept(conn, "client", undefined, hub, log, addr, { pacer, metrics });
    },
  };
}

/**
 * Admits a share page's hello: a link's token (one use spent), or the resume secret an
 * earlier join of the same page was given. Returns the principal, or the refusal.
 */
async function admitShare(
  hub: Hub,
  checks: ShareChecks,
  remote: Deno.NetAddr,
  share: { token?: string; resume?: string },
): Promise<{ principal: Principal; grant: ShareGrant } | WireError> {
  const refused = async (e: WireError): Promise<WireError> => {
    const wait = failedCheck(checks.pacer, checks.metrics, remote.hostname);
    if (wait < 0) {
      return {
        code: "rate_limited",
        message: "too many refused links from this address; wait a few seconds",
      };
    }
    if (wait > 0) await delay(wait);
    return e;
  };
  let row: ShareRow;
  let resume: string;
  if (share.resume) {
    const known = hub.shareResume(share.resume);
    if (!known) {
      return refused({
        code: "unauthenticated",
        message: "this page can no longer reconnect (the relay restarted, or the link ended)",
        hint: "ask whoever shared it for a new link",
      });
    }
    row = known;
    resume = share.resume;
  } else {
    const used = await hub.store.useShare(share.token ?? "");
    if (typeof used === "string") return refused(shareRefused(used));
    row = used;
    resume = hub.newShareResume(row);
  }
  const machine = await hub.store.getMachine(row.machine_id);
  return {
    principal: {
      kind: "share",
      keyId: SHARE_KEY_PREFIX + row.id,
      workspace: row.workspace,
      share: row,
    },
    grant: {
      id: row.id,
      machine: row.machine_id,
      machine_name: machine?.name ?? row.machine_id,
      session: row.session,
      read_only: row.read_only,
      expires_at: row.expires_at,
      resume,
    },
  };
}

/** What pages of share links are checked with: the relay's pacing of failed checks. */
interface ShareChecks {
  pacer: FailurePacer;
  metrics: RelayMetrics;
}

/** The origin of `--public-url` (ws:// and wss:// are taken as http:// and https://). */
function publicOrigin(url: string): string {
  const u = new URL(url);
  u.protocol = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
  return u.origin;
}

/** A connection upgraded; `share` for a share page's, whose principal its hello names. */
function accept(
  conn: Conn,
  role: Role,
  principal: Principal | undefined,
  hub: Hub,
  log: (l: string) => void,
  remote: Deno.NetAddr,
  share?: ShareChecks,
) {
  if (hub.closing) {
    conn.close(1001, "relay shutting down");
    return;
  }
  let link: AgentLink | ClientLink | undefined;
  // While the hello is being answered (the store may be asked), later messages wait here.
  let waiting: (() => void)[] | undefined;
  const helloTimer = setTimeout(() => {
    if (!link) conn.fail(CLOSE_PROTOCOL, { code: "internal", message: "no hello in time" });
  }, HELLO_TIMEOUT_MS);
  const later = (fn: () => void) => {
    if (waiting!.push(fn) > MAX_WAITING_MESSAGES) {
      throw new ProtocolError("too many messages before the welcome");
    }
  };

  const handlers = {
    onControl(msg: Control) {
      if (waiting) return later(() => handlers.onControl(msg));
      if (!link) {
        clearTimeout(helloTimer);
        waiting = [];
        hello(conn, role, principal, msg, hub, log, remote, share).then((met) => {
          const queued = waiting!;
          waiting = undefined;
          // A peer that left while the store answered is not added (nor keeps a lease).
          if (!met || !conn.isOpen) {
            const epoch = met && "epoch" in met.link ? met.link.epoch : undefined;
            if (met && epoch !== undefined) {
              hub.fleet?.release((met.link as AgentLink).machineId, epoch);
            }
            return;
          }
          link = met.link;
          conn.send(met.welcome);
          if (role === "agent") hub.addAgent(link as AgentLink);
          else hub.addClient(link as ClientLink);
          for (const fn of queued) conn.guard(fn);
        }, (e) => {
          waiting = undefined;
          conn.guard(() => {
            throw e;
          });
        });
        return;
      }
      if (role === "agent") hub.onAgentControl(link as AgentLink, msg);
      else hub.onClientControl(link as ClientLink, msg);
    },
    onFrame(f: Frame, raw: Uint8Array) {
      if (waiting) {
        const copy = raw.slice(); // the socket may reuse its buffer
        return later(() => handlers.onFrame(decodeFrame(copy), copy));
      }
      if (!link) throw new ProtocolError("binary frame before hello");
      if (role === "agent") hub.onAgentFrame(link as AgentLink, f, raw);
      else hub.onClientFrame(link as ClientLink, f, raw);
    },
    onClose(reason: string) {
      clearTimeout(helloTimer);
      if (!link) return;
      if (role === "agent") hub.dropAgent(link as AgentLink, reason);
      else hub.dropClient(link as ClientLink);
    },
  };
  conn.start(handlers);
}

/** Messages a peer may send before its welcome; a peer that sends more is broken. */
const MAX_WAITING_MESSAGES = 64;

/** Checks a hello; returns the link to add and the welcome to send, or undefined if refused. */
async function hello(
  conn: Conn,
  role: Role,
  who: Principal | undefined,
  msg: Control,
  hub: Hub,
  log: (l: string) => void,
  remote: Deno.NetAddr,
  share?: ShareChecks,
): Promise<{ link: AgentLink | ClientLink; welcome: Control } | undefined> {
  if (msg.t !== "hello") throw new ProtocolError(`expected hello, got '${msg.t}'`);
  let principal = who;
  let grant: ShareGrant | undefined;
  if (share) {
    if (!msg.share || msg.v !== PROTOCOL_VERSION || msg.role !== "client") {
      conn.fail(CLOSE_PROTOCOL, {
        code: "internal",
        message: "a share page must say hello with its link (this page is out of date?)",
        hint: "reload the page",
      });
      return undefined;
    }
    const admitted = await admitShare(hub, share, remote, msg.share);
    if (!("principal" in admitted)) {
      conn.fail(CLOSE_AUTH, admitted);
      return undefined;
    }
    ({ principal, grant } = admitted);
    log(
      `share link ${grant.id} joined from ${remote.hostname}` +
        (grant.read_only ? " (read-only)" : ""),
    );
  }
  if (!principal) throw new ProtocolError("no principal");
  if (msg.v !== PROTOCOL_VERSION) {
    conn.fail(CLOSE_VERSION, {
      code: "internal",
      message:
        `protocol version mismatch: this relay speaks v${PROTOCOL_VERSION}, the ${role} speaks v${msg.v}`,
      hint: "run the same tether release on relay, agents and clients",
    });
    return undefined;
  }
  if (msg.role !== role) throw new ProtocolError(`hello says ${msg.role} on the ${role} endpoint`);
  const welcome = {
    t: "welcome" as const,
    v: PROTOCOL_VERSION,
    version: VERSION,
    workspace: principal.workspace,
    key_id: principal.keyId,
    heartbeat_ms: HEARTBEAT_MS,
  };
  if (role === "client" || role === "relay") {
    const link: ClientLink = {
      conn,
      principal,
      workspace: principal.workspace,
      routes: new Map(),
      opening: new Map(),
      remote: `${remote.hostname}:${remote.port}`,
      ...(role === "relay" ? { peer: true } : {}),
    };
    return { link, welcome: grant ? { ...welcome, share: grant } : welcome };
  }
  if (!msg.agent) throw new ProtocolError("agent hello without agent info");
  const info = {
    name: msg.agent.name,
    hostname: msg.agent.hostname,
    labels: msg.agent.labels,
    os: msg.agent.os,
    arch: msg.agent.arch,
    agent_version: msg.version,
    e2e_key: msg.agent.key ?? "",
  };
  let machine: { id: string; secret?: string };
  if (principal.kind === "machine") {
    machine = { id: principal.machineId };
    await hub.store.updateMachine(principal.machineId, info).catch((e) => {
      // Best effort: a full disk must not keep a known machine offline.
      log(`machine ${principal.machineId}: ${(e as Error).message}`);
    });
  } else {
    try {
      machine = await hub.store.enrollMachine(principal.workspace, principal.keyId, info);
    } catch (e) {
      // The agent retries: enrollment works again once the store can be written.
      conn.fail(CLOSE_UNAVAILABLE, errorBody(e));
      return undefined;
    }
    log(`enrolled machine ${info.name} (${machine.id}) in workspace ${principal.workspace}`);
  }
  // In a fleet, the machine's lease: other relays route to it through us from now on, and
  // one that still holds an older connection of it lets that go.
  let epoch: number | undefined;
  if (hub.fleet) {
    try {
      epoch = await hub.fleet.claim(machine.id);
    } catch (e) {
      conn.fail(CLOSE_UNAVAILABLE, errorBody(e));
      return undefined;
    }
  }
  const link: AgentLink = {
    conn,
    principal,
    machineId: machine.id,
    workspace: principal.workspace,
    info: msg.agent,
    lastSeen: Date.now(),
    // The hello wrote it (enrollment or the machine's update).
    storedSeen: Date.now(),
    routes: new Map(),
    nextSid: 1,
    sessions: [],
    pending: new Map(),
    nextReq: 1,
    epoch,
  };
  return {
    link,
    welcome: { ...welcome, idle_heartbeat_ms: hub.idleHeartbeatMs, machine },
  };
}

/** Answers to /readyz are reused for a second: each one writes a probe file. */
const READY_CACHE_MS = 1_000;
const lastHealth = new WeakMap<Hub, { at: number; problem: string | undefined }>();

async function readiness(hub: Hub): Promise<string | undefined> {
  if (hub.closing) return "draining: agents and clients are moving to other relays";
  const last = lastHealth.get(hub);
  if (last && Date.now() - last.at < READY_CACHE_MS) return last.problem;
  const problem = await hub.store.health().catch((e) => (e as Error).message);
  lastHealth.set(hub, { at: Date.now(), problem });
  return problem;
}
