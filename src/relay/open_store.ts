/** Picks the relay's store from `--store` / TETHER_STORE: PostgreSQL by URL, else SQLite. */
import { usage } from "../common/errors.ts";
import type { Store } from "./store.ts";
import { SqliteStore } from "./store_sqlite.ts";
import { isPostgresUrl, PostgresStore } from "./store_postgres.ts";

export async function openStore(spec: string | undefined, dataDir: string): Promise<Store> {
  if (!spec) return new SqliteStore(dataDir);
  if (isPostgresUrl(spec)) return await PostgresStore.connect(spec);
  // The value may hold a password: only its scheme is repeated.
  const scheme = /^[a-z][a-z0-9+.-]*:/i.exec(spec)?.[0] ?? "a path";
  throw usage(
    `--store takes a postgres:// URL, not ${scheme}`,
    "leave --store (and TETHER_STORE) out for SQLite in --data-dir",
  );
}

/** Where a store keeps its data, for messages: never a password. */
export function storeLabel(store: Store, dataDir: string): string {
  return store instanceof PostgresStore ? store.where : `SQLite in ${dataDir}`;
}
