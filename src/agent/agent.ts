/**
 * The agent: dials the relay, enrolls once, stays connected (reconnecting
 * with capped, jittered backoff), and runs the streams the relay routes to it.
 */
import { RemoteCommands, type RemoteOptions } from "./remote_command.ts";
import { TcpStream } from "./forward.ts";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { backoff, delay, within } from "../common/async.ts";
import { isFinal, TetherError } from "../common/errors.ts";
import { visible } from "../common/text.ts";
import type { Conn, StreamConn } from "../protocol/conn.ts";
import {
  decodeKey,
  encodeKey,
  fingerprint,
  fromBase64,
  IntegrityError,
  type KeyPair,
  Responder,
  toBase64,
} from "../protocol/e2e.ts";
import {
  type AuthorizedKey,
  loadOrCreateKeyPair,
  parseAuthorizedKeys,
} from "../protocol/e2e_keys.ts";
import { e2ePrologue, openControl, openFrame } from "../protocol/e2e_stream.ts";
import { SealedConn } from "./sealed_conn.ts";
import { SHARE_KEY_PREFIX } from "../protocol/share.ts";
import { dial, relayBase, relayList } from "../protocol/dial.ts";
import { CH_STDIN, type Frame, FRAME_CREDIT, FRAME_DATA } from "../protocol/frames.ts";
import {
  type AgentInfo,
  type Auth,
  type Close,
  type Control,
  type Eof,
  MAX_AGENT_MESSAGE,
  MAX_STREAMS_PER_CONN,
  type Open,
  type OpenKind,
  ProtocolError,
  type Resize,
  type Sealed,
  type SessionInfo,
  type SignalMsg,
  type WireError,
} from "../protocol/messages.ts";
import { MachineLock } from "./password.ts";
import { formatKey } from "../protocol/keys.ts";
import { ExecManager, ExecStream } from "./exec.ts";
import { KILL_GRACE_MS } from "./process_group.ts";
import { Reaper } from "./reaper.ts";
import { loadIdentity, saveIdentity } from "./identity.ts";
import { Attachment, DEFAULT_RING_BYTES, SessionManager, type SessionOptions } from "./session.ts";

/** What the agent routes a stream's messages to: an exec process or a session attachment. */
interface AgentStream {
  /** `payload` is a view of the link's read buffer: valid only during the call. */
  onStdin(payload: Uint8Array, offset: number): void;
  onCredit(bytes: number): void;
  onEof(): void;
  onSignal(sig: string): void;
  onResize(cols: number, rows: number): void;
  abort(reason?: "detach" | "lost" | "kill"): void;
}

export interface AgentOptions {
  relay: string;
  /** Enrollment key (TETHER_AGENT_KEY); needed only until the machine has an identity. */
  enrollKey?: string;
  stateDir: string;
  name?: string;
  labels?: Record<string, string>;
  caFile?: string;
  /** Bound on each dial of the relay (default 10 s). */
  dialTimeoutMs?: number;
  /** Allow plain ws:// to a relay that is not on loopback. */
  insecure?: boolean;
  /** Refuse to reuse an identity enrolled with another relay URL (default true). */
  bindIdentityToRelay?: boolean;
  log?: (line: string) => void;
  /** Called each time the agent is online (after every (re)connect). */
  onOnline?: (machine: { id: string; name: string }) => void;
  sessions?: SessionOptions;
  /** How long an ended exec's output and status are kept (default 1 h). */
  execRetentionMs?: number;
  /**
   * Where commands and sessions start unless the client gives --cwd (a relative
   * --cwd is taken from here). Default: $HOME.
   */
  workdir?: string;
  /** Called whenever sessions or their attached clients change. */
  onSessions?: (sessions: SessionInfo[]) => void;
  /** Refuse `tether forward` and `tether proxy` (agent run --no-forward). */
  noForward?: boolean;
  /** `tether ssh`: other users (as root) and the sftp server. */
  remote?: RemoteOptions;
  /** `--authorized-keys FILE`: only clients with these keys may open streams. */
  authorizedKeys?: string;
  /** `--audit-log FILE`: a JSON line per stream started. */
  auditLog?: string;
  /** Called when a client starts a stream (after any password check). */
  onStream?: (kind: OpenKind) => void;
}

const BACKOFF_MIN_MS = 250;
const SESSION_REPORT_MS = 5_000;
const BACKOFF_MAX_MS = 5_000;
/** Whether two --relay values (each one URL or a list) name a relay in common. */
function sameRelays(a: string, b: string): boolean {
  const norm = (r: string) => relayBase(r).toString();
  const ours = new Set(relayList(a).map(norm));
  return relayList(b).some((r) => ours.has(norm(r)));
}

