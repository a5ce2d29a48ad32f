/**
 * A client's connection to the relay: requests with answers, and streams
 * to agents multiplexed on the one WebSocket.
 */
import { isFinal, TetherError } from "../common/errors.ts";
import type { Conn } from "../protocol/conn.ts";
import { dial } from "../protocol/dial.ts";
import {
  dataFrameInPlace,
  encodeData,
  type Frame,
  FRAME_CREDIT,
  FRAME_DATA,
} from "../protocol/frames.ts";
import {
  decodeKey,
  fingerprint,
  fromBase64,
  Initiator,
  IntegrityError,
  type KeyPair,
  toBase64,
  type Transport,
} from "../protocol/e2e.ts";
import { loadOrCreateKeyPair } from "../protocol/e2e_keys.ts";
import {
  CLEAR_ERRORS,
  e2ePrologue,
  openControl,
  openFrame,
  sealControl,
  sealDataInto,
  sealedDataSize,
} from "../protocol/e2e_stream.ts";
import { join } from "node:path";
import { KnownMachines, pinName } from "./known_machines.ts";
import {
  type Accept,
  type Auth,
  type Challenge,
  type Close,
  type Control,
  type Eof,
  type Exit,
  type MachineView,
  MAX_CONTROL_MESSAGE,
  type Open,
  type Participants,
  ProtocolError,
  type Resize,
  type Sealed,
  type SessionInfo,
  type SessionView,
  type SignalMsg,
  type Started,
  type WireError,
} from "../protocol/messages.ts";
import type { ClientConfig } from "./config.ts";

export type { MachineView, SessionView } from "../protocol/messages.ts";

export interface StreamHandlers {
  onStarted(msg: Started): void;
  /** `payload` is valid only during the call (a view into the read buffer): copy to keep. */
  onData(channel: number, offset: number, payload: Uint8Array): void;
  onCredit(channel: number, bytes: number): void;
  /** Exactly one of onExit / onError ends every stream. */
  onExit(msg: Exit): void;
  onError(err: WireError): void;
  onNotice?(message: string): void;
  /** pty: who is attached to the session now (sent on every join and leave). */
  onParticipants?(msg: Participants): void;
  /** The agent's side ended its output (a tcp stream's peer closed its half). */
  onEof?(): void;
  /** kind "sessions": the agent's sessions and execs, with their command lines. */
  onSessions?(list: SessionInfo[]): void;
}

/** How a stream passes a machine password check (see protocol/machine_auth.ts). */
export interface StreamAuth {
  /** A cached session token to offer with the open. */
  token?: string;
  /** Computes the proof for a challenge; may throw (e.g. password_required). */
  answer(ch: Challenge): Promise<string>;
  accepted(token: string, expires: number): void;
  tokenRejected(): void;
}

/** Where a client keeps its end-to-end key pair, in its config dir. */
export const CLIENT_KEY_FILE = "client_key.json";

/** The client's key pair: made at first use in the config dir (0600). */
export function clientKeyPair(configDir: string): KeyPair {
  return loadOrCreateKeyPair(join(configDir, CLIENT_KEY_FILE));
}

/** Messages a client sends about one of its streams (sealed on an end-to-end stream). */
export type StreamMessage = Eof | SignalMsg | Resize | Auth | Close;

/** An end-to-end stream, from its open until it ends. */
interface E2eStream {
  /** The real open, sent sealed once the agent has answered. */
  spec: Omit<Open, "t" | "sid">;
  init?: Initiator;
  transport?: Transport;
  /** What the stream sent before the handshake finished, in order. */
  queue: (() => void)[];
  /** A machine seen for the first time: pinned once its agent has proven the key. */
  pin?: { name: string; fp: string };
}

/** How long `sessions` waits for a machine to tell its command lines. */
const AGENT_SESSIONS_WAIT_MS = 3_000;

