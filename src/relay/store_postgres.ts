/**
 * The relay's store in PostgreSQL (npm `postgres`), shared by a fleet of relays: every
 * relay of the fleet reads and writes the same tables, so a key minted on one is good on
 * all, a revocation reaches all, and a machine keeps its identity whichever relay it dials.
 * Schema changes are numbered migrations, applied under an advisory lock so that relays
 * starting together migrate once. Times are milliseconds since the epoch in BIGINT
 * columns (read back as numbers); only hashes of secrets are ever written. The
 * interface is store.ts.
 *
 * A database that is down or refuses a statement is a `relay_unavailable` error: the
 * relay answers 503 (retry) and never refuses a key for it.
 */
import postgres from "postgres";
import { hashSecret, newKeyId, newSecret, secretMatches } from "./keys.ts";
import { formatKey, type KeyRole, type ParsedKey } from "../protocol/keys.ts";
import { TetherError } from "../common/errors.ts";
import {
  type AgentFacts,
  type AuditEnd,
  auditFromRow,
  type AuditRow,
  type AuditStart,
  type FleetEvent,
  type FleetStore,
  type KeyRow,
  KeyUse,
  LEASE_TTL_MS,
  type MachineRow,
  type MintedKey,
  type NewShare,
  newShareRow,
  parseShareToken,
  type Principal,
  reason,
  type RelayRow,
  SHARE_COLUMNS,
  shareFromRow,
  type ShareRefusal,
  shareRefusal,
  type ShareRow,
  splitKeyIds,
  type Store,
} from "./store.ts";
import { SHARE_KEY_PREFIX } from "../protocol/share.ts";
import { DEFAULT_DIAL_TIMEOUT_MS } from "../protocol/dial.ts";

const MIGRATIONS: string[] = [
  `CREATE TABLE workspaces (
     name TEXT PRIMARY KEY,
     created_at BIGINT NOT NULL
   );
   CREATE TABLE keys (
     id TEXT PRIMARY KEY,
     workspace TEXT NOT NULL REFERENCES workspaces(name),
     role TEXT NOT NULL CHECK (role IN ('client', 'agent')),
     hash TEXT NOT NULL,
     created_at BIGINT NOT NULL,
     revoked_at BIGINT,
     last_used_at BIGINT
   );
   CREATE TABLE machines (
     id TEXT PRIMARY KEY,
     workspace TEXT NOT NULL REFERENCES workspaces(name),
     secret_hash TEXT NOT NULL,
     enrolled_by TEXT NOT NULL,
     name TEXT NOT NULL,
     hostname TEXT NOT NULL,
     labels JSONB NOT NULL DEFAULT '{}',
     os TEXT NOT NULL DEFAULT '',
     arch TEXT NOT NULL DEFAULT '',
     agent_version TEXT NOT NULL DEFAULT '',
     first_seen BIGINT NOT NULL,
     last_seen BIGINT NOT NULL,
     retired_at BIGINT
   );
   CREATE INDEX machines_workspace ON machines(workspace);
   CREATE TABLE audit (
     id BIGSERIAL PRIMARY KEY,
     workspace TEXT NOT NULL,
     key_id TEXT NOT NULL,
     machine_id TEXT NOT NULL,
     machine_name TEXT NOT NULL,
     kind TEXT NOT NULL,
     argv JSONB,
     session TEXT,
     started_at BIGINT NOT NULL,
     ended_at BIGINT,
     bytes_in BIGINT NOT NULL DEFAULT 0,
     bytes_out BIGINT NOT NULL DEFAULT 0,
     exit_code INTEGER,
     signal TEXT,
     error TEXT
   );
   CREATE INDEX audit_started ON audit(started_at);
   CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at BIGINT NOT NULL);`,
  // The fleet: its relays, and which relay holds each agent.
  `CREATE TABLE relays (
     id TEXT PRIMARY KEY,
     url TEXT NOT NULL,
     started_at BIGINT NOT NULL,
     seen_at BIGINT NOT NULL
   );
   CREATE TABLE leases (
     machine_id TEXT PRIMARY KEY,
     relay_id TEXT NOT NULL,
     epoch BIGINT NOT NULL
   );
   CREATE INDEX leases_relay ON leases(relay_id);`,
  // Share links (tether share): the token's secret only as a hash.
  `CREATE TABLE shares (
     id TEXT PRIMARY KEY,
     workspace TEXT NOT NULL,
     machine_id TEXT NOT NULL,
     session TEXT NOT NULL,
     read_only BOOLEAN NOT NULL,
     hash TEXT NOT NULL,
     created_by TEXT NOT NULL,
     created_at BIGINT NOT NULL,
     expires_at BIGINT NOT NULL,
     uses_left INTEGER NOT NULL,
     revoked_at BIGINT
   );
   CREATE INDEX shares_workspace ON shares(workspace);`,
  // Who joined from where, and whether only to watch (a share link's page, issue 17).
  `ALTER TABLE audit ADD COLUMN remote TEXT,
     ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT false;`,
  // End to end (issue 19): the agent's public key, as its last hello said; a stream whose
  // command line and exit status the relay cannot see.
  `ALTER TABLE machines ADD COLUMN e2e_key TEXT NOT NULL DEFAULT '';
   ALTER TABLE audit ADD COLUMN sealed BOOLEAN NOT NULL DEFAULT false;`,
];