/** The longest `Retry-After` from the relay the agent honours. */
const RETRY_AFTER_MAX_MS = 60_000;
/** How long a retiring agent waits for the relay to confirm. */
const RETIRE_WAIT_MS = 2_000;
/** How long a stopping agent lets running commands finish before it ends them. */
const EXEC_DRAIN_MS = 1_000;

/** Where commands start by default: $HOME, else `/`. */
export function defaultWorkdir(): string {
  return Deno.env.get("HOME") || "/";
}

export function agentInfo(opts: Pick<AgentOptions, "name" | "labels">): AgentInfo {
  const host = hostname();
  return {
    name: opts.name || host,
    hostname: host,
    labels: opts.labels ?? {},
    os: Deno.build.os,
    arch: Deno.build.arch,
  };
}

export class Agent {
  private conn?: Conn;
  private streams = new Map<number, AgentStream>();
  /** Streams waiting for the answer to a password challenge. */
  private pendingAuth = new Map<number, { open: Open; nonce: string; client?: string }>();
  /** Share links' page keys (fingerprints) and the session each may join. */
  private grants = new Map<
    string,
    { session: string; readOnly: boolean; expires: number; attaches: Set<string> }
  >();
  /** End-to-end streams, by sid: from the handshake until the stream ends. */
  private e2e = new Map<number, E2eStream>();
  /** This machine's end-to-end key pair (`<state-dir>/e2e_key.json`). */
  readonly keys: KeyPair;
  private readonly authorized: FileCache<Map<string, AuthorizedKey>>;
  readonly lock: MachineLock;
  readonly sessions: SessionManager;
  readonly execs: ExecManager;
  private reaper?: Reaper;
  private stopped = false;
  /** Requests the agent made to the relay, by id. */
  private requests = new Map<number, (r: { result?: unknown; error?: WireError }) => void>();
  private nextReq = 1;
  private wake?: () => void;
  readonly info: AgentInfo;
  readonly workdir: string;
  private readonly remote: RemoteCommands;
  private readonly log: (line: string) => void;
  machineId?: string;

  constructor(private readonly opts: AgentOptions) {
    Deno.mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
    this.keys = loadOrCreateKeyPair(join(opts.stateDir, E2E_KEY_FILE));
    this.info = { ...agentInfo(opts), key: encodeKey(this.keys.pub) };
    this.authorized = new FileCache(
      opts.authorizedKeys ?? "",
      (text) => parseAuthorizedKeys(text, opts.authorizedKeys ?? ""),
    );
    this.workdir = opts.workdir ?? defaultWorkdir();
    this.remote = new RemoteCommands(opts.remote ?? {}, Deno.env.get("SHELL") || "/bin/sh");
    this.log = opts.log ?? ((l) => console.error(`agent: ${visible(l)}`));
    const groups = {
      started: (pid: number) => this.reaper?.add(pid),
      ended: (pid: number) => this.reaper?.remove(pid),
    };
    this.sessions = new SessionManager(opts.sessions ?? {}, {
      changed: (list) => {
        this.conn?.send({ t: "sessions", sessions: sealedCommands(list) });
        opts.onSessions?.(list);
      },
      left: (a) => {
        if (this.streams.get(a.sid) === a) this.streams.delete(a.sid);
      },
      ...groups,
    });
    this.execs = new ExecManager({
      ringBytes: opts.sessions?.ringBytes ?? DEFAULT_RING_BYTES,
      retentionMs: opts.execRetentionMs,
      stateDir: opts.stateDir,
      log: this.log,
      watcherDone: (w) => {
        const s = this.streams.get(w.sid);
        if (s instanceof ExecStream && s.watcher === w) this.streams.delete(w.sid);
      },
      ...groups,
    });
    this.lock = new MachineLock(opts.stateDir, () => this.machineId ?? "");
  }

  /** The fingerprint of this machine's end-to-end key, as clients pin it. */
  get fingerprint(): string {
    return fingerprint(this.keys.pub);
  }

