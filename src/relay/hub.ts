/**
 * The relay's live state: which agents are online, which clients are
 * connected, and the routes that join a client's stream to an agent's.
 * The relay never buffers stream bytes itself: a frame is forwarded as it
 * arrives, and each route checks that the sender stays inside the credit
 * its receiver granted, so nothing in flight exceeds the stream windows.
 *
 * A route's far end is an Upstream: the agent itself, or (in a fleet) the relay that
 * holds the agent, over one relay-to-relay connection that carries many streams. On
 * that relay the connection is a client link marked `peer`: it routes to its own agents
 * only (never on to a third relay), and does not audit (the client's relay did).
 */
import { errorBody, machineOffline, TetherError, usage } from "../common/errors.ts";
import { TAG_BYTES } from "../protocol/e2e.ts";
import type { Conn } from "../protocol/conn.ts";
import { CLOSE_AUTH, CLOSE_REPLACED, IDLE_HEARTBEAT_MS } from "../protocol/conn.ts";
import {
  CH_STDIN,
  CH_STDOUT,
  type Frame,
  FRAME_CREDIT,
  FRAME_DATA,
  setFrameSid,
} from "../protocol/frames.ts";
import {
  type AgentInfo,
  checkSessionInfo,
  type Control,
  type MachineView,
  MAX_STREAMS_PER_CONN,
  type Open,
  type OpenKind,
  ProtocolError,
  type Req,
  type SessionInfo,
  type SessionView,
  type WireError,
} from "../protocol/messages.ts";
import type { MachineRow, Principal, ShareRefusal, ShareRow, Store } from "./store.ts";
import { SHARE_DEFAULT_TTL_MS, SHARE_KEY_PREFIX, shareLimitsProblem } from "../protocol/share.ts";
import { newSecret } from "./keys.ts";

interface Route {
  client: ClientLink;
  csid: number;
  /** The agent, or the relay of the fleet that holds it. */
  up: Upstream;
  asid: number;
  /** For messages: the machine's name. */
  machine: string;
  kind: OpenKind;
  /** Bytes the agent may still send toward the client, and at most (the client's window). */
  outCredit: number;
  outWindow: number;
  /** Bytes the client may still send toward the agent, and at most (the agent's window). */
  inCredit: number;
  inWindow: number;
  /** Audit row of this exec or attach (0: audited by the client's relay), and what it carried. */
  auditId: number;
  bytesIn: number;
  bytesOut: number;
  session?: string;
  /**
   * Sealed end to end: each DATA payload carries a 16-byte tag past the bytes it counts
   * for credit, and the stream's messages are `accept` and `sealed`.
   */
  tag: number;
}

/** Where a route's streams go: an agent, or the relay holding one. */
export interface Upstream {
  conn: Conn;
  routes: Map<number, Route>;
  nextSid: number;
  /** Requests forwarded, by our request id. */
  pending: Map<number, (answer: { result?: unknown; error?: WireError }) => void>;
  nextReq: number;
}

export interface AgentLink extends Upstream {
  principal: Principal;
  machineId: string;
  workspace: string;
  info: AgentInfo;
  lastSeen: number;
  /** The last-seen time the store has for it (written at hello, then now and then). */
  storedSeen?: number;
  /** The agent's sessions as it last reported them. */
  sessions: SessionInfo[];
  /** In a fleet: the epoch of this relay's lease on the machine. */
  epoch?: number;
}

/** A relay of the fleet this relay dialed, to reach the agents it holds. */
export interface PeerLink extends Upstream {
  relayId: string;
}

/** Streams one relay-to-relay connection may carry (it carries many clients' streams). */
const MAX_STREAMS_PER_PEER = 65_536;

/** What the hub needs of the fleet (fleet.ts); absent when the relay runs alone. */
export interface FleetRouting {
  readonly relayId: string;
  /** The link to the relay holding the machine's agent, if another relay holds it. */
  upstream(machine: string): Promise<PeerLink | undefined>;
  /** Links to every other live relay (for `sessions`). */
  peers(): Promise<PeerLink[]>;
  /** Takes the machine's lease for this relay; returns its epoch. */
  claim(machine: string): Promise<number>;
  /** Gives the lease up (the agent left). */
  release(machine: string, epoch: number): void;
}

export interface ClientLink {
  conn: Conn;
  principal: Principal;
  workspace: string;
  routes: Map<number, Route>;
  /** Opens waiting for the store, by the client's sid. */
  opening: Map<number, Opening>;
  /** Another relay of the fleet, forwarding its clients' streams to our agents. */
  peer?: boolean;
  /** host:port it connected from (the audit log's `remote`). */
  remote?: string;
}

/** A page may reconnect (resume) until this long after its link expired. */
const SHARE_RESUME_AFTER_EXPIRY_MS = 86_400_000;

/**
 * An open the store has not answered yet. Controls the client sends meanwhile wait
 * here (in order) for the route; a close ends the open instead.
 */
export interface Opening {
  closed: string | undefined;
  queued: Control[];
}

/** Controls held for one pending open; a client that sends more is broken. */
const MAX_QUEUED_CONTROLS = 64;

