/**
 * Control messages: JSON text frames, each an object with a type tag `t`.
 *
 * Each message is defined once, as a valibot schema; its TypeScript type is
 * derived from the schema. Every message is checked on receipt against its
 * schema (fields not in it are dropped); anything malformed raises a
 * ProtocolError that names the message type and the field, which closes that
 * one connection (see conn.ts). docs/PROTOCOL.md describes the flow; this
 * file is the definition. The binary DATA and CREDIT frames are in frames.ts.
 *
 * valibot rather than zod: the same checks cost about the same (~1.5 µs for
 * an `open`, JSON.parse included) and add 20 KB to the bundle, where zod 4
 * adds 760 KB (zod/mini 55 KB, at 1.6× the time). Measured with Deno 2.9.
 */
import * as v from "valibot";
import { ERROR_CODES } from "../common/errors.ts";
import { MAX_WINDOW } from "./flow.ts";
import { SUITES } from "./e2e.ts";

/** Largest JSON control message the relay accepts from agents and clients. */
export const MAX_CONTROL_MESSAGE = 64 * 1024;
/**
 * Largest control message agents and clients accept from the relay: answers
 * such as `machines` grow with the workspace (~250 bytes a machine).
 */
export const MAX_RELAY_MESSAGE = 16 * 1024 * 1024;
/** Largest control message the relay accepts from an agent (its list of sessions and execs). */
export const MAX_AGENT_MESSAGE = 1024 * 1024;
/** Longest an open may ask a session to wait for clients (`hold_ms`): a week. */
export const MAX_HOLD_MS = 7 * 86_400_000;
/** Most streams one connection may have open at once. */
export const MAX_STREAMS_PER_CONN = 256;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

// ---- building blocks ----

const U32 = 0xffff_ffff;
const int = (min: number, max: number) =>
  v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));
const str = (max: number) => v.pipe(v.string(), v.maxLength(max));
const opt = v.optional;
const sid = int(1, U32);
const offset = int(0, Number.MAX_SAFE_INTEGER);
const size = int(1, 10_000);
/** A string map (environment, labels): at most 1024 entries. */
const strMap = v.pipe(
  v.record(v.string(), v.string()),
  v.check((m) => Object.keys(m).length <= 1024, "has too many entries"),
);

/** Who dials: an agent, a client, or another relay of the fleet (relay-to-relay). */
export const Role = v.picklist(["agent", "client", "relay"]);
export type Role = v.InferOutput<typeof Role>;

export const StreamKind = v.picklist(["exec", "pty"]);
export type StreamKind = v.InferOutput<typeof StreamKind>;
/**
 * What an open starts: an exec, a PTY session, or a TCP connection made by the agent; or
 * (end to end only) a look at the agent's sessions and execs with their command lines, or the
 * end of one (`session`: `tether sessions kill`).
 */
export const OpenKind = v.picklist(["exec", "pty", "tcp", "sessions", "kill"]);
export type OpenKind = v.InferOutput<typeof OpenKind>;

export const ExecState = v.picklist(["running", "exited", "timeout", "lost"]);
export type ExecState = v.InferOutput<typeof ExecState>;

/** What an agent says of itself. */
export const AgentInfo = v.object({
  name: str(256),
  hostname: str(256),
  labels: strMap,
  os: str(64),
  arch: str(64),
  /** Its end-to-end public key (X25519, base64; e2e.ts): what clients pin. */
  key: opt(str(64)),
});
export type AgentInfo = v.InferOutput<typeof AgentInfo>;

/** The body of a failure: of a stream (`error`), a request (`res.error`) or a connection. */
const wireErrorEntries = {
  code: v.picklist(ERROR_CODES),
  message: str(4096),
  hint: opt(str(4096)),
  candidates: opt(
    v.array(v.looseObject({ id: v.string(), name: v.string(), online: opt(v.boolean()) })),
  ),
  /**
   * The stream broke, not what it ran: a connection on the way ended, and the command or
   * session may still be running on the machine, to be watched again (`session`, `resume`).
   */
  resumable: opt(v.boolean()),
};
export const WireError = v.object(wireErrorEntries);
export type WireError = v.InferOutput<typeof WireError>;