/** The channel of LISTEN/NOTIFY the relays of a fleet tell each other on. */
const CHANNEL = "tether_fleet";

export const PG_SCHEMA_VERSION = MIGRATIONS.length;

/** Any number for the advisory lock that serialises migrations across relays. */
const MIGRATION_LOCK = 7420_0001;

/** How long a relay waits for a connection to the database before it says so. */
const CONNECT_TIMEOUT_S = 5;

/** How long one store operation may take before it fails as relay_unavailable. */
const QUERY_TIMEOUT_MS = 10_000;

/**
 * How long a key check may take: a connecting client waits for its answer at most its dial
 * timeout, and must hear "relay_unavailable" (retry shortly), not give up on a relay that
 * seems unreachable, when the database is slow or silent.
 */
const KEY_CHECK_TIMEOUT_MS = DEFAULT_DIAL_TIMEOUT_MS / 2;

/** Connections one relay holds open at most. */
const POOL_SIZE = 8;

/** A machine's columns, with the relay holding a live lease on it (`m` and `l`). */
const MACHINE_COLUMNS = `m.id, m.workspace, m.enrolled_by, m.name, m.hostname, m.labels, m.os,
  m.arch, m.agent_version, m.e2e_key, m.first_seen, m.last_seen, m.retired_at, l.relay_id AS held_by,
  lr.seen_at AS held_seen`;

/** Fleet events as NOTIFY payloads: `revoke:ID`, `machine:ID`, `lease:MACHINE:RELAY:EPOCH`. */
export function encodeEvent(e: FleetEvent): string {
  return e.kind === "lease" ? `lease:${e.machine}:${e.relay}:${e.epoch}` : `${e.kind}:${e.id}`;
}

export function decodeEvent(payload: string): FleetEvent | undefined {
  const [kind, a, b, c] = payload.split(":");
  if ((kind === "revoke" || kind === "machine") && a) return { kind, id: a };
  if (kind === "lease" && a && b && Number.isSafeInteger(Number(c))) {
    return { kind, machine: a, relay: b, epoch: Number(c) };
  }
  return undefined;
}

type Sql = postgres.Sql;

/** The leases whose relay renewed within LEASE_TTL_MS, as `l` (with the relay as `lr`). */
function liveLeases(sql: Sql) {
  return sql`(leases l JOIN relays lr ON lr.id = l.relay_id
              AND lr.seen_at > ${sql.unsafe(DB_NOW_MS)} - ${LEASE_TTL_MS})`;
}

/**
 * The database's clock in ms. Relays' liveness is written and judged by this one clock, so
 * relays whose own clocks disagree still agree on which leases live.
 */
const DB_NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/** Whether a --store value names a PostgreSQL database. */
export function isPostgresUrl(spec: string): boolean {
  return /^postgres(ql)?:\/\//i.test(spec);
}

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "postgres://…";
  }
}

export class PostgresStore implements Store, FleetStore {
  readonly kind = "postgres";
  readonly fleet: FleetStore = this;
  private readonly keyUse = new KeyUse();
  private lastError?: string;

  private constructor(readonly sql: Sql, readonly where: string) {}

