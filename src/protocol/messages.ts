/**
 * Control messages: JSON text frames, each an object with a type tag `t`.
 * Every message is validated on receipt; anything malformed raises
 * ProtocolError, which closes that one connection (see conn.ts).
 * docs/PROTOCOL.md describes the flow; this file is the definition.
 */
import { type ErrorCode, isErrorCode } from "../common/errors.ts";

/** Largest JSON control message the relay accepts from agents and clients. */
export const MAX_CONTROL_MESSAGE = 64 * 1024;
/**
 * Largest control message agents and clients accept from the relay: answers
 * such as `machines` grow with the workspace (~250 bytes a machine).
 */
export const MAX_RELAY_MESSAGE = 16 * 1024 * 1024;
/** Largest control message the relay accepts from an agent (its list of sessions and execs). */
export const MAX_AGENT_MESSAGE = 1024 * 1024;
/** Most streams one connection may have open at once. */
export const MAX_STREAMS_PER_CONN = 256;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

export type Role = "agent" | "client";

export interface AgentInfo {
  name: string;
  hostname: string;
  labels: Record<string, string>;
  os: string;
  arch: string;
}

export interface WireError {
  code: ErrorCode;
  message: string;
  hint?: string;
  candidates?: { id: string; name: string; online?: boolean }[];
  /**
   * The stream broke, not what it ran: a connection on the way ended, and the command or
   * session may still be running on the machine, to be watched again (`session`, `resume`).
   */
  resumable?: boolean;
}

export type StreamKind = "exec" | "pty";

export interface Hello {
  t: "hello";
  v: number;
  role: Role;
  version: string;
  agent?: AgentInfo;
}
export interface Welcome {
  t: "welcome";
  v: number;
  version: string;
  workspace: string;
  key_id: string;
  heartbeat_ms: number;
  /** For an agent: its machine id, and the secret when it was just enrolled. */
  machine?: { id: string; secret?: string };
}
export interface Ping {
  t: "ping";
}
export interface Req {
  t: "req";
  id: number;
  op: string;
  args: Record<string, unknown>;
}
export interface Res {
  t: "res";
  id: number;
  result?: unknown;
  error?: WireError;
}
export interface Open {
  t: "open";
  sid: number;
  /** Target machine id; set by clients, stripped by the relay before the agent sees it. */
  machine?: string;
  kind: StreamKind;
  argv: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** false: the remote process gets /dev/null as stdin. */
  stdin: boolean;
  timeout_ms?: number;
  /** Initial credit, in bytes, the opener grants for output toward it. */
  window: number;
  term?: string;
  cols?: number;
  rows?: number;
  /** Join this session (pty) or watch this exec (exec) instead of starting one. */
  session?: string;
  /** Take over the place of a watcher whose connection was lost (its `attach_id`). */
  resume?: string;
  /** Send output from this offset (stdout, or the terminal; default: all that is kept). */
  offset?: number;
  /** exec: send stderr from this offset (default: all that is kept). */
  err_offset?: number;
  /** pty: output only; the agent drops this client's input. */
  read_only?: boolean;
  /** pty: end the session when this client leaves (exec -t). */
  ephemeral?: boolean;
  /** A session token from an earlier password check on this machine. */
  token?: string;
  /** Set by the relay (never trusted from a client): the id of the client's key. */
  client_key?: string;
}

/** Agent → client: the machine has a password; prove you know it. */
export interface Challenge {
  t: "challenge";
  sid: number;
  /** scrypt parameters and salt (hex) to derive the key from the password. */
  salt: string;
  n: number;
  r: number;
  p: number;
  /** Random, hex; the proof is HMAC-SHA256(key, "tether-auth-v1|<machine id>|<nonce>"). */
  nonce: string;
  /** Set when the token the client sent was not accepted. */
  token_rejected?: boolean;
}
/** Client → agent: the answer to a challenge. */
export interface Auth {
  t: "auth";
  sid: number;
  proof: string;
}
/** Agent → client: the password was right; a token for the next 24 h. */
export interface AuthOk {
  t: "auth_ok";
  sid: number;
  token: string;
  expires: number;
}
export interface Started {
  t: "started";
  sid: number;
  pid?: number;
  /** Initial credit, in bytes, the agent grants for stdin toward it. */
  window: number;
  /** The session joined or started (pty), or the exec's id (exec). */
  session?: string;
  /** This watcher's id, to resume it after a lost connection. */
  attach_id?: string;
  /** Offset of the first output byte that will follow (stdout, or the terminal). */
  offset?: number;
  /** exec: offset of the first stderr byte that will follow. */
  err_offset?: number;
  /** exec: stdin bytes the agent has taken so far; a resuming client sends from here. */
  stdin_offset?: number;
  /** pty: offset where the replay of earlier output ends and live output begins. */
  end?: number;
}
export interface Eof {
  t: "eof";
  sid: number;
}
export interface SignalMsg {
  t: "signal";
  sid: number;
  signal: string;
}
export interface Resize {
  t: "resize";
  sid: number;
  cols: number;
  rows: number;
}
export interface Exit {
  t: "exit";
  sid: number;
  code: number;
  signal?: string | null;
}
/** With `sid`: the stream ended in failure. Without: the connection is refused or closing. */
export interface ErrorMsg extends WireError {
  t: "error";
  sid?: number;
}
export interface Close {
  t: "close";
  sid: number;
  /**
   * "detach": the client left on purpose (the command or session runs on); "lost": its
   * connection ended (it may resume); "kill": exec only, end the command as well.
   */
  reason?: "detach" | "lost" | "kill";
}