/** Machines as the relay last listed them, by id: what their keys are pinned as, and the keys. */
const machineKeys = new Map<string, MachineView>();

export class RelayClient {
  private nextReq = 1;
  private nextSid = 1;
  private pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: TetherError) => void }
  >();
  private streams = new Map<number, StreamHandlers>();
  private auths = new Map<number, StreamAuth>();
  private e2e = new Map<number, E2eStream>();
  /** End to end by default; TETHER_E2E=off (for measurements) opens streams in the clear. */
  private readonly e2eOn = Deno.env.get("TETHER_E2E") !== "off";
  private keyPair?: KeyPair;
  /** Told when a machine's key is pinned for the first time (trust on first use). */
  onPinned?: (name: string, fingerprint: string) => void;
  private closedReason?: string;
  /** The relay's own word on why it closed us (e.g. the key was revoked). */
  private closedError?: WireError;
  private resolveClosed!: (reason: string) => void;
  private readonly closedPromise = new Promise<string>((r) => (this.resolveClosed = r));

  private constructor(
    readonly conn: Conn,
    readonly workspace: string,
    readonly keyId: string,
    /** The relay that answered (one of a list). */
    readonly relay: string,
    /** Where this client keeps its key and pins. */
    readonly configDir: string,
  ) {}

  static async connect(cfg: ClientConfig): Promise<RelayClient> {
    const { conn, welcome, relay } = await dial({
      relay: cfg.relay,
      key: cfg.apiKey,
      role: "client",
      caFile: cfg.caFile,
      insecure: cfg.insecure,
      timeoutMs: cfg.dialTimeoutMs,
    });
    const client = new RelayClient(conn, welcome.workspace, welcome.key_id, relay, cfg.configDir);
    client.onPinned = cfg.onPinned;
    conn.start({
      onControl: (m) => client.onControl(m),
      onFrame: (f, raw) => client.onFrame(f, raw),
      onClose: (reason) => client.onClose(reason),
    });
    return client;
  }

  request<T>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    if (this.closedReason !== undefined) return Promise.reject(this.lostError());
    const id = this.nextReq++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.conn.send({ t: "req", id, op, args });
    });
  }

  /** The workspace's machines; with `retired`, also those that ended for good lately. */
  async machines(opts: { retired?: boolean } = {}): Promise<MachineView[]> {
    const list = await this.request<MachineView[]>(
      "machines",
      opts.retired ? { retired: true } : {},
    );
    for (const m of list) machineKeys.set(m.id, m);
    return list;
  }

  /** Removes an offline machine from the registry. */
  removeMachine(machineId: string): Promise<{ removed: string; name: string }> {
    return this.request("remove_machine", { machine: machineId });
  }

  /**
   * Sessions and execs (all machines, or one); `kind` keeps only those of that kind. The
   * relay lists them without their command lines; each machine tells them end to end.
   */
  async sessions(machineId?: string, kind?: "pty" | "exec"): Promise<SessionView[]> {
    const all = await this.request<SessionView[]>(
      "sessions",
      machineId ? { machine: machineId } : {},
    );
    const mine = kind ? all.filter((s) => s.kind === kind) : all;
    if (!this.e2eOn) return mine;
    const ids = [...new Set(mine.map((s) => s.machine_id))];
    const told = await Promise.all(ids.map((id) => this.agentSessions(id)));
    const commands = new Map<string, string>();
    told.forEach((list, i) => list.forEach((s) => commands.set(`${ids[i]}/${s.id}`, s.command)));
    return mine.map((s) => ({
      ...s,
      command: commands.get(`${s.machine_id}/${s.id}`) ?? s.command,
    }));
  }

  /** A machine's sessions and execs as its agent tells them, sealed; [] if it cannot say. */
  private agentSessions(machine: string): Promise<SessionInfo[]> {
    return new Promise((resolve) => {
      let list: SessionInfo[] = [];
      const timer = setTimeout(() => {
        this.closeStream(sid, "detach");
        resolve(list);
      }, AGENT_SESSIONS_WAIT_MS);
      const done = () => {
        clearTimeout(timer);
        resolve(list);
      };
      const sid = this.open({ machine, kind: "sessions", argv: [], stdin: false, window: 1 }, {
        onStarted() {},
        onData() {},
        onCredit() {},
        onSessions: (l) => (list = l),
        onExit: done,
        onError: done,
      });
    });
  }

  /** Ends a session or exec: end to end (kind "kill"), or by asking the relay in the clear. */
  killSession(machineId: string, session: string): Promise<{ killed: string }> {
    if (!this.e2eOn) return this.request("kill_session", { machine: machineId, session });
    return new Promise((resolve, reject) => {
      this.open({ machine: machineId, kind: "kill", argv: [], session, stdin: false, window: 1 }, {
        onStarted() {},
        onData() {},
        onCredit() {},
        onExit: () => resolve({ killed: session }),
        onError: (e) => reject(new TetherError(e.code, e.message, { hint: e.hint })),
      });
    });
  }

  /** Opens a stream; returns its id. Handlers see exactly one onExit or onError. */
  open(spec: Omit<Open, "t" | "sid">, handlers: StreamHandlers, auth?: StreamAuth): number {
    const sid = this.nextSid++;
    if (this.closedReason !== undefined) {
      queueMicrotask(() => handlers.onError(this.lostStream()));
      return sid;
    }
    this.streams.set(sid, handlers);
    if (auth) this.auths.set(sid, auth);
    const open = { ...spec, ...(auth?.token ? { token: auth.token } : {}) };
    if (!this.e2eOn) {
      this.conn.send({ t: "open", sid, ...open });
      return sid;
    }
    const st: E2eStream = { spec: open, queue: [] };
    this.e2e.set(sid, st);
    this.handshake(sid, st).catch((e) => this.failStream(sid, e));
    return sid;
  }

  /** Whether this client opens its streams end to end. */
  get endToEnd(): boolean {
    return this.e2eOn;
  }

  /** This client's end-to-end key pair (`tether whoami`). */
  get keys(): KeyPair {
    return this.keyPair ??= clientKeyPair(this.configDir);
  }

  /** The machine's key as the relay lists it, checked against what this client pinned. */
  private async handshake(sid: number, st: E2eStream): Promise<void> {
    const id = st.spec.machine ?? "";
    if (!machineKeys.has(id)) await this.machines();
    const m = machineKeys.get(id);
    if (!this.streams.has(sid)) return;
    if (!m) throw new TetherError("machine_not_found", `no machine '${id}' in this workspace`);
    const pub = m.key ? decodeKey(m.key) : undefined;
    if (!pub) {
      throw new TetherError(
        "forbidden",
        `machine ${m.name} has no end-to-end key: its agent is older than this client`,
        { hint: "update tether on that machine" },
      );
    }
    const fp = fingerprint(pub);
    const pins = new KnownMachines(this.configDir);
    const pin = pins.check(m, fp);
    if (pin.status === "changed") {
      const under = pin.as === m.name || pin.as === pinName(m) ? "" : ` (pinned for '${pin.as}')`;
      throw new TetherError(
        "machine_key_changed",
        `the key of machine ${m.name} changed: it was ${pin.pinned}${under}, it is now ${fp}`,
        {
          hint: "if the machine was reinstalled or its agent's state dir replaced, accept the " +
            `new key with \`tether machines trust ${
              pinName(m) === m.name ? m.name : m.id
            } ${fp}\`; if not, someone may be posing as it: do not`,
        },
      );
    }
    if (pin.status === "new") st.pin = { name: pinName(m), fp };
    st.init = Initiator.start("ChaChaPoly", e2ePrologue(id), this.keys, pub);
    const { spec } = st;
    // Only what the relay routes by: the rest follows sealed.
    this.conn.send({
      t: "open",
      sid,
      machine: spec.machine,
      kind: spec.kind,
      argv: [],
      stdin: spec.stdin,
      window: spec.window,
      e2e: { suite: "ChaChaPoly", msg: toBase64(st.init.message) },
    });
  }

  private accepted(msg: Accept): void {
    const st = this.e2e.get(msg.sid);
    if (!st) return;
    if (!st.init || st.transport) return this.integrityFailed(msg.sid, "an unexpected accept");
    let key: Uint8Array;
    try {
      key = fromBase64(msg.e2e);
      st.transport = st.init.finish(key).transport;
    } catch (e) {
      return this.integrityFailed(msg.sid, (e as Error).message);
    }
    // The agent proved it holds the key the relay listed: trust it from now on.
    if (st.pin) {
      new KnownMachines(this.configDir).pin(st.pin.name, st.pin.fp);
      this.onPinned?.(st.pin.name, st.pin.fp);
    }
    const open = sealControl(st.transport, { t: "open", sid: msg.sid, ...st.spec }, msg.sid);
    // Sealed, an open grows by a third (base64): one the relay would refuse for its size
    // (closing the whole connection) fails here, alone.
    if (JSON.stringify(open).length > MAX_CONTROL_MESSAGE) {
      return this.failStream(
        msg.sid,
        new TetherError("usage", "the command line and environment are too large to send", {
          hint: `together they must stay under ${Math.floor(MAX_CONTROL_MESSAGE * 0.7 / 1024)} KiB`,
        }),
      );
    }
    this.conn.send(open);
    for (const send of st.queue.splice(0)) send();
  }

  /** Sends a message about one of this client's streams (sealed when the stream is). */
  send(msg: StreamMessage): void {
    const st = this.e2e.get(msg.sid);
    if (!st) {
      if (this.streams.has(msg.sid) || msg.t === "close") this.conn.send(msg);
      return;
    }
    if (!st.transport) {
      st.queue.push(() => this.send(msg));
      return;
    }
    const end = msg.t === "close" ? { end: msg.reason ?? "detach" } : {};
    this.conn.send(sealControl(st.transport, msg, msg.sid, end));
  }

  /**
   * Sends stream bytes on a channel. `inPlace`: `payload` has DATA_FRAME_PREFIX free bytes
   * before it in its buffer, for the header (no copy when the stream is not sealed).
   */
  sendData(
    sid: number,
    channel: number,
    offset: number,
    payload: Uint8Array,
    inPlace = false,
  ): void {
    const st = this.e2e.get(sid);
    if (!st) {
      this.conn.sendBinary(
        inPlace
          ? dataFrameInPlace(payload, sid, channel, offset)
          : encodeData(sid, channel, offset, payload),
      );
      return;
    }
    if (!st.transport) {
      const copy = payload.slice();
      st.queue.push(() => this.sendData(sid, channel, offset, copy));
      return;
    }
    const t = st.transport;
    // Sealed straight into the socket's buffer, header and all: no frame built.
    this.conn.sendBinaryWith(
      sealedDataSize(payload),
      (dst, at) => sealDataInto(t, sid, channel, offset, payload, dst, at),
    );
  }

  /** Ends a stream with an error of this client's own (the relay is told it was lost). */
  private failStream(sid: number, e: unknown): void {
    const h = this.streams.get(sid);
    if (!h) return;
    this.streams.delete(sid);
    this.auths.delete(sid);
    const sealed = this.e2e.get(sid)?.init !== undefined;
    this.e2e.delete(sid);
    if (sealed) this.conn.send({ t: "close", sid, reason: "lost" });
    const err = e instanceof TetherError
      ? e
      : new TetherError("internal", e instanceof Error ? e.message : String(e));
    h.onError(err.toJSON());
  }

  /** What came for an end-to-end stream did not open, or came in the clear: it ends. */
  private integrityFailed(sid: number, why: string): void {
    this.failStream(
      sid,
      new TetherError(
        "integrity",
        `the stream to the machine was altered on the way (${why}); nothing more from it is shown`,
        {
          hint: "the relay, or something between it and you or the machine, changed, dropped or " +
            "added data; the command may still run on the machine",
        },
      ),
    );
  }

  private challenged(ch: Challenge): void {
    const h = this.streams.get(ch.sid);
    if (!h) return;
    const auth = this.auths.get(ch.sid);
    const fail = (e: unknown) => {
      this.closeStream(ch.sid);
      const err = e instanceof TetherError ? e : new TetherError("internal", String(e));
      h.onError(err.toJSON());
    };
    if (!auth) {
      return fail(new TetherError("password_required", "this machine needs a password"));
    }
    if (ch.token_rejected) auth.tokenRejected();
    auth.answer(ch).then((proof) => {
      if (this.streams.has(ch.sid)) this.send({ t: "auth", sid: ch.sid, proof });
    }, fail);
  }

  /**
   * Leaves a stream; no more messages come for it. "detach": the command or session
   * runs on; "kill": an exec is ended as well; "lost": as if the connection had dropped.
   */
  closeStream(sid: number, reason: "detach" | "lost" | "kill" = "detach"): void {
    this.auths.delete(sid);
    if (!this.streams.delete(sid)) return;
    const st = this.e2e.get(sid);
    if (st?.transport) this.send({ t: "close", sid, reason });
    else if (!st || st.init) this.conn.send({ t: "close", sid, reason });
    this.e2e.delete(sid);
  }

  /** Resolves when the connection to the relay has ended. */
  get closed(): Promise<string> {
    return this.closedPromise;
  }

  close(): void {
    this.conn.close(1000, "client done");
  }

  private lostError(): TetherError {
    // A refusal that retrying cannot change (a revoked key) is reported as itself, so that
    // nobody treats it as a dropped connection and redials.
    const e = this.closedError;
    if (e && isFinal(e.code)) return new TetherError(e.code, e.message, { hint: e.hint });
    return new TetherError(
      "session_lost",
      `lost the connection to the relay (${this.closedReason})`,
      {
        hint: "the remote exit status is unknown; check the relay and retry",
      },
    );
  }

  /** What a stream is told when this connection ends. */
  private lostStream(): WireError {
    const e = this.lostError();
    return isFinal(e.code) ? e.toJSON() : { ...e.toJSON(), resumable: true };
  }

  private onControl(msg: Control): void {
    if ("sid" in msg && msg.sid !== undefined && this.e2e.has(msg.sid)) {
      return this.onSealedStream(msg as Control & { sid: number });
    }
    this.dispatch(msg);
  }

  /** A message for an end-to-end stream: sealed, or one of the relay's own errors. */
  private onSealedStream(msg: Control & { sid: number }): void {
    switch (msg.t) {
      case "accept":
        return this.accepted(msg);
      case "sealed": {
        const st = this.e2e.get(msg.sid)!;
        if (!st.transport) {
          return this.integrityFailed(msg.sid, "a sealed message before the handshake");
        }
        let inner: Control;
        try {
          inner = openControl(st.transport, msg as Sealed);
        } catch (e) {
          if (e instanceof IntegrityError) return this.integrityFailed(msg.sid, e.message);
          // Sealed, so the relay could not check it: a malformed message ends its stream only.
          if (e instanceof ProtocolError) {
            return this.failStream(
              msg.sid,
              new TetherError("internal", `protocol error: ${e.message}`),
            );
          }
          throw e;
        }
        switch (inner.t) {
          case "started":
          case "notice":
          case "participants":
          case "eof":
          case "challenge":
          case "auth_ok":
          case "exit":
          case "error":
            return this.dispatch(inner);
          case "sessions":
            return this.streams.get(msg.sid)?.onSessions?.(inner.sessions);
        }
        return this.integrityFailed(msg.sid, `a sealed '${inner.t}' from the agent`);
      }
      case "error":
        // The agent could not read the handshake: the key this process has for it may be
        // stale (it changed since the listing); the next open lists the machines again.
        if (msg.code === "integrity" && !this.e2e.get(msg.sid)?.transport) {
          machineKeys.delete(this.e2e.get(msg.sid)?.spec.machine ?? "");
        }
        if (CLEAR_ERRORS.has(msg.code)) return this.dispatch(msg);
        return this.integrityFailed(msg.sid, `'${msg.code}' outside the encryption`);
      default:
        return this.integrityFailed(msg.sid, `'${msg.t}' outside the encryption`);
    }
  }

  private dispatch(msg: Control): void {
    switch (msg.t) {
      case "ping":
      case "sealed": // late, for an end-to-end stream this client already left
      case "accept":
        return;
      case "res": {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.error) {
          p.reject(new TetherError(msg.error.code, msg.error.message, { hint: msg.error.hint }));
        } else p.resolve(msg.result);
        return;
      }
      case "started":
        this.streams.get(msg.sid)?.onStarted(msg);
        return;
      case "notice":
        this.streams.get(msg.sid)?.onNotice?.(msg.message);
        return;
      case "participants":
        this.streams.get(msg.sid)?.onParticipants?.(msg);
        return;
      case "eof":
        this.streams.get(msg.sid)?.onEof?.();
        return;
      case "challenge":
        this.challenged(msg);
        return;
      case "auth_ok":
        this.auths.get(msg.sid)?.accepted(msg.token, msg.expires);
        return;
      case "exit": {
        const h = this.streams.get(msg.sid);
        this.streams.delete(msg.sid);
        this.auths.delete(msg.sid);
        this.e2e.delete(msg.sid);
        h?.onExit(msg);
        return;
      }
      case "error": {
        if (msg.sid === undefined) {
          this.closedReason = msg.message;
          this.closedError = { code: msg.code, message: msg.message, hint: msg.hint };
          return;
        }
        const h = this.streams.get(msg.sid);
        this.streams.delete(msg.sid);
        this.auths.delete(msg.sid);
        this.e2e.delete(msg.sid);
        const { t: _t, sid: _sid, ...err } = msg;
        h?.onError(err);
        return;
      }
      default:
        throw new ProtocolError(`relay may not send '${msg.t}' to a client`);
    }
  }

  private onFrame(f: Frame, raw: Uint8Array): void {
    const h = this.streams.get(f.sid);
    if (!h) return;
    const st = this.e2e.get(f.sid);
    if (st && f.type === FRAME_DATA) {
      if (!st.transport) return this.integrityFailed(f.sid, "data before the handshake");
      let plain: Uint8Array;
      try {
        plain = openFrame(st.transport, raw);
      } catch (e) {
        if (e instanceof IntegrityError) return this.integrityFailed(f.sid, e.message);
        throw e;
      }
      h.onData(f.channel, f.offset, plain);
      return;
    }
    if (f.type === FRAME_DATA) h.onData(f.channel, f.offset, f.payload);
    else if (f.type === FRAME_CREDIT) h.onCredit(f.channel, f.bytes);
  }

  private onClose(reason: string): void {
    this.closedReason ??= reason;
    this.resolveClosed(reason);
    const err = this.lostError();
    const refused = this.closedError && isFinal(this.closedError.code);
    for (const p of this.pending.values()) {
      p.reject(
        refused ? err : new TetherError(
          "relay_unreachable",
          `the relay closed the connection (${reason})`,
        ),
      );
    }
    this.pending.clear();
    const streams = [...this.streams.values()];
    this.streams.clear();
    this.e2e.clear();
    const lost = this.lostStream();
    for (const h of streams) h.onError(lost);
  }
}