/** How long `sessions` waits for the agents' lists. */
const GATHER_MS = 3_000;
/** A relay answering another's `sessions` answers this much sooner, so that it is heard. */
const PEER_GATHER_MARGIN_MS = 500;

/** Why a share link's page is refused or cut, as the page shows it. */
export function shareRefused(why: ShareRefusal): WireError {
  const ask = "ask whoever shared it for a new link";
  switch (why) {
    case "unknown":
      return {
        code: "unauthenticated",
        message: "this share link is not valid here (mistyped, or made for another relay)",
        hint: "copy the whole link `tether share` printed, or ask for a new one",
      };
    case "expired":
      return { code: "unauthenticated", message: "this share link has expired", hint: ask };
    case "used":
      return {
        code: "unauthenticated",
        message: "this share link was already used",
        hint: "a link opens as many pages as its --uses allows; ask for a new link",
      };
    case "revoked":
      return { code: "unauthenticated", message: "this share link was revoked", hint: ask };
  }
}

/**
 * What a share link's page may open: its one session, as the link allows (read-only when
 * it says so), and nothing else. The rest of the page's open (its window, size, offset,
 * resume) is kept.
 */
function shareOpen(share: ShareRow, msg: Open): Open {
  if (msg.kind !== "pty") throw new ProtocolError("a share link opens its session only");
  return {
    t: "open",
    sid: msg.sid,
    machine: share.machine_id,
    kind: "pty",
    argv: [],
    stdin: !share.read_only && msg.stdin,
    window: msg.window,
    session: share.session,
    read_only: share.read_only || !!msg.read_only,
    ...(msg.term ? { term: msg.term } : {}),
    ...(msg.cols ? { cols: msg.cols } : {}),
    ...(msg.rows ? { rows: msg.rows } : {}),
    ...(msg.offset !== undefined ? { offset: msg.offset } : {}),
    ...(msg.resume ? { resume: msg.resume } : {}),
    ...(msg.token ? { token: msg.token } : {}),
    // End to end, the agent holds the page to its session, from the grant `tether share`
    // gave it; this outer open only routes.
    ...(msg.e2e ? { e2e: msg.e2e } : {}),
  };
}

/** How the audit says a client's close ended a stream (a close's reason, or a sealed one's end). */
function closedAs(reason: string | undefined): string {
  return ({ lost: "client_lost", kill: "killed" } as Record<string, string>)[reason ?? ""] ??
    "detached";
}

/** The bytes a DATA payload counts for credit: a sealed one's tag does not count. */
function payloadBytes(r: Route, payload: Uint8Array): number {
  const n = payload.length - r.tag;
  if (n < 0) throw new ProtocolError(`stream ${r.csid}: a sealed frame shorter than its tag`);
  return n;
}

function isAgent(up: Upstream): up is AgentLink {
  return "machineId" in up;
}

function sessionView(a: AgentLink, s: SessionInfo): SessionView {
  return {
    id: s.id,
    kind: s.kind ?? "pty",
    machine_id: a.machineId,
    machine: a.info.name,
    created: new Date(s.created).toISOString(),
    command: s.command,
    clients: s.clients,
    attached: s.clients > 0,
    idle_ms: s.idle_ms,
    ...(s.participants ? { participants: s.participants } : {}),
    cols: s.cols,
    rows: s.rows,
    ...(s.state ? { state: s.state } : {}),
    ...(s.exit_code !== undefined ? { exit_code: s.exit_code, signal: s.signal ?? null } : {}),
    ...(s.ended !== undefined ? { ended: new Date(s.ended).toISOString() } : {}),
  };
}

/** How often the last-seen times of online machines are looked at for writing. */
const LAST_SEEN_FLUSH_MS = 30_000;
/** An online machine's last-seen time in the store is refreshed when older than this. */
const LAST_SEEN_STALE_MS = 10 * 60_000;
/** How often offline and retired machines are pruned. */
const PRUNE_EVERY_MS = 10 * 60_000;
/** How long a retired machine (an ended CI hold) stays known to `ci attach`. */
export const RETIRED_KEEP_MS = 60 * 60_000;
/** Default for `relay serve --prune-after`: machines offline this long are forgotten. */
export const DEFAULT_PRUNE_AFTER_MS = 7 * 86_400_000;

export interface HubOptions {
  /** Forget machines offline longer than this; 0 keeps them for ever. */
  pruneAfterMs?: number;
  /** Silence after which an agent's link with no stream is probed (IDLE_HEARTBEAT_MS). */
  idleHeartbeatMs?: number;
}

export class Hub {
  /** Set by the server when the relay is one of a fleet. */
  fleet?: FleetRouting;
  /** Totals for /metrics: stream bytes and frames each way. */
  readonly stats = { bytesToAgent: 0, bytesToClient: 0, framesToAgent: 0, framesToClient: 0 };
  private lastFlush = 0;
  private lastPrune = 0;
  private sweeping = false;
  /** Set while the relay shuts down: new connections are turned away. */
  closing = false;
  readonly agents = new Map<string, AgentLink>();
  readonly clients = new Set<ClientLink>();
  /**
   * Share pages that joined here, by the resume secret each was given: a page whose
   * connection dropped comes back with it (its link's use is spent). Kept in memory, so a
   * page reconnects to the relay it joined on; dropped when the link is revoked, and a
   * day after it expired.
   */
  private readonly shareResumes = new Map<string, ShareRow>();