/** Most participants a session reports by name (more are counted in `clients`). */
export const MAX_PARTICIPANTS = 64;
/** One client attached to a session: who (the relay's word for its key) and how. */
export const Participant = v.object({
  /** Its attach id. */
  id: str(64),
  /** The key it connected with, or `share:ID` for a browser page of a share link. */
  key: str(128),
  read_only: v.boolean(),
});
export type Participant = v.InferOutput<typeof Participant>;
const participants = v.pipe(v.array(Participant), v.maxLength(MAX_PARTICIPANTS));

/** A PTY session, or an exec, as the agent reports it. */
export const SessionInfo = v.object({
  id: str(64),
  /** Absent: "pty". */
  kind: opt(StreamKind),
  created: offset,
  command: str(4096),
  clients: int(0, U32),
  cols: size,
  rows: size,
  idle_ms: offset,
  /** pty: who is attached (the first MAX_PARTICIPANTS). */
  participants: opt(participants),
  /** exec: running, exited (with exit_code and signal), timeout, or lost (agent restarted). */
  state: opt(ExecState),
  exit_code: opt(int(0, 255)),
  signal: opt(v.nullable(str(16))),
  /** exec: when it ended (ms since the epoch). */
  ended: opt(offset),
});
export type SessionInfo = v.InferOutput<typeof SessionInfo>;

// ---- the messages ----