  /**
   * `agent run --audit-log FILE`: one JSON line per stream started, with what only the
   * agent sees of an end-to-end stream (argv, cwd, the client's key). Returns a problem.
   */
  private auditStart(open: Open, client?: string): string | undefined {
    const path = this.opts.auditLog;
    if (!path) return undefined;
    const entry = {
      time: new Date().toISOString(),
      machine: this.info.name,
      kind: open.kind,
      ...(open.kind === "tcp" ? { target: open.target } : { argv: open.argv }),
      ...(open.cwd ? { cwd: open.cwd } : {}),
      ...(open.session ? { session: open.session } : {}),
      ...(open.user ? { user: open.user } : {}),
      ...(open.subsystem ? { subsystem: open.subsystem } : {}),
      ...(open.shell ? { shell: true } : {}),
      ...(open.read_only ? { read_only: true } : {}),
      key: open.client_key ?? null,
      client: client ?? null,
      e2e: client !== undefined,
    };
    try {
      Deno.writeTextFileSync(path, JSON.stringify(entry) + "\n", { append: true, mode: 0o600 });
      return undefined;
    } catch (e) {
      this.log(`audit log ${path}: ${(e as Error).message}`);
      return `the agent of ${this.info.name} cannot write its audit log, so it runs nothing`;
    }
  }

  /** Runs until stop(); throws only on errors that retrying cannot fix. */
  async run(): Promise<void> {
    // What this agent runs dies with it, however it dies (reaper.ts).
    this.reaper ??= new Reaper(this.log);
    this.execs.restore();
    let attempt = 0;
    while (!this.stopped) {
      let closed: Promise<string>;
      try {
        ({ closed } = await this.connect());
        attempt = 0;
      } catch (e) {
        // Only a refusal of who we are ends the agent; anything it can outlive (an
        // unreachable or restarting relay, throttling, a 5xx) is retried.
        if (!(e instanceof TetherError) || isFinal(e.code)) throw e;
        attempt++;
        const delay = Math.max(
          backoff(attempt, BACKOFF_MIN_MS, BACKOFF_MAX_MS),
          Math.min(e.retryAfterMs ?? 0, RETRY_AFTER_MAX_MS),
        );
        if (attempt === 1 || attempt % 10 === 0) {
          this.log(`${e.message}; retrying in ${(delay / 1000).toFixed(1)}s`);
        }
        await this.sleep(delay);
        continue;
      }
      const reason = await closed;
      if (this.stopped) break;
      this.log(`disconnected from relay (${reason}); reconnecting`);
      await this.sleep(backoff(1, BACKOFF_MIN_MS, BACKOFF_MAX_MS));
    }
  }