  constructor(
    readonly store: Store,
    readonly log: (line: string) => void,
    readonly opts: HubOptions = {},
  ) {}

  /** What an agent's welcome says and its link uses: see IDLE_HEARTBEAT_MS. */
  get idleHeartbeatMs(): number {
    return this.opts.idleHeartbeatMs ?? IDLE_HEARTBEAT_MS;
  }

  // ---- agents ----

  addAgent(link: AgentLink): void {
    const old = this.agents.get(link.machineId);
    if (old) {
      this.log(
        `agent ${link.info.name} (${link.machineId}) reconnected; closing its old connection`,
      );
      this.dropAgent(old, "replaced by a new connection");
      old.conn.close(CLOSE_REPLACED, "replaced by a new connection from the same machine");
    }
    this.agents.set(link.machineId, link);
    link.conn.probeIdleAfter(this.idleHeartbeatMs, () => link.routes.size === 0);
    this.log(`agent online: ${link.info.name} (${link.machineId})`);
  }

  dropAgent(link: AgentLink, reason: string): void {
    if (this.agents.get(link.machineId) !== link) return;
    this.agents.delete(link.machineId);
    this.failUpstream(link, reason);
    if (link.epoch !== undefined) this.fleet?.release(link.machineId, link.epoch);
    this.store.touchMachines(new Map([[link.machineId, link.lastSeen]])).catch(() => {
      /* best effort: the store may be closed (shutdown) or failing; the next flush helps */
    });
    this.log(`agent offline: ${link.info.name} (${link.machineId}): ${reason}`);
  }

  /** Closes a local agent's connection: its machine is now held elsewhere. */
  evict(machineId: string, reason: string): void {
    const link = this.agents.get(machineId);
    if (!link) return;
    this.dropAgent(link, reason);
    link.conn.close(CLOSE_REPLACED, reason);
  }

  /**
   * Ends every stream through `up` — resumable: the command may run on, and the client
   * may find it again — and answers its pending requests with machine_offline.
   */
  failUpstream(up: Upstream, reason: string): void {
    for (const r of up.routes.values()) {
      r.client.routes.delete(r.csid);
      this.audit(r, { error: "session_lost" });
      r.client.conn.send({
        t: "error",
        sid: r.csid,
        code: "session_lost",
        message: `lost the connection to machine ${r.machine}: ${reason}`,
        hint: "the command's exit status is unknown; check the machine and retry",
        resumable: true,
      });
    }
    up.routes.clear();
    const pending = [...up.pending.values()];
    up.pending.clear();
    for (const answer of pending) {
      answer({
        error: { code: "machine_offline", message: `the machine went offline: ${reason}` },
      });
    }
  }

  onAgentControl(link: AgentLink, msg: Control): void {
    link.lastSeen = Date.now();
    switch (msg.t) {
      case "sessions":
        link.sessions = msg.sessions;
        return;
      case "req": {
        // An agent that ends for good (a CI hold) leaves the registry.
        if (msg.op !== "retire") {
          link.conn.send({
            t: "res",
            id: msg.id,
            error: { code: "usage", message: `unknown request '${msg.op}'` },
          });
          return;
        }
        this.store.retireMachine(link.machineId).then(() => {
          this.log(`machine ${link.info.name} (${link.machineId}) retired`);
          link.conn.send({ t: "res", id: msg.id, result: { retired: link.machineId } });
        }, (e) => link.conn.send({ t: "res", id: msg.id, error: errorBody(e) }));
        return;
      }
      case "exit":
      case "error":
        if (msg.sid === undefined) {
          this.log(`agent ${link.info.name} reported: ${msg.t === "error" ? msg.message : ""}`);
          return;
        }
        return this.onUpstreamControl(link, msg);
      default:
        return this.onUpstreamControl(link, msg);
    }
  }

  /** What an agent, or a relay holding agents, sends about the streams routed to it. */
  onUpstreamControl(up: Upstream, msg: Control): void {
    switch (msg.t) {
      case "ping":
        return;
      case "started": {
        const r = up.routes.get(msg.sid);
        if (!r) return;
        r.inCredit += msg.window;
        r.inWindow = msg.window;
        r.session = msg.session;
        r.client.conn.send({ ...msg, sid: r.csid });
        return;
      }
      case "challenge":
      case "auth_ok":
      case "notice":
      case "participants":
      case "accept":
      case "eof": {
        const r = up.routes.get(msg.sid);
        if (r) r.client.conn.send({ ...msg, sid: r.csid });
        return;
      }
      case "sealed": {
        // What we may know of it is beside the box: a sealed `started`'s window and session,
        // and the end of the stream (not its exit status).
        const r = up.routes.get(msg.sid);
        if (!r) return;
        if (msg.window !== undefined) {
          r.inCredit += msg.window;
          r.inWindow = msg.window;
        }
        if (msg.session !== undefined) r.session = msg.session;
        if (msg.end !== undefined) {
          this.unroute(r);
          this.audit(r, msg.end === "exit" ? {} : { error: msg.end });
        }
        r.client.conn.send({ ...msg, sid: r.csid });
        return;
      }
      case "res": {
        const answer = up.pending.get(msg.id);
        up.pending.delete(msg.id);
        answer?.(msg.error ? { error: msg.error } : { result: msg.result });
        return;
      }
      case "exit":
      case "error": {
        if (msg.sid === undefined) return;
        const r = up.routes.get(msg.sid);
        if (!r) return;
        this.unroute(r);
        this.audit(
          r,
          msg.t === "exit" ? { exit_code: msg.code, signal: msg.signal ?? null } : {
            error: msg.code,
          },
        );
        r.client.conn.send({ ...msg, sid: r.csid });
        return;
      }
      default:
        throw new ProtocolError(`may not send '${msg.t}' here`);
    }
  }

