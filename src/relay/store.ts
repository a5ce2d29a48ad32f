/**
 * The relay's state: workspaces, key hashes and revocations, machines, the audit log.
 * One interface, two implementations side by side: SQLite in the relay's data dir
 * (store_sqlite.ts, the embedded default) and PostgreSQL shared by a fleet of relays
 * (store_postgres.ts). The rest of the relay never knows which one it talks to; the
 * conformance tests (tests/store_suite.ts) hold both to the same behaviour.
 * Only hashes of secrets are ever written.
 */
import { newKeyId, newSecret } from "./keys.ts";
import { SHARE_KEY_PREFIX, type ShareView } from "../protocol/share.ts";
import type { KeyRole, ParsedKey } from "../protocol/keys.ts";

export interface KeyRow {
  id: string;
  workspace: string;
  role: KeyRole;
  created_at: number;
  revoked_at: number | null;
  last_used_at: number | null;
}

export interface MachineRow {
  id: string;
  workspace: string;
  enrolled_by: string;
  name: string;
  hostname: string;
  labels: Record<string, string>;
  os: string;
  arch: string;
  agent_version: string;
  /** Its agent's end-to-end public key (base64), '' when it has none. */
  e2e_key: string;
  first_seen: number;
  last_seen: number;
  /** Set when the machine retired (an ended CI hold). */
  retired_at: number | null;
  /** In a fleet: the relay whose lease on the machine is live (its agent is there). */
  held_by: string | null;
  /** In a fleet: when that relay last renewed its leases (ms). */
  held_seen?: number | null;
}

/** What an agent says of itself in its hello, as the machines table keeps it. */
export type AgentFacts = Pick<
  MachineRow,
  "name" | "hostname" | "labels" | "os" | "arch" | "agent_version" | "e2e_key"
>;

export interface MintedKey {
  id: string;
  key: string;
  role: KeyRole;
  workspace: string;
}

/** Who a presented key turned out to be. */
export type Principal =
  | { kind: "client"; keyId: string; workspace: string }
  | { kind: "agent"; keyId: string; workspace: string }
  | { kind: "machine"; keyId: string; workspace: string; machineId: string }
  /** Another relay of the fleet (it proved the fleet secret); it speaks for its clients. */
  | { kind: "relay"; keyId: string; workspace: ""; relayId: string }
  /** A browser page of a share link: one session of one machine (keyId `share:ID`). */
  | { kind: "share"; keyId: string; workspace: string; share: ShareRow };

/**
 * Keys used since the last flush: a key check writes nothing, last use is written in
 * batches (a flood of requests must not become a flood of writes).
 */
export class KeyUse {
  private readonly used = new Map<string, number>();

  note(id: string): void {
    this.used.set(id, Date.now());
  }

  /** Hands the batch to `write`; what it wrote is forgotten, a failure keeps it for later. */
  async flush(write: (batch: Map<string, number>) => Promise<void>): Promise<void> {
    if (this.used.size === 0) return;
    const batch = new Map(this.used);
    await write(batch);
    for (const [id, at] of batch) if (this.used.get(id) === at) this.used.delete(id);
  }
}

/** The operating system's (or database's) words for why something failed. */
export function reason(e: unknown): string {
  const msg = (e as Error)?.message ?? String(e);
  return msg.split("\n")[0];
}

/** One exec or attach as the audit log keeps it. */
export interface AuditRow {
  id: number;
  workspace: string;
  key_id: string;
  machine_id: string;
  machine_name: string;
  kind: string;
  argv: string[] | null;
  session: string | null;
  started_at: number;
  ended_at: number | null;
  bytes_in: number;
  bytes_out: number;
  exit_code: number | null;
  signal: string | null;
  error: string | null;
  /** The address the client connected from (host:port as the relay saw it). */
  remote: string | null;
  /** A pty join that may only watch (connect --read-only, a read-only share link). */
  read_only: boolean;
  /** End to end: the relay saw neither the command line nor how it exited. */
  sealed: boolean;
}

/** What auditStart records. */
export type AuditStart =
  & Pick<
    AuditRow,
    "workspace" | "key_id" | "machine_id" | "machine_name" | "kind" | "argv" | "session"
  >
  & Partial<Pick<AuditRow, "remote" | "read_only" | "sealed">>;
/** What auditEnd adds. */
export type AuditEnd = Pick<
  AuditRow,
  "bytes_in" | "bytes_out" | "exit_code" | "signal" | "error" | "session"
>;