/** The first message of a connection, from the dialer. */
export const Hello = v.object({
  t: v.literal("hello"),
  /** The protocol version (version.ts). */
  v: int(0, 1_000_000),
  role: Role,
  version: str(64),
  agent: opt(AgentInfo),
  /**
   * A browser page on /v1/share: the share link's token (`ID.SECRET`) on its first join,
   * or the resume secret its welcome gave it on a reconnect.
   */
  share: opt(v.object({ token: opt(str(128)), resume: opt(str(128)) })),
});
/** What a share link lets its page do, told in the welcome. */
export const ShareGrant = v.object({
  id: str(64),
  machine: str(64),
  machine_name: str(256),
  session: str(64),
  read_only: v.boolean(),
  expires_at: offset,
  /** Presented instead of the token when the page reconnects (the token is spent). */
  resume: str(128),
});
export type ShareGrant = v.InferOutput<typeof ShareGrant>;
/** The relay's answer to a hello. */
export const Welcome = v.object({
  t: v.literal("welcome"),
  v: int(0, 1_000_000),
  version: str(64),
  workspace: str(256),
  key_id: str(256),
  heartbeat_ms: int(100, 600_000),
  /** For an agent: the silence after which the relay probes its link while nothing is open. */
  idle_heartbeat_ms: opt(int(100, 3_600_000)),
  /** For an agent: its machine id, and the secret when it was just enrolled. */
  machine: opt(v.object({ id: str(64), secret: opt(str(256)) })),
  /** For a share link's page: what it may open. */
  share: opt(ShareGrant),
});
/** A probe; `re` marks the answer to one, which is not answered (see conn.ts). */
export const Ping = v.object({ t: v.literal("ping"), re: opt(v.literal(true)) });
export const Req = v.object({
  t: v.literal("req"),
  id: int(0, U32),
  op: str(64),
  args: v.record(v.string(), v.unknown()),
});
export const Res = v.object({
  t: v.literal("res"),
  id: int(0, U32),
  result: opt(v.unknown()),
  error: opt(WireError),
});
/** Starts a stream: an exec or a PTY session, or watches one that runs. */
export const Open = v.pipe(
  v.object({
    t: v.literal("open"),
    sid,
    /** Target machine id; set by clients, stripped by the relay before the agent sees it. */
    machine: opt(str(256)),
    kind: OpenKind,
    argv: v.pipe(v.array(v.string()), v.maxLength(4096)),
    /** tcp: HOST:PORT ([V6]:PORT) the agent connects to, as seen from its machine. */
    target: opt(str(300)),
    cwd: opt(str(4096)),
    env: opt(strMap),
    /** false: the remote process gets /dev/null as stdin. */
    stdin: v.boolean(),
    timeout_ms: opt(int(1, 365 * 86_400_000)),
    /** Initial credit, in bytes, the opener grants for output toward it. */
    window: int(1, MAX_WINDOW),
    term: opt(str(128)),
    cols: opt(size),
    rows: opt(size),
    /** Join this session (pty) or watch this exec (exec) instead of starting one. */
    session: opt(str(64)),
    /** Take over the place of a watcher whose connection was lost (its `attach_id`). */
    resume: opt(str(64)),
    /** Send output from this offset (stdout, or the terminal; default: all that is kept). */
    offset: opt(offset),
    /** exec: send stderr from this offset (default: all that is kept). */
    err_offset: opt(offset),
    /** pty: output only; the agent drops this client's input. */
    read_only: opt(v.boolean()),
    /**
     * pty: keep the session this long (ms) after its last client leaves, if that is longer
     * than the agent's grace window (`tether share`: the link's lifetime).
     */
    hold_ms: opt(int(0, MAX_HOLD_MS)),
    /** pty: end the session when this client leaves (exec -t). */
    ephemeral: opt(v.boolean()),
    /**
     * `tether ssh`: argv is [] or one command line, run as ssh runs it: by the (remote)
     * user's shell, `$SHELL -c LINE`; [] is that shell itself (a login shell for a pty).
     */
    shell: opt(v.boolean()),
    /** `tether ssh -s`: run this subsystem of the machine (sftp) instead of argv. */
    subsystem: opt(str(64)),
    /** `tether ssh user@`: run as this user (an agent running as root, --allow-user). */
    user: opt(str(64)),
    /**
     * `tether share`, end to end: admit the browser page holding this key (X25519, base64) to
     * the session this open starts or joins, read-only as the link says, until `expires_ms`
     * from now (a reconnect of a page already in, past it too). Sealed opens only.
     */
    grant: opt(
      v.object({ key: str(64), read_only: v.boolean(), expires_ms: int(1, MAX_HOLD_MS) }),
    ),
    /** A session token from an earlier password check on this machine. */
    token: opt(str(1024)),
    /** Set by the relay (never trusted from a client): the id of the client's key. */
    client_key: opt(str(64)),
    /**
     * Set by a relay that forwards the open to the relay of its fleet holding the agent
     * (never trusted from a client): the client's workspace.
     */
    workspace: opt(str(256)),
    /**
     * End to end: the first message of the stream's handshake (e2e.ts). Then this open
     * carries only what the relay routes by (sid, machine, kind, window); the real one
     * follows sealed once the agent has answered with `accept`.
     */
    e2e: opt(v.object({ suite: v.picklist(SUITES), msg: str(1024) })),
  }),
  v.check(
    (o) =>
      o.kind !== "exec" || o.argv.length > 0 || o.session !== undefined || !!o.shell ||
      !!o.subsystem || !!o.e2e,
    "argv: must not be empty",
  ),
);
/** Agent → client: the second message of an end-to-end stream's handshake. */
export const Accept = v.object({ t: v.literal("accept"), sid, e2e: str(1024) });
/**
 * A stream message sealed end to end (e2e_stream.ts), either way. Beside the box, what
 * the relay may know: the agent's stdin `window` and `session` of a sealed `started`,
 * and `end` on the stream's last message ("exit", an error code, or a close's reason).
 */