  onAgentFrame(link: AgentLink, f: Frame, raw: Uint8Array): void {
    link.lastSeen = Date.now();
    this.onUpstreamFrame(link, f, raw);
  }

  onUpstreamFrame(up: Upstream, f: Frame, raw: Uint8Array): void {
    const r = up.routes.get(f.sid);
    if (!r) return; // the stream ended on the other side; late frames are dropped
    if (f.type === FRAME_DATA) {
      if (f.channel === CH_STDIN) throw new ProtocolError("agent sent data on stdin");
      const n = payloadBytes(r, f.payload);
      if (n > r.outCredit) {
        throw new ProtocolError(`stream ${f.sid} exceeded its credit`);
      }
      r.outCredit -= n;
      r.bytesOut += n;
    } else if (f.type === FRAME_CREDIT) {
      // Credit is bytes handed on: never more than the window. More would let the other
      // side buffer without bound here.
      r.inCredit += f.bytes;
      if (r.inCredit > r.inWindow) {
        throw new ProtocolError(`stream ${f.sid} credit beyond its window`);
      }
    }
    this.stats.framesToClient++;
    this.stats.bytesToClient += raw.length;
    setFrameSid(raw, r.csid);
    r.client.conn.sendBinary(raw);
  }

  // ---- clients ----

  addClient(link: ClientLink): void {
    this.clients.add(link);
  }

  dropClient(link: ClientLink): void {
    if (!this.clients.delete(link)) return;
    for (const r of link.routes.values()) {
      r.up.routes.delete(r.asid);
      this.audit(r, { error: "client_lost" });
      r.up.conn.send({ t: "close", sid: r.asid, reason: "lost" });
    }
    link.routes.clear();
  }

  onClientControl(link: ClientLink, msg: Control): void {
    switch (msg.t) {
      case "ping":
        return;
      case "req": {
        if (link.principal.kind === "share") {
          // A share link's page opens its one session; it asks nothing of the relay.
          link.conn.send({
            t: "res",
            id: msg.id,
            error: { code: "forbidden", message: "a share link's page cannot make requests" },
          });
          return;
        }
        this.answer(link, msg).then(
          (answer) => answer && link.conn.send(answer),
          (e) => link.conn.send({ t: "res", id: msg.id, error: errorBody(e) }),
        );
        return;
      }
      case "open":
        this.open(
          link,
          link.principal.kind === "share" ? shareOpen(link.principal.share, msg) : msg,
        );
        return;
      case "eof":
      case "signal":
      case "resize":
      case "auth":
      case "sealed":
      case "close": {
        const opening = link.opening.get(msg.sid);
        if (opening) {
          if (msg.t === "close") {
            opening.closed = closedAs(msg.reason);
          } else if (opening.queued.push(msg) > MAX_QUEUED_CONTROLS) {
            throw new ProtocolError(`stream ${msg.sid}: too many messages before it opened`);
          }
          return;
        }
        const r = link.routes.get(msg.sid);
        if (!r) return;
        // A sealed close says so beside its box ("detach", "kill" or "lost").
        const closing = msg.t === "close"
          ? msg.reason ?? "detach"
          : msg.t === "sealed"
          ? msg.end
          : undefined;
        if (closing !== undefined) {
          this.unroute(r);
          this.audit(r, { error: closedAs(closing) });
        }
        r.up.conn.send({ ...msg, sid: r.asid });
        return;
      }
      default:
        throw new ProtocolError(`client may not send '${msg.t}'`);
    }
  }

  onClientFrame(link: ClientLink, f: Frame, raw: Uint8Array): void {
    const r = link.routes.get(f.sid);
    if (!r) return;
    if (f.type === FRAME_DATA) {
      if (f.channel !== CH_STDIN) throw new ProtocolError("client sent data on an output channel");
      const n = payloadBytes(r, f.payload);
      if (n > r.inCredit) {
        throw new ProtocolError(`stream ${f.sid} exceeded its credit`);
      }
      r.inCredit -= n;
      r.bytesIn += n;
    } else if (f.type === FRAME_CREDIT) {
      if (f.channel !== CH_STDOUT) throw new ProtocolError("client granted credit on stdin");
      r.outCredit += f.bytes;
      if (r.outCredit > r.outWindow) {
        throw new ProtocolError(`stream ${f.sid} credit beyond its window`);
      }
    }
    this.stats.framesToAgent++;
    this.stats.bytesToAgent += raw.length;
    setFrameSid(raw, r.asid);
    r.up.conn.sendBinary(raw);
  }