  /**
   * Connects and migrates. A database that cannot be reached, or refuses us, is a
   * `relay_unavailable` error naming it (never its password) and the server's reason.
   */
  static async connect(url: string): Promise<PostgresStore> {
    const where = redactUrl(url);
    const sql = postgres(url, {
      max: POOL_SIZE,
      connect_timeout: CONNECT_TIMEOUT_S,
      // Idle connections are closed, so that a fleet of relays does not pin the server's.
      idle_timeout: 60,
      onnotice: () => {},
      // BIGINT columns hold milliseconds and byte counts, well inside a double's integers.
      types: {
        bigint: {
          to: 20,
          from: [20],
          serialize: (x: number) => String(x),
          parse: (x: string) => Number(x),
        },
      },
    });
    const store = new PostgresStore(sql, where);
    try {
      await store.migrate();
    } catch (e) {
      await sql.end({ timeout: 1 }).catch(() => {});
      if (e instanceof TetherError) throw e;
      throw new TetherError(
        "relay_unavailable",
        `cannot use the store ${where}: ${reason(e)}`,
        {
          hint: "check that the database is up, reachable from this relay, and that the URL's " +
            "user may create tables in it",
          cause: e,
        },
      );
    }
    return store;
  }

  async close(): Promise<void> {
    await this.flushKeyUse().catch(() => {/* best effort */});
    await this.sql.end({ timeout: 2 });
  }