/** A PTY session, or an exec, as the agent reports it. */
export interface SessionInfo {
  id: string;
  /** Absent: "pty". */
  kind?: "pty" | "exec";
  created: number;
  command: string;
  clients: number;
  cols: number;
  rows: number;
  idle_ms: number;
  /** exec: running, exited (with exit_code and signal), timeout, or lost (agent restarted). */
  state?: ExecState;
  exit_code?: number;
  signal?: string | null;
  /** exec: when it ended (ms since the epoch). */
  ended?: number;
}

export type ExecState = "running" | "exited" | "timeout" | "lost";
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
  /** exec only: running, exited, timeout or lost. */
  state?: ExecState;
  exit_code?: number;
  signal?: string | null;
  /** exec only: ISO time it ended. */
  ended?: string;
}

/** Agent → relay: the agent's sessions, sent whenever they change. */
export interface Sessions {
  t: "sessions";
  sessions: SessionInfo[];
}
/** Agent → client: a line for the user's terminal (e.g. a CI hold about to end). */
export interface Notice {
  t: "notice";
  sid: number;
  message: string;
}

export type Control =
  | Hello
  | Welcome
  | Ping
  | Req
  | Res
  | Open
  | Started
  | Eof
  | SignalMsg
  | Resize
  | Exit
  | ErrorMsg
  | Close
  | Sessions
  | Notice
  | Challenge
  | Auth
  | AuthOk;

type Obj = Record<string, unknown>;

function fail(msg: string): never {
  throw new ProtocolError(msg);
}
function str(o: Obj, k: string, max = 4096, optional = false): void {
  const v = o[k];
  if (v === undefined && optional) return;
  if (typeof v !== "string" || v.length > max) fail(`field '${k}' must be a string`);
}
function int(o: Obj, k: string, min: number, max: number, optional = false): void {
  const v = o[k];
  if (v === undefined && optional) return;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    fail(`field '${k}' must be an integer in ${min}..${max}`);
  }
}
function optBool(o: Obj, k: string): void {
  if (o[k] !== undefined) bool(o, k);
}
function bool(o: Obj, k: string): void {
  if (typeof o[k] !== "boolean") fail(`field '${k}' must be a boolean`);
}
function strMap(o: Obj, k: string, optional = false): void {
  const v = o[k];
  if (v === undefined && optional) return;
  if (!v || typeof v !== "object" || Array.isArray(v)) fail(`field '${k}' must be an object`);
  const entries = Object.entries(v as Obj);
  if (entries.length > 1024) fail(`field '${k}' has too many entries`);
  for (const [, val] of entries) {
    if (typeof val !== "string") fail(`field '${k}' must map to strings`);
  }
}
const U32 = 0xffff_ffff;