/**
 * The store. A write that cannot be done (a full disk, a read-only data dir, a database
 * that is down) throws `relay_unavailable`; reads go on where they can.
 */
export interface Store {
  readonly kind: "sqlite" | "postgres";
  close(): Promise<void>;
  /** Undefined when the store can be written; otherwise why not. */
  health(): Promise<string | undefined>;

  ensureWorkspace(name: string): Promise<void>;
  hasWorkspace(name: string): Promise<boolean>;
  /** Mints a key; the secret is in the returned `key` only. */
  createKey(workspace: string, role: KeyRole): Promise<MintedKey>;
  listKeys(): Promise<KeyRow[]>;
  /** Marks a key revoked; false when there is no such key. */
  revokeKey(id: string): Promise<boolean>;
  /**
   * Ids among `ids` that are revoked or gone (for closing live connections). A share
   * link's page is `share:ID`: revoked when its link is.
   */
  revokedAmong(ids: string[]): Promise<string[]>;
  /** Checks a presented key; null when unknown, revoked or wrong. Writes nothing. */
  authenticate(k: ParsedKey): Promise<Principal | null>;
  /** Notes that a key was used; written out by flushKeyUse(), in batches. */
  noteKeyUse(id: string): void;
  flushKeyUse(): Promise<void>;

  /** Creates a machine identity; the secret is returned once and stored hashed. */
  enrollMachine(
    workspace: string,
    enrolledBy: string,
    info: AgentFacts,
  ): Promise<{ id: string; secret: string }>;
  /** What a connecting agent says of itself, and that it was seen now. */
  updateMachine(id: string, info: AgentFacts): Promise<void>;
  /** Last-seen times, in one batch; never moves a time back. */
  touchMachines(seen: Map<string, number>): Promise<void>;
  getMachine(id: string): Promise<MachineRow | undefined>;
  /** The workspace's machines by name; retired ones only when asked for. */
  listMachines(workspace: string, opts?: { retired?: boolean }): Promise<MachineRow[]>;
  /** The machine leaves listings and its identity is refused from now on. */
  retireMachine(id: string): Promise<void>;
  /** Deletes a machine (its audit rows stay); false when there was none. */
  removeMachine(id: string): Promise<boolean>;
  /**
   * Deletes machines offline since before `offlineBefore` and retired ones since before
   * `retiredBefore`, except those in `online`; returns them.
   */
  pruneMachines(
    offlineBefore: number,
    retiredBefore: number,
    online: Set<string>,
  ): Promise<{ id: string; name: string }[]>;

  /** Makes a share link; the token (`ID.SECRET`) is returned once and kept only hashed. */
  createShare(share: NewShare): Promise<{ row: ShareRow; token: string }>;
  /** A workspace's share links, newest first (expired and revoked ones too). */
  listShares(workspace: string): Promise<ShareRow[]>;
  /** Revokes one of a workspace's links; false when there is none. */
  revokeShare(workspace: string, id: string): Promise<boolean>;
  /**
   * Spends one use of the link `token` names, atomically, if the secret matches and the
   * link is neither revoked, expired nor used up; else says why not.
   */
  useShare(token: string, now?: number): Promise<ShareRow | ShareRefusal>;
  /** Records the start of an exec or attach; returns its row id. */
  auditStart(row: AuditStart): Promise<number>;
  /** Records its end (once; a second end is ignored). */
  auditEnd(id: number, end: AuditEnd): Promise<void>;
  /** The newest `limit` rows, oldest first. */
  listAudit(limit?: number): Promise<AuditRow[]>;

  /** What several relays need to share one store; only a shared database has it. */
  readonly fleet?: FleetStore;
}

/**
 * How long a relay's leases outlive its last renewal. A lease has no time of its own: it is
 * live while its relay's row was seen within this, so renewing every lease a relay holds is
 * one row written (the relay's), whatever the number of agents.
 */
export const LEASE_TTL_MS = 10_000;

/** A share link (`tether share`, issue 17); see ShareView. */
export type ShareRow = ShareView;

export type NewShare = Omit<ShareRow, "id" | "created_at" | "revoked_at">;

/** Why a share token opens nothing. */
export type ShareRefusal = "unknown" | "expired" | "used" | "revoked";

/** A relay of the fleet as the store knows it. */
export interface RelayRow {
  id: string;
  /** How the other relays reach it (`--advertise`). */
  url: string;
  started_at: number;
  seen_at: number;
}