  /**
   * Stops. Running commands get EXEC_DRAIN_MS to finish by themselves, then
   * their process groups are ended; either way each reports its exit status
   * (a command that ended the agent's hold, such as `touch` of a CI continue
   * file, must not look lost). Sessions are ended the same way, then the
   * connection closes (the relay shows the machine offline at once).
   */
  async stop(opts: { retire?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const running = this.execs.running;
    const ended = Promise.all(running.map((e) => e.ended));
    if (!await within(EXEC_DRAIN_MS, ended)) {
      for (const e of running) e.kill();
      await within(KILL_GRACE_MS + EXEC_DRAIN_MS, ended);
    }
    await this.sessions.closeAll();
    if (opts.retire && this.conn?.isOpen) {
      // An agent that ends for good (a CI hold) leaves the registry, so its name does not
      // linger as an offline machine.
      const r = await Promise.race([this.request("retire"), delay(RETIRE_WAIT_MS)]);
      if (!r || r.error) {
        this.log(`could not leave the registry: ${r?.error?.message ?? "no answer"}`);
      }
    }
    // Let the exit statuses the sessions just sent leave before the socket closes.
    if (this.conn?.isOpen) await this.conn.drain(0);
    this.conn?.close(1000, "agent stopping");
    for (const s of this.streams.values()) s.abort("lost");
    this.execs.close();
    // Whatever did not end in time is the reaper's to end.
    await this.reaper?.close();
    this.wake?.();
  }

  /** Asks the relay something; resolves with its answer (or an error when the connection ends). */
  private request(op: string): Promise<{ result?: unknown; error?: WireError }> {
    const id = this.nextReq++;
    return new Promise((resolve) => {
      this.requests.set(id, resolve);
      this.conn?.send({ t: "req", id, op, args: {} });
    });
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    });
  }

  /** Connects once; resolves with a promise of the close reason. */
  private async connect(): Promise<{ closed: Promise<string> }> {
    const identity = loadIdentity(this.opts.stateDir);
    const bound = this.opts.bindIdentityToRelay ?? true;
    // An identity is good for the relay (or fleet) it was enrolled with: a list of relays
    // that names one of the same relays is the same fleet.
    const usable = identity &&
      (!bound || !identity.relay || sameRelays(identity.relay, this.opts.relay));
    const key = usable ? formatKey("machine", identity.id, identity.secret) : this.opts.enrollKey;
    if (!key) {
      throw new TetherError("not_configured", "this agent has no enrollment key", {
        hint: "set TETHER_AGENT_KEY to an agent key (`tether relay keys create --role agent`)",
      });
    }
    let dialed;
    try {
      dialed = await dial({
        relay: this.opts.relay,
        key,
        role: "agent",
        agent: this.info,
        caFile: this.opts.caFile,
        timeoutMs: this.opts.dialTimeoutMs,
        insecure: this.opts.insecure,
      });
    } catch (e) {
      if (usable && e instanceof TetherError && e.code === "unauthenticated") {
        throw new TetherError(
          "unauthenticated",
          `the relay refused machine identity ${identity.id}`,
          {
            hint:
              `the machine or its enrollment key was removed; delete ${this.opts.stateDir}/identity.json ` +
              "and run again with TETHER_AGENT_KEY to enroll anew",
          },
        );
      }
      throw e;
    }
    const { conn, welcome } = dialed;
    const machine = welcome.machine;
    if (!machine) throw new TetherError("internal", "relay did not say which machine this is");
    if (machine.secret) {
      saveIdentity(this.opts.stateDir, {
        id: machine.id,
        secret: machine.secret,
        relay: bound ? this.opts.relay : "",
      });
    }
    this.machineId = machine.id;
    this.conn = conn;
    // With nothing open, probe the relay only after its own idle probe would have come.
    if (welcome.idle_heartbeat_ms) {
      conn.probeIdleAfter(
        welcome.idle_heartbeat_ms + welcome.heartbeat_ms,
        () => this.streams.size === 0 && this.pendingAuth.size === 0 && this.e2e.size === 0,
      );
    }
    if (this.stopped) conn.close(1000, "agent stopping");
    const closed = new Promise<string>((resolve) => {
      conn.start({
        onControl: (msg) => this.onControl(conn, msg),
        onFrame: (f, raw) => this.onFrame(f, raw),
        onClose: (reason) => {
          clearInterval(report);
          this.pendingAuth.clear();
          this.e2e.clear();
          for (const r of this.requests.values()) {
            r({ error: { code: "relay_unreachable", message: reason } });
          }
          this.requests.clear();
          const streams = [...this.streams.values()];
          this.streams.clear();
          for (const s of streams) s.abort("lost");
          resolve(reason);
        },
      });
    });
    conn.send({ t: "sessions", sessions: sealedCommands(this.sessions.list()) });
    // Idle times move on; refresh them while there are sessions.
    const report = setInterval(() => {
      if (this.sessions.sessions.size > 0) {
        conn.send({ t: "sessions", sessions: sealedCommands(this.sessions.list()) });
      }
    }, SESSION_REPORT_MS);
    this.log(
      `online as ${this.info.name} (${machine.id}) via ${dialed.relay}, key ${this.fingerprint}`,
    );
    this.opts.onOnline?.({ id: machine.id, name: this.info.name });
    return { closed };
  }

  private onControl(conn: Conn, msg: Control): void {
    switch (msg.t) {
      case "ping":
      case "welcome":
        return;
      case "open":
        if (this.streams.has(msg.sid) || this.pendingAuth.has(msg.sid) || this.e2e.has(msg.sid)) {
          throw new ProtocolError(`stream ${msg.sid} already open`);
        }
        if (msg.e2e) return this.handshake(conn, msg);
        if (this.opts.authorizedKeys) {
          conn.send({
            t: "error",
            sid: msg.sid,
            code: "forbidden",
            message: `${this.info.name} admits only end-to-end clients in its authorized keys`,
          });
          return;
        }
        return this.opened(conn, msg);
      case "sealed":
        return this.onSealed(msg);
      case "eof":
      case "signal":
      case "resize":
      case "auth":
      case "close": {
        const st = this.e2e.get(msg.sid);
        if (!st) return this.onStreamControl(conn, msg);
        // The relay's own word on an end-to-end stream: only that its client is gone.
        if (msg.t === "close") return this.onStreamControl(st.sc, { ...msg, reason: "lost" });
        return this.integrityFailed(st, `the relay sent '${msg.t}' outside the encryption`);
      }
      case "req": {
        if (msg.op === "sessions") {
          conn.send({ t: "res", id: msg.id, result: sealedCommands(this.sessionList()) });
        } else if (msg.op === "kill_session" && this.opts.authorizedKeys) {
          // The relay's word alone ends nothing here: clients kill end to end (kind "kill").
          conn.send({
            t: "res",
            id: msg.id,
            error: {
              code: "forbidden",
              message: `${this.info.name} takes kills only end to end from its authorized keys`,
            },
          });
        } else if (msg.op === "kill_session" && typeof msg.args.session === "string") {
          const ok = this.sessions.kill(msg.args.session) ||
            this.execs.kill(msg.args.session);
          conn.send(
            ok ? { t: "res", id: msg.id, result: { killed: msg.args.session } } : {
              t: "res",
              id: msg.id,
              error: {
                code: "session_not_found",
                message: `no session '${msg.args.session}' on ${this.info.name}`,
              },
            },
          );
        } else {
          conn.send({
            t: "res",
            id: msg.id,
            error: { code: "usage", message: `unknown request '${msg.op}'` },
          });
        }
        return;
      }
      case "res": {
        const r = this.requests.get(msg.id);
        this.requests.delete(msg.id);
        r?.(msg);
        return;
      }
      case "error":
        if (msg.sid === undefined) this.log(`relay: ${msg.message}`);
        return;
      default:
        throw new ProtocolError(`relay may not send '${msg.t}' to an agent`);
    }
  }

  /** An open, end to end or not, once its sender is known: a password check, then the stream. */
  private opened(sc: StreamConn, msg: Open, client?: string): void {
    if (msg.kind === "kill") {
      // `tether sessions kill`, end to end: what the relay could ask in the clear, sealed.
      if (client === undefined || !msg.session) {
        sc.send({ t: "error", sid: msg.sid, code: "forbidden", message: "only end to end" });
        return;
      }
      const ok = this.sessions.kill(msg.session) || this.execs.kill(msg.session);
      sc.send(
        ok ? { t: "exit", sid: msg.sid, code: 0 } : {
          t: "error",
          sid: msg.sid,
          code: "session_not_found",
          message: `no session '${msg.session}' on ${this.info.name}`,
        },
      );
      return;
    }
    if (msg.kind === "sessions") {
      // The command lines of sessions and execs, which the relay is not told (`tether
      // sessions` fills them in from here); only ever sealed, as the relay could ask too.
      if (client === undefined) {
        sc.send({ t: "error", sid: msg.sid, code: "forbidden", message: "only end to end" });
        return;
      }
      // Sealed, it grows by a third (base64): it must still fit what the relay takes.
      sc.send({
        t: "sessions",
        sid: msg.sid,
        sessions: this.sessionList(SEALED_SESSIONS_BUDGET),
      } as Control);
      sc.send({ t: "exit", sid: msg.sid, code: 0 });
      return;
    }
    if (this.lock.enabled && !this.lock.checkToken(msg.token, msg.client_key)) {
      const key = msg.client_key ?? "unknown";
      const wait = this.lock.lockedFor(key);
      if (wait > 0) {
        sc.send({ t: "error", sid: msg.sid, ...rateLimited(wait) });
        return;
      }
      const ch = this.lock.challenge();
      this.pendingAuth.set(msg.sid, { open: msg, nonce: ch.nonce, client });
      sc.send({
        t: "challenge",
        sid: msg.sid,
        ...ch,
        ...(msg.token ? { token_rejected: true } : {}),
      });
      return;
    }
    this.startStream(sc, msg, client);
  }

  /** What a client sends about one of its streams, opened in the clear or out of a seal. */
  private onStreamControl(sc: StreamConn, msg: Eof | SignalMsg | Resize | Auth | Close): void {
    switch (msg.t) {
      case "auth": {
        const pending = this.pendingAuth.get(msg.sid);
        if (!pending) return;
        this.pendingAuth.delete(msg.sid);
        const key = pending.open.client_key ?? "unknown";
        const wait = this.lock.lockedFor(key);
        if (wait > 0) {
          sc.send({ t: "error", sid: msg.sid, ...rateLimited(wait) });
          return;
        }
        if (!this.lock.verify(pending.nonce, msg.proof)) {
          this.lock.recordFailure(key);
          this.log(`wrong password for stream ${msg.sid} (key ${key})`);
          sc.send({
            t: "error",
            sid: msg.sid,
            code: "password_invalid",
            message: `wrong password for machine ${this.info.name}`,
            hint:
              "check --password, TETHER_PASSWORD or the stored password (`tether password save`)",
          });
          return;
        }
        this.lock.recordSuccess(key);
        sc.send({ t: "auth_ok", sid: msg.sid, ...this.lock.issueToken(key) });
        this.startStream(sc, pending.open, pending.client);
        return;
      }
      case "eof":
        this.streams.get(msg.sid)?.onEof();
        return;
      case "signal":
        this.streams.get(msg.sid)?.onSignal(msg.signal);
        return;
      case "resize":
        this.streams.get(msg.sid)?.onResize(msg.cols, msg.rows);
        return;
      case "close": {
        this.pendingAuth.delete(msg.sid);
        this.e2e.delete(msg.sid);
        const s = this.streams.get(msg.sid);
        this.streams.delete(msg.sid);
        s?.abort(msg.reason ?? "detach");
        return;
      }
    }
  }

  /**
   * An end-to-end open: message 1 of the handshake. Answered with message 2; nothing runs
   * until the client's first sealed message (the real open) opens, which proves the
   * handshake live (a replayed message 1 gets an answer nobody can use).
   */
  private handshake(conn: Conn, msg: Open): void {
    const refuse = (
      code: "integrity" | "forbidden" | "rate_limited",
      message: string,
      hint?: string,
    ) => conn.send({ t: "error", sid: msg.sid, code, message, ...(hint ? { hint } : {}) });
    // Handshakes nobody finishes (a relay replaying old ones) cannot pile up.
    if ([...this.e2e.values()].filter((st) => !st.opened).length >= MAX_STREAMS_PER_CONN) {
      return refuse("rate_limited", "too many end-to-end handshakes under way");
    }
    let responder: Responder;
    try {
      responder = Responder.read(
        msg.e2e!.suite,
        e2ePrologue(this.machineId ?? ""),
        this.keys,
        fromBase64(msg.e2e!.msg),
      );
    } catch (e) {
      this.log(`stream ${msg.sid}: end-to-end handshake failed: ${(e as Error).message}`);
      return refuse(
        "integrity",
        `the end-to-end handshake with ${this.info.name} did not verify`,
        `the client expected another key for this machine, or the relay altered the handshake`,
      );
    }
    const client = fingerprint(responder.remoteStatic);
    if (this.opts.authorizedKeys) {
      let keys;
      try {
        keys = this.authorized.get();
      } catch (e) {
        this.log((e as Error).message);
        return refuse("forbidden", `${this.info.name} cannot read its authorized keys`);
      }
      if (!keys.has(client) && !this.grantFor(client)) {
        this.log(`stream ${msg.sid}: refused key ${client} (not in the authorized keys)`);
        return refuse(
          "forbidden",
          `your key ${client} is not among ${this.info.name}'s authorized keys`,
          "add the line `tether whoami` prints to the file given to `agent run --authorized-keys`",
        );
      }
    }
    const { message, transport } = responder.reply();
    const st: E2eStream = {
      outer: msg,
      client,
      sc: new SealedConn(conn, msg.sid, transport, () => {
        // Its last message went: the stream is over, and so are its keys.
        if (this.e2e.get(msg.sid) === st) this.e2e.delete(msg.sid);
      }),
      opened: false,
    };
    this.e2e.set(msg.sid, st);
    conn.send({ t: "accept", sid: msg.sid, e2e: toBase64(message) });
    // A handshake its client never finishes is forgotten.
    setTimeout(() => {
      if (this.e2e.get(msg.sid) === st && !st.opened) this.e2e.delete(msg.sid);
    }, HANDSHAKE_WAIT_MS);
  }

  private onSealed(msg: Sealed): void {
    const st = this.e2e.get(msg.sid);
    if (!st) return; // ended meanwhile
    let inner: Control;
    try {
      inner = openControl(st.sc.transport, msg);
    } catch (e) {
      if (e instanceof IntegrityError) return this.integrityFailed(st, e.message);
      // Sealed, so the relay could not check it: a malformed message ends its stream only.
      if (e instanceof ProtocolError) return this.integrityFailed(st, e.message, "internal");
      throw e;
    }
    if (!st.opened) {
      // The first sealed message is the real open; the outer one only routed it.
      if (inner.t !== "open" || inner.kind !== st.outer.kind || inner.e2e) {
        return this.integrityFailed(st, "the stream did not start with its open");
      }
      st.opened = true;
      const { machine: _m, workspace: _w, ...rest } = inner;
      const open: Open = { ...rest, window: st.outer.window, client_key: st.outer.client_key };
      const grant = this.grants.get(st.client);
      if (!grant && st.outer.client_key?.startsWith(SHARE_KEY_PREFIX)) {
        // A share link's page whose key this agent never admitted (or forgot, restarting):
        // the relay's word alone does not hold it to its session here, so it gets nothing.
        st.sc.send({
          t: "error",
          sid: msg.sid,
          code: "forbidden",
          message: "this machine does not know this share link's key (its agent restarted?)",
          hint: "make a new link with `tether share`",
        });
        this.e2e.delete(msg.sid);
        return;
      }
      if (grant) {
        // A share link's page: its session only, as the link allows. Past the link's expiry
        // (for a day at most) only a page already in may come back, to its own place.
        const resume = open.resume && grant.attaches.has(open.resume) ? open.resume : undefined;
        const now = Date.now();
        const live = grant.expires > now || (!!resume && grant.expires + DAY_MS > now);
        if (open.kind !== "pty" || !live) {
          st.sc.send({
            t: "error",
            sid: msg.sid,
            code: "forbidden",
            message: live ? "a share link opens its session only" : "this share link expired",
          });
          this.e2e.delete(msg.sid);
          return;
        }
        return this.opened(st.sc, {
          ...open,
          argv: [],
          session: grant.session,
          read_only: grant.readOnly || !!open.read_only,
          stdin: !grant.readOnly && open.stdin,
          ephemeral: false,
          resume,
          shell: undefined,
          subsystem: undefined,
          user: undefined,
          grant: undefined,
          hold_ms: Math.max(0, grant.expires - Date.now()),
        }, st.client);
      }
      return this.opened(st.sc, open, st.client);
    }
    switch (inner.t) {
      case "eof":
      case "signal":
      case "resize":
      case "auth":
      case "close":
        return this.onStreamControl(st.sc, inner);
      default:
        return this.integrityFailed(st, `a sealed '${inner.t}' from a client`);
    }
  }

  /**
   * What was sealed did not open, or was not sealed (or, `internal`, opened into something
   * malformed): the stream ends, as lost.
   */
  private integrityFailed(
    st: E2eStream,
    why: string,
    code: "integrity" | "internal" = "integrity",
  ): void {
    const sid = st.sc.sid;
    this.log(
      `stream ${sid}: ${
        code === "integrity" ? "integrity check failed" : "bad message"
      } (${why}); ending it`,
    );
    this.e2e.delete(sid);
    this.pendingAuth.delete(sid);
    st.sc.send({
      t: "error",
      sid,
      code,
      message: code === "integrity"
        ? `the agent of ${this.info.name} received what the client did not send (${why})`
        : `protocol error: ${why}`,
    });
    const s = this.streams.get(sid);
    this.streams.delete(sid);
    s?.abort("lost");
  }

  /**
   * Sessions and execs for the relay's `sessions` request: sessions first, then running
   * execs, then ended ones newest first, as many as fit in what the relay takes from an
   * agent (MAX_AGENT_MESSAGE, with room to spare).
   */
  private sessionList(budget = SESSIONS_BUDGET): SessionInfo[] {
    const all = [
      ...this.sessions.list().map((s) => ({ ...s, kind: "pty" as const })),
      ...this.execs.list().sort((a, b) =>
        Number(!!a.ended) - Number(!!b.ended) || (b.ended ?? b.created) - (a.ended ?? a.created)
      ),
    ];
    const out: SessionInfo[] = [];
    let size = 0;
    for (const s of all) {
      size += utf8.encode(JSON.stringify(s)).length + 1;
      if (size > budget) break;
      out.push(s);
    }
    return out;
  }

  /** Admits a share link's page key to a session (see Open.grant). */
  private addGrant(g: NonNullable<Open["grant"]>, session: string): void {
    const pub = decodeKey(g.key);
    if (!pub) return;
    const now = Date.now();
    for (const [k, v] of this.grants) if (v.expires <= now) this.grants.delete(k);
    if (this.grants.size >= MAX_GRANTS) this.grants.delete(this.grants.keys().next().value!);
    this.grants.set(fingerprint(pub), {
      attaches: new Set(),
      session,
      readOnly: g.read_only,
      expires: now + g.expires_ms,
    });
  }

  /** A live grant for this client key (a share link's page). */
  private grantFor(client: string): boolean {
    const g = this.grants.get(client);
    return !!g && g.expires > Date.now();
  }

  private startStream(conn: StreamConn, asked: Open, client?: string): void {
    this.opts.onStream?.(asked.kind);
    // Nothing runs unrecorded: an agent that keeps an audit log and cannot write it refuses.
    const problem = this.auditStart(asked, client);
    if (problem) {
      conn.send({ t: "error", sid: asked.sid, code: "internal", message: problem });
      return;
    }
    if (asked.kind === "tcp") return this.startForward(conn, asked);
    // tether ssh: a command line for the shell, a subsystem, another user.
    const open = this.remote.translate(asked);
    if ("code" in open) {
      conn.send({ t: "error", sid: asked.sid, ...open });
      return;
    }
    // exec, exec -t and connect all start in the same place.
    const msg = { ...open, cwd: resolve(this.workdir, open.cwd ?? ".") };
    const s = msg.kind === "exec" ? this.openExec(conn, msg) : this.sessions.open(conn, msg);
    if ("code" in s) conn.send({ t: "error", sid: msg.sid, ...s });
    else {
      this.streams.set(msg.sid, s);
      this.conn?.wake();
      // tether share: the link's page may join this session (given only end to end).
      if (msg.grant && client && s instanceof Attachment) this.addGrant(msg.grant, s.session.id);
      // A page's place, which only it may take back after a drop.
      if (client && s instanceof Attachment) this.grants.get(client)?.attaches.add(s.id);
    }
  }

  /** tether forward / proxy: a TCP connection made from this machine. */
  private startForward(conn: StreamConn, open: Open): void {
    if (this.opts.noForward) {
      conn.send({
        t: "error",
        sid: open.sid,
        code: "forbidden",
        message:
          `${this.info.name} does not forward connections (its agent runs with --no-forward)`,
      });
      return;
    }
    const s = new TcpStream(conn, open.sid, open, () => {
      if (this.streams.get(open.sid) === s) this.streams.delete(open.sid);
    });
    this.streams.set(open.sid, s);
    this.conn?.wake();
    s.start(open.target);
  }

  /** A new exec, or a watcher of one (`session`: exec --attach, or a resume). */
  private openExec(conn: StreamConn, open: Open): ExecStream | WireError {
    if (open.session) {
      const e = this.execs.find(open.session);
      if (!e) {
        return {
          code: "session_not_found",
          message: `no exec '${open.session}' on ${this.info.name}`,
          hint: "it may have ended longer ago than the agent keeps execs (agent run " +
            "--exec-retention, 1h); `tether sessions` lists what is kept",
        };
      }
      return e.watch(conn, open);
    }
    const e = this.execs.start(open);
    return "code" in e ? e : e.watch(conn, open);
  }

  private onFrame(f: Frame, raw: Uint8Array): void {
    const s = this.streams.get(f.sid);
    if (!s) return;
    const st = this.e2e.get(f.sid);
    if (st && f.type === FRAME_DATA) {
      let plain: Uint8Array;
      try {
        plain = openFrame(st.sc.transport, raw);
      } catch (e) {
        if (e instanceof IntegrityError) return this.integrityFailed(st, e.message);
        throw e;
      }
      if (f.channel !== CH_STDIN) throw new ProtocolError("unexpected frame for the agent");
      s.onStdin(plain, f.offset);
      return;
    }
    if (f.type === FRAME_DATA && f.channel === CH_STDIN) s.onStdin(f.payload, f.offset);
    else if (f.type === FRAME_CREDIT) s.onCredit(f.bytes);
    else throw new ProtocolError("unexpected frame for the agent");
  }
}