  /**
   * Checks an open at once (a protocol error closes the connection), then routes it
   * once the store answered: the machine, and the audit row that must be written before
   * anything runs. A client that leaves, or closes the stream, meanwhile is honoured.
   */
  private open(link: ClientLink, msg: Open): void {
    if (link.routes.has(msg.sid) || link.opening.has(msg.sid)) {
      throw new ProtocolError(`stream ${msg.sid} is already open`);
    }
    // Too many streams is that stream's refusal, never the connection's end (which would end
    // every other stream on it). A relay of the fleet carries many clients' streams.
    const cap = link.peer ? MAX_STREAMS_PER_PEER : MAX_STREAMS_PER_CONN;
    if (link.routes.size + link.opening.size >= cap) {
      link.conn.send({
        t: "error",
        sid: msg.sid,
        code: "rate_limited",
        message: `more than ${cap} streams on one connection`,
        hint: "close some, or use another connection",
      });
      return;
    }
    const pending: Opening = { closed: undefined, queued: [] };
    link.opening.set(msg.sid, pending);
    this.route(link, msg, pending).catch((e) => {
      this.log(`open failed: ${(e as Error).message}`);
      link.conn.send({ t: "error", sid: msg.sid, ...errorBody(e) });
    }).finally(() => {
      link.opening.delete(msg.sid);
      // What the client sent meanwhile goes the way it would have gone.
      if (!this.clients.has(link)) return;
      for (const m of pending.queued) link.conn.guard(() => this.onClientControl(link, m));
    });
  }

  private async route(
    link: ClientLink,
    msg: Open,
    pending: Opening,
  ): Promise<void> {
    const fail = (e: WireError) => link.conn.send({ t: "error", sid: msg.sid, ...e });
    // A relay of the fleet says whose stream it forwards; a client is who its key says.
    const workspace = link.peer ? msg.workspace : link.workspace;
    const keyId = link.peer ? msg.client_key : link.principal.keyId;
    if (!workspace || !keyId) {
      throw new ProtocolError("a forwarded open names its workspace and key");
    }
    const row = msg.machine ? await this.store.getMachine(msg.machine) : undefined;
    if (!row || row.workspace !== workspace) {
      return fail({
        code: "machine_not_found",
        message: `no machine '${msg.machine ?? ""}' in this workspace`,
        hint: "list machines with `tether machines`",
      });
    }
    // Our own agent, or the relay that holds it; a forwarded stream never goes further.
    let up: Upstream | undefined = this.agents.get(row.id);
    if (!up && !link.peer && this.fleet && row.held_by !== null) {
      up = await this.fleet.upstream(row.id).catch((e) => {
        this.log(`cannot reach the relay holding ${row.name}: ${(e as Error).message}`);
        return undefined;
      });
    }
    if (!up) return fail(machineOffline(row).toJSON());
    let auditId = 0;
    // A look at the agent's list of sessions runs nothing: not audited, as `sessions` is not.
    if (!link.peer && msg.kind !== "sessions") {
      try {
        auditId = await this.store.auditStart({
          workspace,
          key_id: keyId,
          machine_id: row.id,
          machine_name: row.name,
          kind: msg.kind,
          // A new command's argv; watching an exec (or joining a session) runs nothing new.
          argv: msg.argv.length ? msg.argv : msg.target ? [msg.target] : null,
          session: msg.session ?? null,
          remote: link.remote ?? null,
          read_only: msg.kind === "pty" && !!msg.read_only,
          sealed: !!msg.e2e,
        });
      } catch (e) {
        // Nothing runs unrecorded: a relay that cannot write its audit log refuses, and
        // says so; what only reads (machines, sessions) keeps working.
        this.log(`audit write failed: ${(e as Error).message}`);
        return fail({
          code: "relay_unavailable",
          message: "the relay cannot record this in its audit log: its store cannot be written",
          hint: "the relay's operator must free space in its data dir (its log says more); " +
            "`tether machines` still works",
        });
      }
    }
    const end = (error: string) =>
      auditId && this.store.auditEnd(auditId, {
        bytes_in: 0,
        bytes_out: 0,
        exit_code: null,
        signal: null,
        error,
        session: null,
      }).catch(() => {});
    // While the store answered, the client may have gone or given up, the agent may have left.
    if (!this.clients.has(link)) return void end("client_lost");
    if (pending.closed) return void end(pending.closed);
    if (isAgent(up)) up = this.agents.get(row.id);
    else if (!up.conn.isOpen) up = undefined;
    if (!up) {
      end("machine_offline");
      return fail(machineOffline(row).toJSON());
    }
    if (up.routes.size >= (isAgent(up) ? MAX_STREAMS_PER_CONN : MAX_STREAMS_PER_PEER)) {
      end("rate_limited");
      return fail({
        code: "rate_limited",
        message: `machine ${row.name} has too many open streams`,
      });
    }
    const asid = up.nextSid++;
    const route: Route = {
      client: link,
      csid: msg.sid,
      up,
      asid,
      machine: row.name,
      kind: msg.kind,
      outCredit: msg.window,
      outWindow: msg.window,
      inCredit: 0,
      inWindow: 0,
      auditId,
      bytesIn: 0,
      bytesOut: 0,
      tag: msg.e2e ? TAG_BYTES : 0,
    };
    link.routes.set(msg.sid, route);
    up.routes.set(asid, route);
    up.conn.wake();
    // The agent learns which key opened the stream from us, never from the client; the
    // relay holding the agent learns it, and the workspace, from us.
    const { machine, client_key: _forged, workspace: _ws, ...forward } = msg;
    up.conn.send(
      isAgent(up)
        ? { ...forward, sid: asid, client_key: keyId }
        : { ...forward, machine, sid: asid, client_key: keyId, workspace },
    );
  }