  /**
   * Runs a statement. A failure (the database down, full, read-only) is remembered
   * for health() and becomes `relay_unavailable`; the next success clears it.
   */
  private async run<T>(
    what: string,
    fn: (sql: Sql) => Promise<T>,
    timeoutMs = QUERY_TIMEOUT_MS,
  ): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      // A database that went silent (a cut network, no reset) fails the operation after a
      // bound, rather than holding what waits on it (an open, a renewal) indefinitely.
      const out = await Promise.race([
        fn(this.sql),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no answer within ${timeoutMs / 1000} s`)),
            timeoutMs,
          );
        }),
      ]);
      this.lastError = undefined;
      return out;
    } catch (e) {
      if (e instanceof TetherError) throw e;
      this.lastError = reason(e);
      throw new TetherError(
        "relay_unavailable",
        `the relay cannot use its store (${what}): ${this.lastError}`,
        { hint: `the relay's operator must check the database ${this.where}` },
      );
    } finally {
      clearTimeout(timer);
    }
  }

  /** As run(), for a query whose rows are the answer: a plain array of them. */
  private async rows<T>(what: string, fn: (sql: Sql) => Promise<T[]>): Promise<T[]> {
    return [...await this.run(what, fn)];
  }

  private async migrate(): Promise<void> {
    await this.sql.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
      await tx`CREATE TABLE IF NOT EXISTS tether_schema (version INTEGER NOT NULL)`;
      const rows = await tx<{ version: number }[]>`SELECT version FROM tether_schema`;
      const current = rows[0]?.version ?? 0;
      if (current > PG_SCHEMA_VERSION) {
        throw new TetherError(
          "internal",
          `the store is schema v${current}, newer than this tether (v${PG_SCHEMA_VERSION})`,
          { hint: "run the same tether release on every relay of the fleet" },
        );
      }
      for (let v = current; v < PG_SCHEMA_VERSION; v++) await tx.unsafe(MIGRATIONS[v]);
      if (rows.length === 0) {
        await tx`INSERT INTO tether_schema (version) VALUES (${PG_SCHEMA_VERSION})`;
      } else await tx`UPDATE tether_schema SET version = ${PG_SCHEMA_VERSION}`;
    });
  }

  async health(): Promise<string | undefined> {
    try {
      await this.run(
        "readiness check",
        (sql) =>
          sql`INSERT INTO health (id, checked_at) VALUES (1, ${Date.now()})
            ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at`,
      );
      return undefined;
    } catch {
      return `the store ${this.where} cannot be written: ${this.lastError}`;
    }
  }

  noteKeyUse(id: string): void {
    this.keyUse.note(id);
  }

  flushKeyUse(): Promise<void> {
    return this.keyUse.flush(async (batch) => {
      await this.run(
        "key use",
        (sql) =>
          sql`UPDATE keys k SET last_used_at = greatest(coalesce(k.last_used_at, 0), u.at)
              FROM (SELECT e->>0 AS id, (e->>1)::bigint AS at
                      FROM jsonb_array_elements(${sql.json([...batch])}) e) u
             WHERE k.id = u.id`,
      );
    });
  }

  async ensureWorkspace(name: string): Promise<void> {
    await this.run(
      "workspace",
      (sql) =>
        sql`INSERT INTO workspaces (name, created_at) VALUES (${name}, ${Date.now()})
          ON CONFLICT (name) DO NOTHING`,
    );
  }

  async hasWorkspace(name: string): Promise<boolean> {
    const rows = await this.run(
      "workspace",
      (sql) => sql`SELECT 1 FROM workspaces WHERE name = ${name}`,
    );
    return rows.length > 0;
  }

  async createShare(share: NewShare): Promise<{ row: ShareRow; token: string }> {
    const { id, secret, row } = newShareRow(share);
    await this.run(
      "new share",
      (sql) =>
        sql`INSERT INTO shares (id, workspace, machine_id, session, read_only, hash, created_by,
            created_at, expires_at, uses_left)
          VALUES (${id}, ${row.workspace}, ${row.machine_id}, ${row.session}, ${row.read_only},
            ${hashSecret(secret)}, ${row.created_by}, ${row.created_at}, ${row.expires_at},
            ${row.uses_left})`,
    );
    return { row, token: `${id}.${secret}` };
  }

  async listShares(workspace: string): Promise<ShareRow[]> {
    const rows = await this.rows(
      "shares",
      (sql) =>
        sql<Record<string, unknown>[]>`SELECT ${sql.unsafe(SHARE_COLUMNS)} FROM shares
        WHERE workspace = ${workspace} ORDER BY created_at DESC, id`,
    );
    return rows.map(shareFromRow);
  }

  async revokeShare(workspace: string, id: string): Promise<boolean> {
    const r = await this.run(
      "share revocation",
      (sql) =>
        sql`UPDATE shares SET revoked_at = coalesce(revoked_at, ${Date.now()})
           WHERE id = ${id} AND workspace = ${workspace}`,
    );
    // The relays holding its pages cut them now rather than at their next sweep.
    if (r.count > 0) await this.notify({ kind: "revoke", id }).catch(() => {});
    return r.count > 0;
  }

  async useShare(token: string, now = Date.now()): Promise<ShareRow | ShareRefusal> {
    const t = parseShareToken(token);
    const [found] = t
      ? await this.rows(
        "share",
        (sql) =>
          sql<Record<string, unknown>[]>`SELECT ${sql.unsafe(SHARE_COLUMNS)}, hash FROM shares
          WHERE id = ${t.id}`,
      )
      : [];
    if (!t || !secretMatches(t.secret, found?.hash as string | undefined)) return "unknown";
    const row = shareFromRow(found!);
    const refusal = shareRefusal(row, now);
    if (refusal) return refusal;
    // One statement decides, so two pages on two relays racing for the last use cannot both.
    const r = await this.run("share use", (sql) =>
      sql`UPDATE shares SET uses_left = uses_left - 1
           WHERE id = ${row.id} AND uses_left > 0 AND revoked_at IS NULL AND expires_at > ${now}`);
    return r.count > 0 ? { ...row, uses_left: row.uses_left - 1 } : "used";
  }

  async createKey(workspace: string, role: KeyRole): Promise<MintedKey> {
    if (!await this.hasWorkspace(workspace)) {
      throw new TetherError("usage", `no workspace named '${workspace}'`, {
        hint: `create it with: tether relay init --workspace ${workspace}`,
      });
    }
    const id = newKeyId();
    const secret = newSecret();
    await this.run("new key", (sql) =>
      sql`INSERT INTO keys (id, workspace, role, hash, created_at)
          VALUES (${id}, ${workspace}, ${role}, ${hashSecret(secret)}, ${Date.now()})`);
    return { id, key: formatKey(role, id, secret), role, workspace };
  }

  listKeys(): Promise<KeyRow[]> {
    return this.rows(
      "keys",
      (sql) =>
        sql<KeyRow[]>`SELECT id, workspace, role, created_at, revoked_at, last_used_at
                      FROM keys ORDER BY created_at, id`,
    );
  }

  async revokeKey(id: string): Promise<boolean> {
    const r = await this.run(
      "revocation",
      (sql) =>
        sql`UPDATE keys SET revoked_at = coalesce(revoked_at, ${Date.now()}) WHERE id = ${id}`,
    );
    // Every relay closes the key's connections now, not at its next sweep.
    if (r.count > 0) await this.notify({ kind: "revoke", id });
    return r.count > 0;
  }

  async revokedAmong(ids: string[]): Promise<string[]> {
    const { keys, shares } = splitKeyIds(ids);
    const live = async (table: "keys" | "shares", among: string[]) =>
      among.length === 0 ? [] : (await this.run(
        "revocations",
        (sql) =>
          sql<{ id: string }[]>`SELECT id FROM ${sql(table)}
            WHERE revoked_at IS NULL AND id IN ${sql(among)}`,
      )).map((r) => r.id);
    const alive = new Set([
      ...await live("keys", keys),
      ...(await live("shares", shares)).map((id) => SHARE_KEY_PREFIX + id),
    ]);
    return ids.filter((id) => !alive.has(id));
  }

  async authenticate(k: ParsedKey): Promise<Principal | null> {
    if (k.kind === "machine") {
      const [m] = await this.run(
        "key check",
        (sql) =>
          sql<
            { hash: string; workspace: string; enrolled_by: string; revoked_at: number | null }[]
          >`
          SELECT m.secret_hash AS hash, m.workspace, m.enrolled_by, k.revoked_at
            FROM machines m JOIN keys k ON k.id = m.enrolled_by
           WHERE m.id = ${k.id} AND m.retired_at IS NULL`,
        KEY_CHECK_TIMEOUT_MS,
      );
      const ok = secretMatches(k.secret, m?.hash);
      if (!ok || !m || m.revoked_at !== null) return null;
      return { kind: "machine", keyId: m.enrolled_by, workspace: m.workspace, machineId: k.id };
    }
    const [row] = await this.run(
      "key check",
      (sql) =>
        sql<{ hash: string; workspace: string; role: KeyRole; revoked_at: number | null }[]>`
        SELECT hash, workspace, role, revoked_at FROM keys WHERE id = ${k.id}`,
      KEY_CHECK_TIMEOUT_MS,
    );
    const ok = secretMatches(k.secret, row?.hash);
    if (!ok || !row || row.revoked_at !== null || row.role !== k.kind) return null;
    this.noteKeyUse(k.id);
    return { kind: row.role, keyId: k.id, workspace: row.workspace };
  }

  async enrollMachine(
    workspace: string,
    enrolledBy: string,
    info: AgentFacts,
  ): Promise<{ id: string; secret: string }> {
    const id = crypto.randomUUID();
    const secret = newSecret();
    const now = Date.now();
    await this.run(
      "enrollment",
      (sql) =>
        sql`INSERT INTO machines (id, workspace, secret_hash, enrolled_by, name, hostname, labels,
                                os, arch, agent_version, e2e_key, first_seen, last_seen)
          VALUES (${id}, ${workspace}, ${hashSecret(secret)}, ${enrolledBy}, ${info.name},
                  ${info.hostname}, ${sql.json(info.labels)}, ${info.os}, ${info.arch},
                  ${info.agent_version}, ${info.e2e_key}, ${now}, ${now})`,
    );
    return { id, secret };
  }

  async updateMachine(id: string, info: AgentFacts): Promise<void> {
    await this.run(
      "machine",
      (sql) =>
        sql`UPDATE machines SET name = ${info.name}, hostname = ${info.hostname},
            labels = ${sql.json(info.labels)}, os = ${info.os}, arch = ${info.arch},
            agent_version = ${info.agent_version}, e2e_key = ${info.e2e_key},
            last_seen = ${Date.now()}
          WHERE id = ${id}`,
    );
  }

  async touchMachines(seen: Map<string, number>): Promise<void> {
    if (seen.size === 0) return;
    await this.run(
      "heartbeats",
      (sql) =>
        sql`UPDATE machines m SET last_seen = greatest(m.last_seen, u.at)
            FROM (SELECT e->>0 AS id, (e->>1)::bigint AS at
                    FROM jsonb_array_elements(${sql.json([...seen])}) e) u
           WHERE m.id = u.id`,
    );
  }

  async getMachine(id: string): Promise<MachineRow | undefined> {
    const [row] = await this.run(
      "machine",
      (sql) =>
        sql<MachineRow[]>`SELECT ${sql.unsafe(MACHINE_COLUMNS)} FROM machines m
          LEFT JOIN ${liveLeases(sql)} ON l.machine_id = m.id
          WHERE m.id = ${id}`,
    );
    return row;
  }

  listMachines(workspace: string, opts: { retired?: boolean } = {}): Promise<MachineRow[]> {
    return this.rows(
      "machines",
      (sql) =>
        sql<MachineRow[]>`SELECT ${sql.unsafe(MACHINE_COLUMNS)} FROM machines m
          LEFT JOIN ${liveLeases(sql)} ON l.machine_id = m.id
          WHERE m.workspace = ${workspace} ${opts.retired ? sql`` : sql`AND m.retired_at IS NULL`}
          ORDER BY m.name, m.id`,
    );
  }

  async retireMachine(id: string): Promise<void> {
    await this.run(
      "retirement",
      (sql) =>
        sql`UPDATE machines SET retired_at = ${Date.now()} WHERE id = ${id} AND retired_at IS NULL`,
    );
    await this.notify({ kind: "machine", id });
  }

  async removeMachine(id: string): Promise<boolean> {
    const r = await this.run(
      "machine removal",
      (sql) =>
        sql`WITH gone AS (DELETE FROM machines WHERE id = ${id} RETURNING id),
                        leases_gone AS (DELETE FROM leases WHERE machine_id IN (SELECT id FROM gone))
                   SELECT id FROM gone`,
    );
    if (r.count > 0) await this.notify({ kind: "machine", id });
    return r.count > 0;
  }

  pruneMachines(
    offlineBefore: number,
    retiredBefore: number,
    online: Set<string>,
  ): Promise<{ id: string; name: string }[]> {
    // -Infinity (never prune offline machines) has no BIGINT; the oldest time does.
    const offline = Number.isFinite(offlineBefore) ? offlineBefore : 0;
    return this.rows("pruning", (sql) =>
      sql<{ id: string; name: string }[]>`
        WITH gone AS (
          DELETE FROM machines
           WHERE ((retired_at IS NULL AND last_seen < ${offline}) OR retired_at < ${retiredBefore})
             AND NOT (id IN (SELECT jsonb_array_elements_text(${sql.json([...online])})))
             AND NOT EXISTS (SELECT 1 FROM ${liveLeases(sql)} WHERE l.machine_id = machines.id)
          RETURNING id, name),
        leases_gone AS (DELETE FROM leases WHERE machine_id IN (SELECT id FROM gone))
        SELECT id, name FROM gone`);
  }

  // ---- the fleet ----

  async registerRelay(id: string, url: string): Promise<void> {
    await this.run(
      "relay registry",
      (sql) =>
        sql`INSERT INTO relays (id, url, started_at, seen_at)
            VALUES (${id}, ${url}, ${sql.unsafe(DB_NOW_MS)}, ${sql.unsafe(DB_NOW_MS)})
          ON CONFLICT (id) DO UPDATE SET url = excluded.url, seen_at = excluded.seen_at`,
    );
  }

  async removeRelay(id: string): Promise<void> {
    await this.run("relay registry", async (sql) => {
      // Released, not deleted: the next claim goes on from the epoch it had.
      await sql`UPDATE leases SET relay_id = '' WHERE relay_id = ${id}`;
      await sql`DELETE FROM relays WHERE id = ${id}`;
    });
  }

  liveRelays(withinMs: number): Promise<RelayRow[]> {
    return this.rows(
      "relay registry",
      (sql) =>
        sql<RelayRow[]>`SELECT id, url, started_at, seen_at FROM relays
                       WHERE seen_at > ${sql.unsafe(DB_NOW_MS)} - ${withinMs} ORDER BY id`,
    );
  }

  async claimLease(machine: string, relay: string): Promise<number> {
    const [row] = await this.run("lease", (sql) =>
      sql<{ epoch: number }[]>`
        INSERT INTO leases (machine_id, relay_id, epoch) VALUES (${machine}, ${relay}, 1)
        ON CONFLICT (machine_id) DO UPDATE
          SET relay_id = excluded.relay_id, epoch = leases.epoch + 1
        RETURNING epoch`);
    await this.notify({ kind: "lease", machine, relay, epoch: row.epoch }).catch(() => {
      /* the others' renewals find out anyway */
    });
    return row.epoch;
  }

  async renewLeases(relay: string, url: string, held: Map<string, number>): Promise<string[]> {
    const kept = await this.rows("leases", async (sql) => {
      // One row written, however many agents: the leases live as long as this row is fresh.
      // (An upsert: a relay whose row was removed, say by a restored database, is back.)
      await sql`INSERT INTO relays (id, url, started_at, seen_at)
                VALUES (${relay}, ${url}, ${sql.unsafe(DB_NOW_MS)}, ${sql.unsafe(DB_NOW_MS)})
                ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at`;
      if (held.size === 0) return [];
      // A read: which of ours another relay has claimed since (its epoch moved on).
      return await sql<{ machine_id: string; epoch: number }[]>`
        SELECT machine_id, epoch FROM leases WHERE relay_id = ${relay}`;
    });
    const still = new Map(kept.map((r) => [r.machine_id, r.epoch]));
    return [...held].filter(([m, epoch]) => still.get(m) !== epoch).map(([m]) => m);
  }

  async releaseLease(machine: string, relay: string, epoch: number): Promise<void> {
    await this.run("lease", (sql) =>
      // Released, not deleted: the next claim goes on from this epoch, so an event about an
      // older connection can never look newer than the next one.
      sql`UPDATE leases SET relay_id = ''
           WHERE machine_id = ${machine} AND relay_id = ${relay} AND epoch = ${epoch}`);
  }

  async holder(
    machine: string,
  ): Promise<{ relay: string; url: string; epoch: number } | undefined> {
    const [row] = await this.run(
      "lease",
      (sql) =>
        sql<{ relay: string; url: string; epoch: number }[]>`
        SELECT l.relay_id AS relay, lr.url, l.epoch FROM ${liveLeases(sql)}
         WHERE l.machine_id = ${machine}`,
    );
    return row;
  }

  async listen(on: (e: FleetEvent) => void, resync: () => void): Promise<void> {
    let first = true;
    await this.sql.listen(CHANNEL, (payload) => {
      const e = decodeEvent(payload);
      if (e) on(e);
    }, () => {
      // Called on every (re)connection of the listening connection: what was notified
      // while it was down is found by reading again.
      if (!first) resync();
      first = false;
    });
  }

  async notify(e: FleetEvent): Promise<void> {
    await this.run("notify", (sql) => sql.notify(CHANNEL, encodeEvent(e)));
  }

  async auditStart(row: AuditStart): Promise<number> {
    const [r] = await this.run("audit", (sql) =>
      sql<{ id: number }[]>`
        INSERT INTO audit (workspace, key_id, machine_id, machine_name, kind, argv, session,
                           started_at, remote, read_only, sealed)
        VALUES (${row.workspace}, ${row.key_id}, ${row.machine_id}, ${row.machine_name},
                ${row.kind}, ${row.argv ? sql.json(row.argv) : null}, ${row.session},
                ${Date.now()}, ${row.remote ?? null}, ${!!row.read_only}, ${!!row.sealed})
        RETURNING id`);
    return r.id;
  }

  async auditEnd(id: number, end: AuditEnd): Promise<void> {
    await this.run(
      "audit",
      (sql) =>
        sql`UPDATE audit SET ended_at = ${Date.now()}, bytes_in = ${end.bytes_in},
            bytes_out = ${end.bytes_out}, exit_code = ${end.exit_code}, signal = ${end.signal},
            error = ${end.error}, session = coalesce(${end.session}, session)
          WHERE id = ${id} AND ended_at IS NULL`,
    );
  }

  async listAudit(limit = 1000): Promise<AuditRow[]> {
    const rows = await this.rows(
      "audit",
      (sql) => sql<Record<string, unknown>[]>`SELECT * FROM audit ORDER BY id DESC LIMIT ${limit}`,
    );
    return rows.reverse().map(auditFromRow);
  }
}
