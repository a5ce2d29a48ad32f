import assert from "node:assert/strict";
import { SqliteStore } from "../../src/relay/store_sqlite.ts";
import { storeCases } from "../store_suite.ts";

const cases = storeCases(async () => {
  const dir = await Deno.makeTempDir();
  return {
    store: new SqliteStore(dir),
    dispose: () => Deno.remove(dir, { recursive: true }),
  };
});
for (const c of cases) Deno.test(`store (sqlite): ${c.name}`, c.fn);

Deno.test("store (sqlite): a data dir that cannot be used says where and why", async () => {
  const file = await Deno.makeTempFile();
  try {
    assert.throws(() => new SqliteStore(`${file}/relay`), (e: Error & { code?: string }) => {
      assert.equal(e.code, "relay_unavailable");
      assert.match(e.message, new RegExp(`cannot use the relay's data dir ${file}/relay: `));
      return true;
    });
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("store (sqlite): commits are flushed to disk only for keys, enrollments and shares", async () => {
  const dir = await Deno.makeTempDir();
  const store = new SqliteStore(dir);
  try {
    // deno-lint-ignore no-explicit-any
    const db = (store as any).db as import("node:sqlite").DatabaseSync;
    const level = () =>
      (db.prepare("PRAGMA synchronous").get() as { synchronous: number }).synchronous;
    const seen: number[] = [];
    const exec = db.exec.bind(db);
    db.exec = (sql: string) => {
      if (/synchronous = FULL/.test(sql)) seen.push(level());
      exec(sql);
      if (/synchronous = FULL/.test(sql)) seen.push(level());
    };
    assert.equal(level(), 1, "NORMAL by default: no fsync per audit row or heartbeat");
    await store.ensureWorkspace("default");
    const key = await store.createKey("default", "client");
    assert.deepEqual(seen, [1, 2], "the new key was committed with synchronous = FULL");
    assert.equal(level(), 1, "and NORMAL again after it");
    await store.revokeKey(key.id);
    assert.deepEqual(seen, [1, 2, 1, 2]);
    await store.auditStart({
      workspace: "default",
      key_id: key.id,
      machine_id: "m",
      machine_name: "m",
      kind: "exec",
      argv: ["true"],
      session: null,
      remote: null,
      read_only: false,
      sealed: false,
    });
    assert.deepEqual(seen, [1, 2, 1, 2], "an audit row is not flushed on its own");
    assert.equal(level(), 1);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