  private audit(
    r: Route,
    end: { exit_code?: number; signal?: string | null; error?: string },
  ): void {
    if (!r.auditId) return; // the client's relay audits a forwarded stream
    this.store.auditEnd(r.auditId, {
      bytes_in: r.bytesIn,
      bytes_out: r.bytesOut,
      exit_code: end.exit_code ?? null,
      signal: end.signal ?? null,
      error: end.error ?? null,
      session: r.session ?? null,
    }).catch((e) => this.log(`audit write failed: ${(e as Error).message}`));
  }

  private unroute(r: Route): void {
    r.client.routes.delete(r.csid);
    r.up.routes.delete(r.asid);
  }

  /** Answers a client request, or forwards it to an agent (then returns undefined). */
  private async answer(link: ClientLink, req: Req): Promise<Control | undefined> {
    const fail = (e: WireError): Control => ({ t: "res", id: req.id, error: e });
    // A relay of the fleet asks for its client's workspace, and only of our own agents.
    const workspace = link.peer ? String(req.args.workspace ?? "") : link.workspace;
    switch (req.op) {
      case "machines":
        return {
          t: "res",
          id: req.id,
          result: await this.machines(workspace, { retired: req.args.retired === true }),
        };
      case "remove_machine": {
        const id = req.args.machine;
        const row = typeof id === "string" ? await this.store.getMachine(id) : undefined;
        if (!row || row.workspace !== workspace) {
          return fail({
            code: "machine_not_found",
            message: `no machine '${String(id)}' in this workspace`,
            hint: "list machines with `tether machines`",
          });
        }
        if (this.agents.has(row.id) || row.held_by !== null) {
          return fail({
            code: "forbidden",
            message: `machine ${row.name} (${row.id.slice(0, 8)}) is online; only an offline ` +
              "machine can be removed",
            hint: "stop its agent first",
          });
        }
        await this.store.removeMachine(row.id);
        this.log(`machine ${row.name} (${row.id}) removed by key ${link.principal.keyId}`);
        return { t: "res", id: req.id, result: { removed: row.id, name: row.name } };
      }
      case "sessions": {
        const machine = typeof req.args.machine === "string" ? req.args.machine : undefined;
        const views = await this.gatherSessions(workspace, machine, !link.peer);
        return { t: "res", id: req.id, result: views };
      }
      case "kill_session": {
        const { machine, session } = req.args;
        if (typeof machine !== "string" || typeof session !== "string") {
          return fail({ code: "usage", message: "kill_session needs machine and session" });
        }
        const agent = this.agents.get(machine);
        let up: Upstream | undefined = agent?.workspace === workspace ? agent : undefined;
        let args: Record<string, unknown> = { session };
        if (!agent && !link.peer && this.fleet) {
          const row = await this.store.getMachine(machine);
          if (row?.workspace === workspace) {
            up = await this.fleet.upstream(machine).catch(() => undefined);
            args = { machine, session, workspace };
          }
        }
        if (!up) {
          return fail({ code: "machine_offline", message: `machine ${machine} is not online` });
        }
        const answer = await new Promise<{ result?: unknown; error?: WireError }>((resolve) =>
          this.ask(up, "kill_session", args, resolve)
        );
        return { t: "res", id: req.id, ...answer };
      }
      case "share_create":
      case "share_list":
      case "share_revoke":
        if (link.peer) break;
        return { t: "res", id: req.id, result: await this.shares(link, req) };
    }
    return fail({ code: "usage", message: `unknown request '${req.op}'` });
  }

  /** `tether share`: makes, lists and revokes the workspace's share links. */
  private async shares(link: ClientLink, req: Req): Promise<unknown> {
    const workspace = link.workspace;
    const a = req.args;
    if (req.op === "share_list") return await this.store.listShares(workspace);
    if (req.op === "share_revoke") {
      const id = String(a.id ?? "");
      if (!(await this.store.revokeShare(workspace, id))) {
        throw new TetherError("session_not_found", `no share link '${id}' in this workspace`, {
          hint: "list them with `tether share --list`",
        });
      }
      // Pages that joined with it, here, end now; other relays of a fleet hear it at once.
      this.cutShare(id);
      return { revoked: id };
    }
    const machine = typeof a.machine === "string" ? a.machine : "";
    const row = await this.store.getMachine(machine);
    if (!row || row.workspace !== workspace) {
      throw new TetherError("machine_not_found", `no machine '${machine}' in this workspace`, {
        hint: "list machines with `tether machines`",
      });
    }
    const ttl = a.ttl_ms === undefined ? SHARE_DEFAULT_TTL_MS : Number(a.ttl_ms);
    const uses = a.uses === undefined ? 1 : Number(a.uses);
    const problem = shareLimitsProblem(ttl, uses);
    if (problem) throw usage(problem);
    if (typeof a.session !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(a.session)) {
      throw usage("a share link names one session");
    }
    const { row: share, token } = await this.store.createShare({
      workspace,
      machine_id: row.id,
      session: a.session,
      read_only: a.read_only === true,
      created_by: link.principal.keyId,
      expires_at: Date.now() + ttl,
      uses_left: uses,
    });
    this.log(`share link ${share.id} for ${row.name} made by key ${link.principal.keyId}`);
    return { ...share, token, machine_name: row.name };
  }