export const Sealed = v.object({
  t: v.literal("sealed"),
  sid,
  box: str(MAX_RELAY_MESSAGE),
  window: opt(int(1, MAX_WINDOW)),
  session: opt(str(64)),
  end: opt(str(32)),
});
/** Agent → client: the machine has a password; prove you know it. */
export const Challenge = v.object({
  t: v.literal("challenge"),
  sid,
  /** scrypt parameters and salt (hex) to derive the key from the password. */
  salt: str(128),
  n: int(2, 1 << 22),
  r: int(1, 64),
  p: int(1, 64),
  /** Random, hex; the proof is HMAC-SHA256(key, "tether-auth-v1|<machine id>|<nonce>"). */
  nonce: str(128),
  /** Set when the token the client sent was not accepted. */
  token_rejected: opt(v.boolean()),
});
/** Client → agent: the answer to a challenge. */
export const Auth = v.object({ t: v.literal("auth"), sid, proof: str(128) });
/** Agent → client: the password was right; a token for the next 24 h. */
export const AuthOk = v.object({
  t: v.literal("auth_ok"),
  sid,
  token: str(1024),
  expires: offset,
});
export const Started = v.object({
  t: v.literal("started"),
  sid,
  pid: opt(int(0, U32)),
  /** Initial credit, in bytes, the agent grants for stdin toward it. */
  window: int(1, MAX_WINDOW),
  /** The session joined or started (pty), or the exec's id (exec). */
  session: opt(str(64)),
  /** This watcher's id, to resume it after a lost connection. */
  attach_id: opt(str(64)),
  /** Offset of the first output byte that will follow (stdout, or the terminal). */
  offset: opt(offset),
  /** exec: offset of the first stderr byte that will follow. */
  err_offset: opt(offset),
  /** exec: stdin bytes the agent has taken so far; a resuming client sends from here. */
  stdin_offset: opt(offset),
  /** pty: offset where the replay of earlier output ends and live output begins. */
  end: opt(offset),
});
export const Eof = v.object({ t: v.literal("eof"), sid });
export const SignalMsg = v.object({ t: v.literal("signal"), sid, signal: str(16) });
export const Resize = v.object({ t: v.literal("resize"), sid, cols: size, rows: size });
export const Exit = v.object({
  t: v.literal("exit"),
  sid,
  code: int(0, 255),
  signal: opt(v.nullable(str(16))),
});
/** With `sid`: the stream ended in failure. Without: the connection is refused or closing. */
export const ErrorMsg = v.object({ t: v.literal("error"), sid: opt(sid), ...wireErrorEntries });
export const Close = v.object({
  t: v.literal("close"),
  sid,
  /**
   * "detach": the client left on purpose (the command or session runs on); "lost": its
   * connection ended (it may resume); "kill": exec only, end the command as well.
   */
  reason: opt(v.picklist(["detach", "lost", "kill"])),
});
/** Agent → relay: the agent's PTY sessions, sent whenever they change. */
export const Sessions = v.object({
  t: v.literal("sessions"),
  sessions: v.pipe(v.array(SessionInfo), v.maxLength(MAX_STREAMS_PER_CONN)),
});
/** Agent → client: a line for the user's terminal (e.g. a CI hold about to end). */
export const Notice = v.object({ t: v.literal("notice"), sid, message: str(4096) });
/** Agent → each client of a session: who is attached now (on every join and leave). */
export const Participants = v.object({
  t: v.literal("participants"),
  sid,
  participants,
  /** All attached, including any beyond the list. */
  clients: int(0, U32),
});

const SCHEMAS = {
  hello: Hello,
  welcome: Welcome,
  ping: Ping,
  req: Req,
  res: Res,
  open: Open,
  challenge: Challenge,
  auth: Auth,
  auth_ok: AuthOk,
  started: Started,
  eof: Eof,
  signal: SignalMsg,
  resize: Resize,
  exit: Exit,
  error: ErrorMsg,
  close: Close,
  sessions: Sessions,
  notice: Notice,
  participants: Participants,
  accept: Accept,
  sealed: Sealed,
};

export type Hello = v.InferOutput<typeof Hello>;
export type Welcome = v.InferOutput<typeof Welcome>;
export type Ping = v.InferOutput<typeof Ping>;
export type Req = v.InferOutput<typeof Req>;
export type Res = v.InferOutput<typeof Res>;
export type Open = v.InferOutput<typeof Open>;
/** What `tether ssh` adds to an open: how the machine runs it. */
export type RemoteSpec = Pick<Open, "shell" | "subsystem" | "user">;
export type Challenge = v.InferOutput<typeof Challenge>;
export type Auth = v.InferOutput<typeof Auth>;
export type AuthOk = v.InferOutput<typeof AuthOk>;
export type Started = v.InferOutput<typeof Started>;
export type Eof = v.InferOutput<typeof Eof>;
export type SignalMsg = v.InferOutput<typeof SignalMsg>;
export type Resize = v.InferOutput<typeof Resize>;
export type Exit = v.InferOutput<typeof Exit>;
export type ErrorMsg = v.InferOutput<typeof ErrorMsg>;
export type Close = v.InferOutput<typeof Close>;
export type Sessions = v.InferOutput<typeof Sessions>;
export type Notice = v.InferOutput<typeof Notice>;
export type Participants = v.InferOutput<typeof Participants>;
export type Accept = v.InferOutput<typeof Accept>;
export type Sealed = v.InferOutput<typeof Sealed>;
/** Any control message. */
export type Control = { [K in keyof typeof SCHEMAS]: v.InferOutput<(typeof SCHEMAS)[K]> }[
  keyof typeof SCHEMAS
];

