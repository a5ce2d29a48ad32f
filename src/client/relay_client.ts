/**
 * A client's connection to the relay: requests with answers, and streams
 * to agents multiplexed on the one WebSocket.
 */
import { isFinal, TetherError } from "../common/errors.ts";
import type { Conn } from "../protocol/conn.ts";
import { dial } from "../protocol/dial.ts";
import { type Frame, FRAME_CREDIT, FRAME_DATA } from "../protocol/frames.ts";
import {
  type Challenge,
  type Control,
  type Exit,
  type MachineView,
  type Open,
  type Participants,
  ProtocolError,
  type SessionView,
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

export class RelayClient {
  private nextReq = 1;
  private nextSid = 1;
  private pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: TetherError) => void }
  >();
  private streams = new Map<number, StreamHandlers>();
  private auths = new Map<number, StreamAuth>();
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
    const client = new RelayClient(conn, welcome.workspace, welcome.key_id, relay);
    conn.start({
      onControl: (m) => client.onControl(m),
      onFrame: (f) => client.onFrame(f),
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
  machines(opts: { retired?: boolean } = {}): Promise<MachineView[]> {
    return this.request<MachineView[]>("machines", opts.retired ? { retired: true } : {});
  }

  /** Removes an offline machine from the registry. */
  removeMachine(machineId: string): Promise<{ removed: string; name: string }> {
    return this.request("remove_machine", { machine: machineId });
  }

  /** Sessions and execs (all machines, or one); `kind` keeps only those of that kind. */
  async sessions(machineId?: string, kind?: "pty" | "exec"): Promise<SessionView[]> {
    const all = await this.request<SessionView[]>(
      "sessions",
      machineId ? { machine: machineId } : {},
    );
    return kind ? all.filter((s) => s.kind === kind) : all;
  }

  killSession(machineId: string, session: string): Promise<{ killed: string }> {
    return this.request("kill_session", { machine: machineId, session });
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
    this.conn.send({ t: "open", sid, ...spec, ...(auth?.token ? { token: auth.token } : {}) });
    return sid;
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
      if (this.streams.has(ch.sid)) this.conn.send({ t: "auth", sid: ch.sid, proof });
    }, fail);
  }

  /**
   * Leaves a stream; no more messages come for it. "detach": the command or session
   * runs on; "kill": an exec is ended as well; "lost": as if the connection had dropped.
   */
  closeStream(sid: number, reason: "detach" | "lost" | "kill" = "detach"): void {
    this.auths.delete(sid);
    if (this.streams.delete(sid)) this.conn.send({ t: "close", sid, reason });
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
    switch (msg.t) {
      case "ping":
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
        const { t: _t, sid: _sid, ...err } = msg;
        h?.onError(err);
        return;
      }
      default:
        throw new ProtocolError(`relay may not send '${msg.t}' to a client`);
    }
  }

  private onFrame(f: Frame): void {
    const h = this.streams.get(f.sid);
    if (!h) return;
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
    const lost = this.lostStream();
    for (const h of streams) h.onError(lost);
  }
}