  /** A resume secret for a page that just joined with `row`'s token. */
  newShareResume(row: ShareRow): string {
    const secret = newSecret();
    this.shareResumes.set(secret, row);
    return secret;
  }

  /** The link a page's resume secret stands for, unless it was revoked here meanwhile. */
  shareResume(secret: string): ShareRow | undefined {
    const row = this.shareResumes.get(secret);
    if (!row || Date.now() > row.expires_at + SHARE_RESUME_AFTER_EXPIRY_MS) return undefined;
    return row;
  }

  /** Forgets the resume secrets of link `id` (revoked) and of links long expired. */
  private forgetShareResumes(revoked: (id: string) => boolean): void {
    const now = Date.now();
    for (const [secret, row] of this.shareResumes) {
      if (revoked(row.id) || now > row.expires_at + SHARE_RESUME_AFTER_EXPIRY_MS) {
        this.shareResumes.delete(secret);
      }
    }
  }

  /** Ends the pages of share link `id` connected here. */
  cutShare(id: string): void {
    this.forgetShareResumes((x) => x === id);
    for (const c of this.clients) {
      if (c.principal.keyId === SHARE_KEY_PREFIX + id) {
        c.conn.fail(CLOSE_AUTH, shareRefused("revoked"));
      }
    }
  }

  /** Sends a request upstream; `answer` gets its reply (or machine_offline if it leaves). */
  private ask(
    up: Upstream,
    op: string,
    args: Record<string, unknown>,
    answer: (a: { result?: unknown; error?: WireError }) => void,
  ): number {
    const id = up.nextReq++;
    up.pending.set(id, answer);
    up.conn.send({ t: "req", id, op, args });
    return id;
  }

  /**
   * The sessions and execs of a workspace (or one machine): each of our agents is asked;
   * one that does not answer within GATHER_MS is represented by the PTY sessions it last
   * reported. With `fleet`, the other relays are asked for theirs (a little longer: they
   * wait on their agents the same way).
   */
  private gatherSessions(
    workspace: string,
    machineId: string | undefined,
    fleet: boolean,
  ): Promise<SessionView[]> {
    const agents = [...this.agents.values()].filter((a) =>
      a.workspace === workspace && (!machineId || a.machineId === machineId)
    );
    const fromPeers = fleet && this.fleet
      ? this.fleet.peers().catch((e) => {
        this.log(`cannot reach the fleet for sessions: ${(e as Error).message}`);
        return [];
      })
      : Promise.resolve([]);
    const local = new Promise<SessionView[]>((resolve) => {
      const got = new Map<AgentLink, SessionInfo[]>();
      const asked = new Map<AgentLink, number>();
      const reply = () => {
        clearTimeout(timer);
        // An agent that did not answer in time is not waited for any more.
        for (const [a, id] of asked) if (!got.has(a)) a.pending.delete(id);
        resolve(agents.flatMap((a) => (got.get(a) ?? a.sessions).map((s) => sessionView(a, s))));
      };
      const timer = setTimeout(reply, fleet ? GATHER_MS : GATHER_MS - PEER_GATHER_MARGIN_MS);
      if (agents.length === 0) return reply();
      for (const a of agents) {
        asked.set(
          a,
          this.ask(a, "sessions", {}, (answer) => {
            const list = Array.isArray(answer.result) ? answer.result : undefined;
            try {
              if (list) got.set(a, list.map(checkSessionInfo));
            } catch (e) {
              this.log(
                `agent ${a.info.name} sent a malformed session list: ${(e as Error).message}`,
              );
            }
            if (!got.has(a)) got.set(a, a.sessions);
            if (got.size === agents.length) reply();
          }),
        );
      }
    });
    const remote = fromPeers.then((peers) =>
      Promise.all(peers.map((p) =>
        new Promise<SessionView[]>((resolve) => {
          const timer = setTimeout(() => {
            p.pending.delete(id);
            resolve([]);
          }, GATHER_MS);
          const id = this.ask(p, "sessions", { workspace, machine: machineId }, (answer) => {
            clearTimeout(timer);
            resolve(Array.isArray(answer.result) ? answer.result as SessionView[] : []);
          });
        })
      ))
    );
    return Promise.all([local, remote]).then(([mine, theirs]) => {
      const out = [...mine, ...theirs.flat()];
      out.sort((x, y) => x.machine.localeCompare(y.machine) || x.created.localeCompare(y.created));
      return out;
    });
  }