/**
 * Sessions and execs as the relay is told of them: without their command lines, which are
 * only sent sealed, to a client that asks (open kind "sessions").
 */
function sealedCommands(list: SessionInfo[]): SessionInfo[] {
  return list.map((s) => ({ ...s, command: "" }));
}

/** Bytes of JSON a list of sessions may take: what the relay takes from an agent, with room. */
const SESSIONS_BUDGET = MAX_AGENT_MESSAGE * 0.75;
/** The same, sealed: base64 makes 4 bytes of 3, and the envelope adds a little. */
const SEALED_SESSIONS_BUDGET = SESSIONS_BUDGET * 0.7;
const utf8 = new TextEncoder();

const DAY_MS = 86_400_000;

/** Most share-link grants an agent keeps (the oldest go first). */
const MAX_GRANTS = 1000;

/** How long a handshake waits for its client's first sealed message. */
const HANDSHAKE_WAIT_MS = 30_000;

/** Where the agent keeps its end-to-end key pair, in its state dir. */
export const E2E_KEY_FILE = "e2e_key.json";

/** An end-to-end stream on the agent. */
interface E2eStream {
  /** The open that carried the handshake (routing fields only). */
  outer: Open;
  /** The client's key fingerprint. */
  client: string;
  sc: SealedConn;
  /** The real open has arrived (the first sealed message). */
  opened: boolean;
}

/** A file read again only when it changed (the authorized keys: edits apply to the next stream). */
class FileCache<T> {
  private stamp = "";
  private value?: T;

  constructor(private readonly path: string, private readonly parse: (text: string) => T) {}

  get(): T {
    const st = Deno.statSync(this.path);
    // Time, size and inode: an edit within the clock's resolution still shows.
    const m = `${st.mtime?.getTime()}/${st.size}/${st.ino}`;
    if (this.value === undefined || m !== this.stamp) {
      this.value = this.parse(Deno.readTextFileSync(this.path));
      this.stamp = m;
    }
    return this.value;
  }
}

function rateLimited(seconds: number): WireError {
  return {
    code: "rate_limited",
    message: `too many wrong passwords from this key; locked for ${seconds}s`,
    hint: `wait ${seconds}s, then retry with the right password`,
  };
}