/** What relays tell each other through the store, at once (see Fleet). */
export type FleetEvent =
  | { kind: "revoke"; id: string }
  | { kind: "machine"; id: string }
  | { kind: "lease"; machine: string; relay: string; epoch: number };

/**
 * The fleet's shared state beyond the Store: the relays, and which relay holds each
 * agent (a lease with an epoch: a newer claim wins, and a relay whose lease was taken
 * closes its stale connection). A relay renews all its leases by writing its own row,
 * never one per agent or per heartbeat.
 */
export interface FleetStore {
  /** Adds or refreshes this relay's row. */
  registerRelay(id: string, url: string): Promise<void>;
  removeRelay(id: string): Promise<void>;
  /** Relays seen within `withinMs`. */
  liveRelays(withinMs: number): Promise<RelayRow[]>;
  /** Takes the machine's lease for `relay` (whoever held it); returns the new epoch. */
  claimLease(machine: string, relay: string): Promise<number>;
  /**
   * Marks the relay seen, which keeps every lease it holds alive (a lease lives while its
   * relay renews); returns those of `held` (machine → epoch) it no longer holds.
   */
  renewLeases(relay: string, url: string, held: Map<string, number>): Promise<string[]>;
  /** Gives a lease up, if it is still the one held. */
  releaseLease(machine: string, relay: string, epoch: number): Promise<void>;
  /** The relay holding a live lease on the machine, with its URL. */
  holder(machine: string): Promise<{ relay: string; url: string; epoch: number } | undefined>;
  /**
   * Calls `on` with every fleet event, and `resync` whenever events may have been missed
   * (the listening connection was re-established); resolves once listening.
   */
  listen(on: (e: FleetEvent) => void, resync: () => void): Promise<void>;
  notify(e: FleetEvent): Promise<void>;
}

/** The columns of a share row, as both stores select them. */
export const SHARE_COLUMNS =
  "id, workspace, machine_id, session, read_only, created_by, created_at, expires_at, uses_left, revoked_at";

/** A share row from either store's row (SQLite keeps booleans as 0/1). */
export function shareFromRow(r: Record<string, unknown>): ShareRow {
  return {
    id: String(r.id),
    workspace: String(r.workspace),
    machine_id: String(r.machine_id),
    session: String(r.session),
    read_only: r.read_only === true || r.read_only === 1,
    created_by: String(r.created_by),
    created_at: Number(r.created_at),
    expires_at: Number(r.expires_at),
    uses_left: Number(r.uses_left),
    revoked_at: r.revoked_at === null || r.revoked_at === undefined ? null : Number(r.revoked_at),
  };
}

/** A new share: its public id, its secret (≥ 128 bits), and the row to keep. */
export function newShareRow(s: NewShare): { id: string; secret: string; row: ShareRow } {
  const id = newKeyId();
  const secret = newSecret();
  return { id, secret, row: { ...s, id, created_at: Date.now(), revoked_at: null } };
}

/** `ID.SECRET` as `newShareRow` makes them; undefined when it is not one. */
export function parseShareToken(token: string): { id: string; secret: string } | undefined {
  const m = /^([0-9a-f]{12})\.([0-9a-f]{40})$/.exec(token);
  return m ? { id: m[1], secret: m[2] } : undefined;
}

/** Splits `ids` into keys and share links (`share:ID`, by link id). */
export function splitKeyIds(ids: string[]): { keys: string[]; shares: string[] } {
  const keys: string[] = [];
  const shares: string[] = [];
  for (const id of ids) {
    if (id.startsWith(SHARE_KEY_PREFIX)) shares.push(id.slice(SHARE_KEY_PREFIX.length));
    else keys.push(id);
  }
  return { keys, shares };
}

/** An audit row from either store's row (argv as JSON text in SQLite, booleans as 0/1). */
export function auditFromRow(r: Record<string, unknown>): AuditRow {
  return {
    ...(r as unknown as AuditRow),
    argv: typeof r.argv === "string" ? JSON.parse(r.argv) : (r.argv as string[] | null) ?? null,
    remote: (r.remote as string | null) ?? null,
    read_only: r.read_only === true || r.read_only === 1,
    sealed: r.sealed === true || r.sealed === 1,
  };
}

/** Why a link whose secret matched opens nothing, judged before its use is spent. */
export function shareRefusal(row: ShareRow, now: number): ShareRefusal | undefined {
  if (row.revoked_at !== null) return "revoked";
  if (row.expires_at <= now) return "expired";
  if (row.uses_left <= 0) return "used";
  return undefined;
}