  async machines(workspace: string, opts: { retired?: boolean } = {}): Promise<MachineView[]> {
    const rows = await this.store.listMachines(workspace, opts);
    const now = Date.now();
    return rows.map((m: MachineRow) => {
      const live = this.agents.get(m.id);
      // Ours: the exact time. Held by another relay of the fleet: it renewed the lease within
      // LEASE_TTL_MS and drops a silent agent, so its renewal bounds the agent's last word.
      const lastSeen = live
        ? live.lastSeen
        : m.held_by !== null
        ? Math.max(m.last_seen, m.held_seen ?? 0)
        : m.last_seen;
      return {
        id: m.id,
        name: m.name,
        hostname: m.hostname,
        // Ours, or held by another relay of the fleet.
        online: !!live || m.held_by !== null,
        last_seen: new Date(lastSeen).toISOString(),
        heartbeat_age_ms: Math.max(0, now - lastSeen),
        labels: m.labels,
        sessions: live ? live.sessions.length : 0,
        os: m.os,
        arch: m.arch,
        version: m.agent_version,
        ...(m.e2e_key ? { key: m.e2e_key } : {}),
        ...(m.retired_at !== null ? { retired: true } : {}),
      };
    });
  }

  /**
   * Persists heartbeat times and key use, forgets long-gone machines, and closes
   * connections whose key was revoked. Each step is best effort: a failing store is
   * logged and tried again next sweep. Sweeps never overlap.
   */
  async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      await this.sweepOnce();
    } finally {
      this.sweeping = false;
    }
  }

  private async sweepOnce(): Promise<void> {
    // Online machines' heartbeat times live in memory; the store gets them now and then
    // (and at disconnect), not on every ping.
    if (Date.now() - this.lastFlush >= LAST_SEEN_FLUSH_MS) {
      await this.flushLastSeen().catch((e) =>
        this.log(`cannot write heartbeat times: ${(e as Error).message}`)
      );
    }
    await this.store.flushKeyUse().catch(() => {/* kept for the next sweep */});
    const pruneAfter = this.opts.pruneAfterMs ?? DEFAULT_PRUNE_AFTER_MS;
    const every = pruneAfter > 0 ? Math.min(PRUNE_EVERY_MS, pruneAfter) : PRUNE_EVERY_MS;
    if (Date.now() - this.lastPrune >= every) await this.prune();
    // One pass over the links, no arrays of them: a relay at rest holds tens of thousands of
    // agents, most enrolled by the same few keys, and sweeps every 2 s.
    const keyIds = new Set<string>();
    for (const a of this.agents.values()) keyIds.add(a.principal.keyId);
    for (const c of this.clients) if (!c.peer) keyIds.add(c.principal.keyId);
    for (const r of this.shareResumes.values()) keyIds.add(SHARE_KEY_PREFIX + r.id);
    let revoked: Set<string>;
    try {
      revoked = new Set(await this.store.revokedAmong([...keyIds]));
    } catch (e) {
      return this.log(`cannot check revoked keys: ${(e as Error).message}`);
    }
    this.forgetShareResumes((id) => revoked.has(SHARE_KEY_PREFIX + id));
    if (revoked.size === 0) return;
    const links: { conn: Conn; principal: Principal }[] = [
      ...this.agents.values(),
      ...[...this.clients].filter((c) => !c.peer),
    ];
    for (const l of links) {
      if (!revoked.has(l.principal.keyId)) continue;
      l.conn.fail(
        CLOSE_AUTH,
        l.principal.kind === "share" ? shareRefused("revoked") : {
          code: "unauthenticated",
          message: "the relay revoked this key",
          hint: "ask the relay's operator for a new key, then run `tether login`",
        },
      );
    }
  }

  /** Forgets machines offline longer than --prune-after, and retired ones after an hour. */
  async prune(): Promise<void> {
    this.lastPrune = Date.now();
    const after = this.opts.pruneAfterMs ?? DEFAULT_PRUNE_AFTER_MS;
    try {
      const gone = await this.store.pruneMachines(
        after > 0 ? Date.now() - after : -Infinity,
        Date.now() - RETIRED_KEEP_MS,
        new Set(this.agents.keys()),
      );
      for (const m of gone) this.log(`forgot machine ${m.name} (${m.id})`);
    } catch (e) {
      this.log(`cannot prune machines: ${(e as Error).message}`);
    }
  }

  /**
   * Writes the heartbeat times the store has let grow older than LAST_SEEN_STALE_MS. An
   * online machine's exact time lives in memory (and, in a fleet, its lease says it is
   * there); the store's serves pruning and `machines` once it is offline, and is written
   * exactly when the agent leaves. So a relay at rest writes a few rows per second however
   * many agents it holds, not one per agent per flush.
   */
  async flushLastSeen(): Promise<void> {
    this.lastFlush = Date.now();
    const seen = new Map<string, number>();
    for (const a of this.agents.values()) {
      if (a.lastSeen - (a.storedSeen ?? 0) >= LAST_SEEN_STALE_MS) seen.set(a.machineId, a.lastSeen);
    }
    if (seen.size === 0) return;
    await this.store.touchMachines(seen);
    for (const [id, at] of seen) {
      const a = this.agents.get(id);
      if (a) a.storedSeen = at;
    }
  }

  closeAll(): void {
    for (const a of [...this.agents.values()]) a.conn.close(1001, "relay shutting down");
    for (const c of [...this.clients]) c.conn.close(1001, "relay shutting down");
  }
}
