/**
 * The relay's store in SQLite (node:sqlite), the embedded default: one file in the relay's
 * data dir. Schema changes are numbered migrations tracked with PRAGMA user_version. Only
 * hashes of secrets are ever written here. The interface is store.ts.
 */
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { hashSecret, newKeyId, newSecret, secretMatches } from "./keys.ts";
import { formatKey, type KeyRole, type ParsedKey } from "../protocol/keys.ts";
import { TetherError } from "../common/errors.ts";
import {
  type AgentFacts,
  type AuditEnd,
  auditFromRow,
  type AuditRow,
  type AuditStart,
  type KeyRow,
  KeyUse,
  type MachineRow,
  type MintedKey,
  type NewShare,
  newShareRow,
  parseShareToken,
  type Principal,
  reason,
  SHARE_COLUMNS,
  shareFromRow,
  type ShareRefusal,
  shareRefusal,
  type ShareRow,
  splitKeyIds,
  type Store,
} from "./store.ts";
import { SHARE_KEY_PREFIX } from "../protocol/share.ts";

const MIGRATIONS: string[] = [
  `CREATE TABLE workspaces (
     name TEXT PRIMARY KEY,
     created_at INTEGER NOT NULL
   );
   CREATE TABLE keys (
     id TEXT PRIMARY KEY,
     workspace TEXT NOT NULL REFERENCES workspaces(name),
     role TEXT NOT NULL CHECK (role IN ('client', 'agent')),
     hash TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     revoked_at INTEGER,
     last_used_at INTEGER
   );
   CREATE TABLE machines (
     id TEXT PRIMARY KEY,
     workspace TEXT NOT NULL REFERENCES workspaces(name),
     secret_hash TEXT NOT NULL,
     enrolled_by TEXT NOT NULL,
     name TEXT NOT NULL,
     hostname TEXT NOT NULL,
     labels TEXT NOT NULL DEFAULT '{}',
     os TEXT NOT NULL DEFAULT '',
     arch TEXT NOT NULL DEFAULT '',
     agent_version TEXT NOT NULL DEFAULT '',
     first_seen INTEGER NOT NULL,
     last_seen INTEGER NOT NULL
   );
   CREATE INDEX machines_workspace ON machines(workspace);`,
  `CREATE TABLE audit (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     workspace TEXT NOT NULL,
     key_id TEXT NOT NULL,
     machine_id TEXT NOT NULL,
     machine_name TEXT NOT NULL,
     kind TEXT NOT NULL,
     argv TEXT,
     session TEXT,
     started_at INTEGER NOT NULL,
     ended_at INTEGER,
     bytes_in INTEGER NOT NULL DEFAULT 0,
     bytes_out INTEGER NOT NULL DEFAULT 0,
     exit_code INTEGER,
     signal TEXT,
     error TEXT
   );
   CREATE INDEX audit_started ON audit(started_at);`,
  // One row the readiness check rewrites to learn that the store can be written again.
  `CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at INTEGER NOT NULL);`,
  // A machine that retired (an ended CI hold) is left out of listings and refused at once;
  // its row stays a while so that `ci attach` can tell a hold that ended from one not yet up.
  `ALTER TABLE machines ADD COLUMN retired_at INTEGER;`,
  // Share links (tether share): the token's secret only as a hash.
  `CREATE TABLE shares (
     id TEXT PRIMARY KEY,
     workspace TEXT NOT NULL,
     machine_id TEXT NOT NULL,
     session TEXT NOT NULL,
     read_only INTEGER NOT NULL,
     hash TEXT NOT NULL,
     created_by TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     expires_at INTEGER NOT NULL,
     uses_left INTEGER NOT NULL,
     revoked_at INTEGER
   );
   CREATE INDEX shares_workspace ON shares(workspace);`,
  // Who joined from where, and whether only to watch (a share link's page, issue 17).
  `ALTER TABLE audit ADD COLUMN remote TEXT;
   ALTER TABLE audit ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;`,
  // End to end (issue 19): the agent's public key, as its last hello said; a stream whose
  // command line and exit status the relay cannot see.
  `ALTER TABLE machines ADD COLUMN e2e_key TEXT NOT NULL DEFAULT '';
   ALTER TABLE audit ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;`,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

const FACTS = "name, hostname, labels, os, arch, agent_version, e2e_key";

function facts(info: AgentFacts): string[] {
  return [
    info.name,
    info.hostname,
    JSON.stringify(info.labels),
    info.os,
    info.arch,
    info.agent_version,
    info.e2e_key,
  ];
}

export const DB_FILE = "tether.db";
/** Bytes the readiness probe writes: a page or so, enough to fail on a full disk. */
const PROBE_BYTES = 4096;

/** Writes and removes a small file in `dir`; throws the OS error if it cannot. */
function probeWrite(dir: string): void {
  const probe = join(dir, ".write-probe");
  try {
    Deno.writeFileSync(probe, new Uint8Array(PROBE_BYTES));
  } finally {
    try {
      Deno.removeSync(probe);
    } catch { /* not written */ }
  }
}

export class SqliteStore implements Store {
  readonly kind = "sqlite";
  readonly db: DatabaseSync;
  /** Why the last write failed, until one succeeds again (see health()). */
  private lastWriteError?: string;
  private readonly keyUse = new KeyUse();

  /**
   * Opens (creating if needed) the store in `dataDir`. A directory that cannot
   * be created, opened or written is a `relay_unavailable` error naming the
   * path and the operating system's reason.
   */
  constructor(readonly dataDir: string) {
    let db: DatabaseSync | undefined;
    try {
      Deno.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      // SQLite would only say "unable to open database file"; the OS says why.
      probeWrite(dataDir);
      db = new DatabaseSync(join(dataDir, DB_FILE));
      // synchronous = NORMAL: a commit survives the relay's crash at once and the machine's
      // at the next checkpoint, with no fsync per commit; the audit rows and heartbeat times
      // written as commands start and end then no longer stop the event loop for a disk
      // flush each (~3 ms here, twice per exec). Writes that grant or take away access are
      // flushed as they commit (`durable` in write()).
      db.exec(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; " +
          "PRAGMA foreign_keys = ON;",
      );
      this.db = db;
      this.migrate();
    } catch (e) {
      try {
        db?.close();
      } catch { /* not open */ }
      if (e instanceof TetherError) throw e;
      throw new TetherError(
        "relay_unavailable",
        `cannot use the relay's data dir ${dataDir}: ${reason(e)}`,
        {
          hint: "check that the directory exists, is writable by this user and its disk has " +
            "space, or pass another --data-dir",
          cause: e,
        },
      );
    }
  }

  async close(): Promise<void> {
    try {
      await this.flushKeyUse();
    } catch { /* best effort */ }
    this.db.close();
  }

  /** Runs synchronous SQLite work as the Store's promise: a throw becomes a rejection. */
  private io<T>(fn: () => T): Promise<T> {
    return new Promise((resolve) => resolve(fn()));
  }

  /**
   * Runs a write. A failure (a full disk, a read-only file) is remembered for
   * health() and becomes a `relay_unavailable` error; the next write that
   * succeeds clears it, so the relay recovers by itself. A `durable` write (keys, enrollments,
   * shares and their revocations) is on disk when it returns: a revocation must not come
   * undone by a power cut.
   */
  private write<T>(what: string, fn: () => T, durable = false): T {
    try {
      if (durable) this.db.exec("PRAGMA synchronous = FULL");
      const out = fn();
      this.lastWriteError = undefined;
      return out;
    } catch (e) {
      if (e instanceof TetherError) throw e;
      this.lastWriteError = reason(e);
      throw new TetherError(
        "relay_unavailable",
        `the relay cannot write its store (${what}): ${this.lastWriteError}`,
        { hint: "the relay's operator must free space in its data dir, or make it writable" },
      );
    } finally {
      if (durable) this.db.exec("PRAGMA synchronous = NORMAL");
    }
  }

  /**
   * Undefined when the store can be written; otherwise why not. Probes the data
   * dir with a small file write (SQLite may still append to a WAL file it has
   * already grown while new pages cannot be had) and reports a failed store write
   * until a later one succeeds.
   */
  health(): Promise<string | undefined> {
    return this.io(() => {
      try {
        probeWrite(this.dataDir);
      } catch (e) {
        return `cannot write ${this.dataDir}: ${reason(e)}`;
      }
      if (this.lastWriteError) {
        // The disk has room again: see whether the store takes a write, too.
        try {
          this.write(
            "readiness check",
            () =>
              this.db.prepare("INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?)").run(
                Date.now(),
              ),
          );
        } catch {
          return `the store cannot be written: ${this.lastWriteError}`;
        }
      }
      return undefined;
    });
  }

  noteKeyUse(id: string): void {
    this.keyUse.note(id);
  }

  flushKeyUse(): Promise<void> {
    return this.keyUse.flush((batch) =>
      this.io(() =>
        this.write("key use", () => {
          const stmt = this.db.prepare(
            "UPDATE keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
          );
          this.transaction(() => {
            for (const [id, at] of batch) stmt.run(at, id);
          });
        })
      )
    );
  }

  private transaction(fn: () => void): void {
    this.db.exec("BEGIN");
    try {
      fn();
      this.db.exec("COMMIT");
    } catch (e) {
      try {
        this.db.exec("ROLLBACK");
      } catch { /* nothing to roll back */ }
      throw e;
    }
  }

  private migrate(): void {
    const row = this.db.prepare("PRAGMA user_version").get() as { user_version: number };
    const current = row.user_version;
    if (current > SCHEMA_VERSION) {
      throw new TetherError(
        "internal",
        `relay data is schema v${current}, newer than this tether (v${SCHEMA_VERSION})`,
        { hint: "run the tether release that wrote this data dir, or a newer one" },
      );
    }
    for (let v = current; v < SCHEMA_VERSION; v++) {
      this.db.exec("BEGIN IMMEDIATE");
      try {
        this.db.exec(MIGRATIONS[v]);
        this.db.exec(`PRAGMA user_version = ${v + 1}`);
        this.db.exec("COMMIT");
      } catch (e) {
        this.db.exec("ROLLBACK");
        throw e;
      }
    }
  }

  ensureWorkspace(name: string): Promise<void> {
    return this.io(() => {
      this.write(
        "workspace",
        () =>
          this.db.prepare("INSERT OR IGNORE INTO workspaces (name, created_at) VALUES (?, ?)")
            .run(name, Date.now()),
      );
    });
  }

  hasWorkspace(name: string): Promise<boolean> {
    return this.io(() => {
      return !!this.db.prepare("SELECT 1 FROM workspaces WHERE name = ?").get(name);
    });
  }

  createShare(share: NewShare): Promise<{ row: ShareRow; token: string }> {
    const { id, secret, row } = newShareRow(share);
    return this.io(() => {
      this.write("new share", () =>
        this.db.prepare(
          `INSERT INTO shares (id, workspace, machine_id, session, read_only, hash, created_by,
             created_at, expires_at, uses_left) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(
          id,
          row.workspace,
          row.machine_id,
          row.session,
          row.read_only ? 1 : 0,
          hashSecret(secret),
          row.created_by,
          row.created_at,
          row.expires_at,
          row.uses_left,
        ), true);
      return { row, token: `${id}.${secret}` };
    });
  }

  listShares(workspace: string): Promise<ShareRow[]> {
    return this.io(() =>
      (this.db.prepare(
        `SELECT ${SHARE_COLUMNS} FROM shares WHERE workspace = ? ORDER BY created_at DESC, id`,
      ).all(workspace) as Record<string, unknown>[]).map(shareFromRow)
    );
  }

  revokeShare(workspace: string, id: string): Promise<boolean> {
    return this.io(() =>
      this.write("share revocation", () =>
        Number(
          this.db.prepare(
            `UPDATE shares SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? AND workspace = ?`,
          ).run(Date.now(), id, workspace).changes,
        ) > 0, true)
    );
  }

  useShare(token: string, now = Date.now()): Promise<ShareRow | ShareRefusal> {
    return this.io(() => {
      const t = parseShareToken(token);
      const found = t
        ? this.db.prepare(`SELECT ${SHARE_COLUMNS}, hash FROM shares WHERE id = ?`).get(t.id) as
          | Record<string, unknown>
          | undefined
        : undefined;
      if (!t || !secretMatches(t.secret, found?.hash as string | undefined)) return "unknown";
      const row = shareFromRow(found!);
      const refusal = shareRefusal(row, now);
      if (refusal) return refusal;
      // One statement decides, so two pages racing for the last use cannot both have it.
      const spent = this.write("share use", () =>
        this.db.prepare(
          `UPDATE shares SET uses_left = uses_left - 1
            WHERE id = ? AND uses_left > 0 AND revoked_at IS NULL AND expires_at > ?`,
        ).run(row.id, now).changes);
      return Number(spent) > 0 ? { ...row, uses_left: row.uses_left - 1 } : "used";
    });
  }

  async createKey(workspace: string, role: KeyRole): Promise<MintedKey> {
    if (!await this.hasWorkspace(workspace)) {
      throw new TetherError("usage", `no workspace named '${workspace}'`, {
        hint: `create it with: tether relay init --workspace ${workspace}`,
      });
    }
    const id = newKeyId();
    const secret = newSecret();
    this.write("new key", () =>
      this.db.prepare(
        "INSERT INTO keys (id, workspace, role, hash, created_at) VALUES (?, ?, ?, ?, ?)",
      ).run(id, workspace, role, hashSecret(secret), Date.now()), true);
    return { id, key: formatKey(role, id, secret), role, workspace };
  }

  listKeys(): Promise<KeyRow[]> {
    return this.io(() => {
      return this.db.prepare(
        "SELECT id, workspace, role, created_at, revoked_at, last_used_at FROM keys ORDER BY created_at, id",
      ).all() as unknown as KeyRow[];
    });
  }

  /** Marks a key revoked; returns false when there is no such key. */
  revokeKey(id: string): Promise<boolean> {
    return this.io(() => {
      const r = this.write("revocation", () =>
        this.db.prepare(
          "UPDATE keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
        ).run(Date.now(), id), true);
      return Number(r.changes) > 0;
    });
  }

  /** Ids among `ids` that are revoked or gone (for closing live connections). */
  revokedAmong(ids: string[]): Promise<string[]> {
    return this.io(() => {
      const { keys, shares } = splitKeyIds(ids);
      const live = (table: string, among: string[]) =>
        among.length === 0 ? [] : (this.db.prepare(
          `SELECT id FROM ${table} WHERE revoked_at IS NULL AND id IN (${
            among.map(() => "?").join(",")
          })`,
        ).all(...among) as { id: string }[]).map((r) => r.id);
      const alive = new Set([
        ...live("keys", keys),
        ...live("shares", shares).map((id) => SHARE_KEY_PREFIX + id),
      ]);
      return ids.filter((id) => !alive.has(id));
    });
  }

  /** Checks a presented key; null when unknown, revoked or wrong. */
  authenticate(k: ParsedKey): Promise<Principal | null> {
    return this.io(() => {
      if (k.kind === "machine") {
        const m = this.db.prepare(
          `SELECT m.secret_hash AS hash, m.workspace AS workspace, m.enrolled_by AS enrolled_by,
                  k.revoked_at AS revoked_at
             FROM machines m JOIN keys k ON k.id = m.enrolled_by
            WHERE m.id = ? AND m.retired_at IS NULL`,
        ).get(k.id) as
          | { hash: string; workspace: string; enrolled_by: string; revoked_at: number | null }
          | undefined;
        const ok = secretMatches(k.secret, m?.hash);
        if (!ok || !m || m.revoked_at !== null) return null;
        return { kind: "machine", keyId: m.enrolled_by, workspace: m.workspace, machineId: k.id };
      }
      const row = this.db.prepare(
        "SELECT hash, workspace, role, revoked_at FROM keys WHERE id = ?",
      ).get(k.id) as
        | { hash: string; workspace: string; role: KeyRole; revoked_at: number | null }
        | undefined;
      const ok = secretMatches(k.secret, row?.hash);
      if (!ok || !row || row.revoked_at !== null || row.role !== k.kind) return null;
      this.noteKeyUse(k.id);
      return { kind: row.role, keyId: k.id, workspace: row.workspace };
    });
  }

  /** Creates a machine identity; the secret is returned once and stored hashed. */
  enrollMachine(
    workspace: string,
    enrolledBy: string,
    info: AgentFacts,
  ): Promise<{ id: string; secret: string }> {
    return this.io(() => {
      const id = crypto.randomUUID();
      const secret = newSecret();
      const now = Date.now();
      this.write("enrollment", () =>
        this.db.prepare(
          `INSERT INTO machines (id, workspace, secret_hash, enrolled_by, ${FACTS}, first_seen,
           last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(id, workspace, hashSecret(secret), enrolledBy, ...facts(info), now, now), true);
      return { id, secret };
    });
  }

  /** What a connecting agent says of itself, and that it was seen now. */
  updateMachine(id: string, info: AgentFacts): Promise<void> {
    return this.io(() => {
      this.write("machine", () =>
        this.db.prepare(
          `UPDATE machines SET (${FACTS}, last_seen) = (?, ?, ?, ?, ?, ?, ?, ?) WHERE id = ?`,
        ).run(...facts(info), Date.now(), id));
    });
  }

  touchMachines(seen: Map<string, number>): Promise<void> {
    return this.io(() => {
      if (seen.size === 0) return;
      this.write("heartbeats", () => {
        const stmt = this.db.prepare(
          "UPDATE machines SET last_seen = max(last_seen, ?) WHERE id = ?",
        );
        this.transaction(() => {
          for (const [id, at] of seen) stmt.run(at, id);
        });
      });
    });
  }

  getMachine(id: string): Promise<MachineRow | undefined> {
    return this.io(() => {
      const r = this.db.prepare(
        `SELECT id, workspace, enrolled_by, name, hostname, labels, os, arch, agent_version, e2e_key,
                first_seen, last_seen, retired_at FROM machines WHERE id = ?`,
      ).get(id) as (Omit<MachineRow, "labels"> & { labels: string }) | undefined;
      return r ? { ...r, labels: JSON.parse(r.labels), held_by: null } : undefined;
    });
  }

  auditStart(row: AuditStart): Promise<number> {
    return this.io(() => {
      const r = this.write("audit", () =>
        this.db.prepare(
          `INSERT INTO audit (workspace, key_id, machine_id, machine_name, kind, argv, session,
                              started_at, remote, read_only, sealed)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(
          row.workspace,
          row.key_id,
          row.machine_id,
          row.machine_name,
          row.kind,
          row.argv ? JSON.stringify(row.argv) : null,
          row.session,
          Date.now(),
          row.remote ?? null,
          row.read_only ? 1 : 0,
          row.sealed ? 1 : 0,
        ));
      return Number(r.lastInsertRowid);
    });
  }

  auditEnd(id: number, end: AuditEnd): Promise<void> {
    return this.io(() => {
      this.write("audit", () =>
        this.db.prepare(
          `UPDATE audit SET ended_at = ?, bytes_in = ?, bytes_out = ?, exit_code = ?, signal = ?,
           error = ?, session = coalesce(?, session) WHERE id = ? AND ended_at IS NULL`,
        ).run(
          Date.now(),
          end.bytes_in,
          end.bytes_out,
          end.exit_code,
          end.signal,
          end.error,
          end.session,
          id,
        ));
    });
  }

  listAudit(limit = 1000): Promise<AuditRow[]> {
    return this.io(() => {
      const rows = this.db.prepare(
        `SELECT * FROM audit ORDER BY id DESC LIMIT ?`,
      ).all(limit) as Record<string, unknown>[];
      return rows.reverse().map(auditFromRow);
    });
  }

  /** The workspace's machines; retired ones only when asked for. */
  listMachines(workspace: string, opts: { retired?: boolean } = {}): Promise<MachineRow[]> {
    return this.io(() => {
      const rows = this.db.prepare(
        `SELECT id, workspace, enrolled_by, name, hostname, labels, os, arch, agent_version, e2e_key,
                first_seen, last_seen, retired_at FROM machines
          WHERE workspace = ? ${opts.retired ? "" : "AND retired_at IS NULL"} ORDER BY name, id`,
      ).all(workspace) as unknown as (Omit<MachineRow, "labels"> & { labels: string })[];
      return rows.map((r) => ({ ...r, labels: JSON.parse(r.labels), held_by: null }));
    });
  }

  /** Marks a machine retired: it leaves listings and its identity is refused from now on. */
  retireMachine(id: string): Promise<void> {
    return this.io(() => {
      this.write(
        "retirement",
        () =>
          this.db.prepare("UPDATE machines SET retired_at = ? WHERE id = ? AND retired_at IS NULL")
            .run(Date.now(), id),
      );
    });
  }

  /** Deletes a machine (its audit rows stay); false when there was none. */
  removeMachine(id: string): Promise<boolean> {
    return this.io(() => {
      const r = this.write(
        "machine removal",
        () => this.db.prepare("DELETE FROM machines WHERE id = ?").run(id),
      );
      return Number(r.changes) > 0;
    });
  }

  /**
   * Deletes machines offline since before `offlineBefore` and retired ones
   * since before `retiredBefore`, except those in `online`; returns them.
   */
  pruneMachines(
    offlineBefore: number,
    retiredBefore: number,
    online: Set<string>,
  ): Promise<{ id: string; name: string }[]> {
    return this.io(() => {
      const stale = (this.db.prepare(
        `SELECT id, name FROM machines
          WHERE (retired_at IS NULL AND last_seen < ?) OR retired_at < ?`,
      ).all(offlineBefore, retiredBefore) as { id: string; name: string }[])
        .filter((m) => !online.has(m.id));
      if (stale.length === 0) return [];
      this.write("pruning", () => {
        const del = this.db.prepare("DELETE FROM machines WHERE id = ?");
        this.transaction(() => {
          for (const m of stale) del.run(m.id);
        });
      });
      return stale;
    });
  }
}