const validators: Record<string, (o: Obj) => void> = {
  hello(o) {
    int(o, "v", 0, 1_000_000);
    if (o.role !== "agent" && o.role !== "client") fail("field 'role' must be agent or client");
    str(o, "version", 64);
    if (o.agent !== undefined) {
      const a = o.agent as Obj;
      if (!a || typeof a !== "object") fail("field 'agent' must be an object");
      str(a, "name", 256);
      str(a, "hostname", 256);
      str(a, "os", 64);
      str(a, "arch", 64);
      strMap(a, "labels");
    }
  },
  welcome(o) {
    int(o, "v", 0, 1_000_000);
    str(o, "version", 64);
    str(o, "workspace", 256);
    str(o, "key_id", 256);
    int(o, "heartbeat_ms", 100, 600_000);
  },
  ping() {},
  req(o) {
    int(o, "id", 0, U32);
    str(o, "op", 64);
    if (!o.args || typeof o.args !== "object" || Array.isArray(o.args)) {
      fail("field 'args' must be an object");
    }
  },
  res(o) {
    int(o, "id", 0, U32);
    if (o.error !== undefined) wireError(o.error as Obj);
  },
  open(o) {
    int(o, "sid", 1, U32);
    str(o, "machine", 256, true);
    if (o.kind !== "exec" && o.kind !== "pty") fail("field 'kind' must be exec or pty");
    const argv = o.argv;
    if (!Array.isArray(argv) || argv.length > 4096) fail("field 'argv' must be an array");
    if (o.kind === "exec" && argv.length === 0 && o.session === undefined) {
      fail("field 'argv' must not be empty");
    }
    for (const a of argv) if (typeof a !== "string") fail("field 'argv' must hold strings");
    str(o, "cwd", 4096, true);
    strMap(o, "env", true);
    bool(o, "stdin");
    int(o, "timeout_ms", 1, 365 * 86_400_000, true);
    int(o, "window", 1, U32);
    str(o, "term", 128, true);
    int(o, "cols", 1, 10_000, true);
    int(o, "rows", 1, 10_000, true);
    str(o, "session", 64, true);
    str(o, "resume", 64, true);
    int(o, "offset", 0, Number.MAX_SAFE_INTEGER, true);
    int(o, "err_offset", 0, Number.MAX_SAFE_INTEGER, true);
    optBool(o, "read_only");
    optBool(o, "ephemeral");
    str(o, "token", 1024, true);
    str(o, "client_key", 64, true);
  },
  challenge(o) {
    int(o, "sid", 1, U32);
    str(o, "salt", 128);
    int(o, "n", 2, 1 << 22);
    int(o, "r", 1, 64);
    int(o, "p", 1, 64);
    str(o, "nonce", 128);
    optBool(o, "token_rejected");
  },
  auth(o) {
    int(o, "sid", 1, U32);
    str(o, "proof", 128);
  },
  auth_ok(o) {
    int(o, "sid", 1, U32);
    str(o, "token", 1024);
    int(o, "expires", 0, Number.MAX_SAFE_INTEGER);
  },
  started(o) {
    int(o, "sid", 1, U32);
    int(o, "pid", 0, U32, true);
    int(o, "window", 1, U32);
    str(o, "session", 64, true);
    str(o, "attach_id", 64, true);
    int(o, "offset", 0, Number.MAX_SAFE_INTEGER, true);
    int(o, "err_offset", 0, Number.MAX_SAFE_INTEGER, true);
    int(o, "stdin_offset", 0, Number.MAX_SAFE_INTEGER, true);
    int(o, "end", 0, Number.MAX_SAFE_INTEGER, true);
  },
  eof(o) {
    int(o, "sid", 1, U32);
  },
  signal(o) {
    int(o, "sid", 1, U32);
    str(o, "signal", 16);
  },
  resize(o) {
    int(o, "sid", 1, U32);
    int(o, "cols", 1, 10_000);
    int(o, "rows", 1, 10_000);
  },
  exit(o) {
    int(o, "sid", 1, U32);
    int(o, "code", 0, 255);
    if (o.signal !== undefined && o.signal !== null) str(o, "signal", 16);
  },
  error(o) {
    int(o, "sid", 1, U32, true);
    wireError(o);
  },
  close(o) {
    int(o, "sid", 1, U32);
    if (
      o.reason !== undefined && o.reason !== "detach" && o.reason !== "lost" && o.reason !== "kill"
    ) {
      fail("field 'reason' must be detach, lost or kill");
    }
  },
  sessions(o) {
    const list = o.sessions;
    if (!Array.isArray(list) || list.length > MAX_STREAMS_PER_CONN) {
      fail("field 'sessions' must be an array");
    }
    for (const x of list) checkSessionInfo(x);
  },
  notice(o) {
    int(o, "sid", 1, U32);
    str(o, "message", 4096);
  },
};

/** Checks one session or exec as an agent reports it; throws ProtocolError. */
export function checkSessionInfo(v: unknown): asserts v is SessionInfo {
  if (!v || typeof v !== "object") fail("session must be an object");
  const x = v as Obj;
  str(x, "id", 64);
  if (x.kind !== undefined && x.kind !== "pty" && x.kind !== "exec") {
    fail("field 'kind' must be pty or exec");
  }
  int(x, "created", 0, Number.MAX_SAFE_INTEGER);
  str(x, "command", 4096);
  int(x, "clients", 0, U32);
  int(x, "cols", 1, 10_000);
  int(x, "rows", 1, 10_000);
  int(x, "idle_ms", 0, Number.MAX_SAFE_INTEGER);
  if (
    x.state !== undefined && !["running", "exited", "timeout", "lost"].includes(String(x.state))
  ) {
    fail("field 'state' must be running, exited, timeout or lost");
  }
  int(x, "exit_code", 0, 255, true);
  if (x.signal !== undefined && x.signal !== null) str(x, "signal", 16);
  int(x, "ended", 0, Number.MAX_SAFE_INTEGER, true);
}

function wireError(o: Obj): void {
  if (!o || typeof o !== "object") fail("error must be an object");
  if (!isErrorCode(o.code)) fail(`unknown error code '${String(o.code)}'`);
  str(o, "message", 4096);
  str(o, "hint", 4096, true);
  optBool(o, "resumable");
}

/** Parses and validates one control message. */
export function parseControl(text: string, maxLength = MAX_CONTROL_MESSAGE): Control {
  if (text.length > maxLength) {
    fail(`control message too large (${text.length} > ${maxLength})`);
  }
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    fail("control message is not JSON");
  }
  if (!o || typeof o !== "object" || Array.isArray(o)) fail("control message must be an object");
  const t = (o as Obj).t;
  const check = typeof t === "string" && Object.hasOwn(validators, t) ? validators[t] : undefined;
  if (!check) fail(`unknown control message type '${String(t)}'`);
  check(o as Obj);
  return o as Control;
}