// ---- answers to requests (typed here, checked by whoever reads them) ----

/**
 * The label of a `tether ci hold` (ci/contract.ts): a machine that lives as long as its job,
 * so clients pin its key by machine id rather than by its name, which the next run reuses.
 */
export const HOLD_LABEL = "ci";
export const HOLD_LABEL_VALUE = "hold";

/** One machine in the answer to the `machines` request. */
export interface MachineView {
  id: string;
  name: string;
  hostname: string;
  online: boolean;
  /** ISO time of the last message from its agent. */
  last_seen: string;
  heartbeat_age_ms: number;
  labels: Record<string, string>;
  /** Live PTY sessions on it. */
  sessions: number;
  os: string;
  arch: string;
  version: string;
  /** Its end-to-end public key (base64), when its agent has one. */
  key?: string;
  /** Only in answers that asked for retired machines: this one ended for good. */
  retired?: boolean;
}

/** One session or exec in the answer to the `sessions` request. */
export interface SessionView {
  id: string;
  kind: "pty" | "exec";
  machine_id: string;
  machine: string;
  /** ISO time. */
  created: string;
  command: string;
  clients: number;
  attached: boolean;
  idle_ms: number;
  cols: number;
  rows: number;
  /** pty only: who is attached (CLI keys, `share:ID` for browser pages). */
  participants?: Participant[];
  /** exec only: running, exited, timeout or lost. */
  state?: ExecState;
  exit_code?: number;
  signal?: string | null;
  /** exec only: ISO time it ended. */
  ended?: string;
}

// ---- checking ----

/** "open: field 'argv.2': Invalid type: Expected string but received 3". */
function problem(t: string, issues: readonly v.BaseIssue<unknown>[]): string {
  const first = issues[0];
  const path = first.path?.map((p) => String(p.key)).join(".");
  return `${t}: ${path ? `field '${path}': ` : ""}${first.message}`;
}

/** Checks `value` against `schema`; returns what it allows (unknown fields dropped). */
export function check<S extends v.GenericSchema>(
  what: string,
  schema: S,
  value: unknown,
): v.InferOutput<S> {
  const r = v.safeParse(schema, value);
  if (!r.success) throw new ProtocolError(problem(what, r.issues));
  return r.output;
}

/** Checks one session or exec as an agent reports it; throws ProtocolError. */
export function checkSessionInfo(value: unknown): SessionInfo {
  return check("session", SessionInfo, value);
}

/** Parses and validates one control message. */
export function parseControl(text: string, maxLength = MAX_CONTROL_MESSAGE): Control {
  if (text.length > maxLength) {
    throw new ProtocolError(`control message too large (${text.length} > ${maxLength})`);
  }
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    throw new ProtocolError("control message is not JSON");
  }
  return checkControl(o);
}

/** Validates one control message already parsed from JSON (e.g. one that was sealed). */
export function checkControl(o: unknown): Control {
  if (!o || typeof o !== "object" || Array.isArray(o)) {
    throw new ProtocolError("control message must be an object");
  }
  const t = (o as { t?: unknown }).t;
  if (typeof t !== "string" || !Object.hasOwn(SCHEMAS, t)) {
    throw new ProtocolError(`unknown control message type '${String(t)}'`);
  }
  return check(t, SCHEMAS[t as keyof typeof SCHEMAS], o) as Control;
}
