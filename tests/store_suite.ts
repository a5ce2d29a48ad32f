/**
 * What every relay store must do, whatever keeps the data: run by
 * tests/unit/store_test.ts against SQLite and by tests/postgres_test.ts against a
 * real PostgreSQL. A fresh, empty store per test.
 */
import assert from "node:assert/strict";
import type { ShareRow, Store } from "../src/relay/store.ts";
import { parseKey } from "../src/protocol/keys.ts";

export type StoreFactory = () => Promise<{ store: Store; dispose(): Promise<void> }>;

/** One case of the suite: a name, and a test that opens its own fresh store. */
export interface StoreCase {
  name: string;
  fn(): Promise<void>;
}

const facts = {
  name: "web-1",
  hostname: "h",
  labels: { env: "prod" },
  os: "linux",
  arch: "x86_64",
  agent_version: "0.1.0",
  e2e_key: "",
};

export function storeCases(open: StoreFactory): StoreCase[] {
  const cases: StoreCase[] = [];
  const test = (name: string, fn: (s: Store) => Promise<void>) =>
    cases.push({
      name,
      async fn() {
        const { store, dispose } = await open();
        try {
          await fn(store);
        } finally {
          await store.close();
          await dispose();
        }
      },
    });

  test("keys authenticate by hash, revoked ones do not, last use is written in batches", async (s) => {
    await s.ensureWorkspace("w");
    await s.ensureWorkspace("w"); // twice is fine
    assert.equal(await s.hasWorkspace("w"), true);
    assert.equal(await s.hasWorkspace("nope"), false);
    const k = await s.createKey("w", "client");
    assert.match(k.key, /^tether_client_[0-9a-f]{12}_[0-9a-f]{40}$/);
    const parsed = parseKey(k.key)!;
    assert.deepEqual(await s.authenticate(parsed), { kind: "client", keyId: k.id, workspace: "w" });
    assert.equal(
      await s.authenticate({ ...parsed, secret: "0".repeat(40) }),
      null,
      "a wrong secret",
    );
    assert.equal(await s.authenticate({ ...parsed, kind: "agent" }), null, "the wrong role");
    assert.equal((await s.listKeys())[0].last_used_at, null, "a key check writes nothing");
    await s.flushKeyUse();
    assert.ok((await s.listKeys())[0].last_used_at! > 0);
    assert.deepEqual(await s.revokedAmong([k.id, "nosuch"]), ["nosuch"]);
    assert.deepEqual(await s.revokedAmong([]), []);
    assert.equal(await s.revokeKey(k.id), true);
    assert.equal(await s.revokeKey("nosuch"), false);
    assert.equal(await s.authenticate(parsed), null);
    assert.deepEqual(await s.revokedAmong([k.id]), [k.id]);
    await assert.rejects(() => s.createKey("nope", "agent"), /no workspace named 'nope'/);
  });

  test("machines enroll, update, retire, go and are pruned; their key dies with the enroller", async (s) => {
    await s.ensureWorkspace("w");
    const agentKey = await s.createKey("w", "agent");
    const m = await s.enrollMachine("w", agentKey.id, facts);
    const machineKey = { kind: "machine" as const, id: m.id, secret: m.secret };
    assert.deepEqual(await s.authenticate(machineKey), {
      kind: "machine",
      keyId: agentKey.id,
      workspace: "w",
      machineId: m.id,
    });
    assert.equal(await s.authenticate({ ...machineKey, secret: "0".repeat(40) }), null);
    await s.updateMachine(m.id, { ...facts, name: "web-2", labels: {} });
    const row = (await s.getMachine(m.id))!;
    assert.deepEqual([row.name, row.labels, row.retired_at], ["web-2", {}, null]);
    assert.equal(await s.getMachine("nosuch"), undefined);
    await s.touchMachines(new Map([[m.id, 1]]));
    assert.ok((await s.getMachine(m.id))!.last_seen > 1, "last_seen never goes back");
    const later = Date.now() + 60_000;
    await s.touchMachines(new Map([[m.id, later]]));
    assert.equal((await s.getMachine(m.id))!.last_seen, later);

    await s.retireMachine(m.id);
    assert.deepEqual(await s.listMachines("w"), [], "retired: out of listings");
    assert.equal((await s.listMachines("w", { retired: true })).length, 1);
    assert.equal(await s.authenticate(machineKey), null, "and refused");

    const other = await s.enrollMachine("w", agentKey.id, facts);
    assert.deepEqual(await s.listMachines("other"), [], "workspaces do not mix");
    const now = Date.now();
    assert.deepEqual(
      await s.pruneMachines(now - 60_000, now - 60_000, new Set()),
      [],
      "nothing old yet",
    );
    const gone = await s.pruneMachines(later + 1, later + 1, new Set([other.id]));
    assert.deepEqual(gone.map((g) => g.id), [m.id], "the retired one goes; the online one stays");
    assert.equal(await s.removeMachine(other.id), true);
    assert.equal(await s.removeMachine(other.id), false);

    const third = await s.enrollMachine("w", agentKey.id, facts);
    await s.revokeKey(agentKey.id);
    assert.equal(
      await s.authenticate({ kind: "machine", id: third.id, secret: third.secret }),
      null,
    );
  });

  test("listings are sorted and carry every field", async (s) => {
    await s.ensureWorkspace("w");
    const agentKey = await s.createKey("w", "agent");
    for (const name of ["c", "a", "b"]) {
      await s.enrollMachine("w", agentKey.id, { ...facts, name, labels: { n: name } });
    }
    const rows = await s.listMachines("w");
    assert.deepEqual(rows.map((r) => [r.name, r.labels.n, r.workspace]), [
      ["a", "a", "w"],
      ["b", "b", "w"],
      ["c", "c", "w"],
    ]);
    assert.deepEqual(
      [rows[0].hostname, rows[0].os, rows[0].arch, rows[0].agent_version],
      ["h", "linux", "x86_64", "0.1.0"],
    );
    assert.equal(typeof rows[0].last_seen, "number");
  });

  test("the audit log; a row is ended once; health is fine", async (s) => {
    const id = await s.auditStart({
      workspace: "w",
      key_id: "k",
      machine_id: "m",
      machine_name: "box",
      kind: "exec",
      argv: ["echo", "hi"],
      session: null,
    });
    const end = { bytes_in: 1, bytes_out: 2, exit_code: 0, signal: null, error: null };
    await s.auditEnd(id, { ...end, session: "abc" });
    await s.auditEnd(id, { ...end, bytes_in: 9, exit_code: 9, session: null });
    const [row] = await s.listAudit();
    assert.deepEqual(
      [row.argv, row.bytes_in, row.bytes_out, row.exit_code, row.session, row.kind],
      [["echo", "hi"], 1, 2, 0, "abc", "exec"],
      "a row is ended once",
    );
    assert.ok(row.ended_at! >= row.started_at);
    const second = await s.auditStart({
      workspace: "w",
      key_id: "k",
      machine_id: "m",
      machine_name: "box",
      kind: "pty",
      argv: null,
      session: "s1",
      remote: "127.0.0.1:5555",
      read_only: true,
    });
    const rows = await s.listAudit(2);
    assert.deepEqual(rows.map((r) => [r.id, r.ended_at, r.argv, r.remote, r.read_only]), [
      [id, rows[0].ended_at, ["echo", "hi"], null, false],
      [second, null, null, "127.0.0.1:5555", true],
    ]);
    assert.equal(await s.health(), undefined);
  });

  test("share links: hashed, bound, spent once per use, expired, revoked, told apart", async (s) => {
    const now = Date.now();
    const base = {
      workspace: "w",
      machine_id: "m1",
      session: "s1",
      read_only: true,
      created_by: "k1",
      expires_at: now + 3_600_000,
      uses_left: 2,
    };
    const { row, token } = await s.createShare(base);
    assert.match(token, /^[0-9a-f]{12}\.[0-9a-f]{40}$/);
    assert.ok(token.startsWith(`${row.id}.`));
    // Two uses, then used up.
    const first = await s.useShare(token, now);
    assert.equal(typeof first, "object");
    assert.deepEqual(
      [
        (first as ShareRow).machine_id,
        (first as ShareRow).read_only,
        (first as ShareRow).uses_left,
      ],
      ["m1", true, 1],
    );
    assert.equal(typeof await s.useShare(token, now), "object");
    assert.equal(await s.useShare(token, now), "used");
    // A wrong secret for a real id, garbage, an expired link, a revoked one.
    assert.equal(await s.useShare(`${row.id}.${"0".repeat(40)}`, now), "unknown");
    assert.equal(await s.useShare("nonsense", now), "unknown");
    const late = await s.createShare({ ...base, expires_at: now - 1 });
    assert.equal(await s.useShare(late.token, now), "expired");
    const other = await s.createShare({ ...base, workspace: "w2", uses_left: 5 });
    assert.equal(await s.revokeShare("w", other.row.id), false, "another workspace's link");
    assert.equal(await s.revokeShare("w2", other.row.id), true);
    assert.equal(await s.useShare(other.token, now), "revoked");
    // A page of a link acts as `share:ID`: revoked when its link is, beside real keys.
    assert.deepEqual(
      await s.revokedAmong([`share:${other.row.id}`, `share:${row.id}`, "share:nosuch"]),
      [`share:${other.row.id}`, "share:nosuch"],
    );
    // Listings are per workspace, newest first, and never show a secret.
    const listed = await s.listShares("w");
    assert.deepEqual(new Set(listed.map((r) => r.id)), new Set([row.id, late.row.id]));
    assert.equal(listed.find((r) => r.id === row.id)?.uses_left, 0);
    assert.ok(!JSON.stringify(listed).includes(token.split(".")[1]));
    assert.deepEqual((await s.listShares("w2")).map((r) => [r.id, r.revoked_at !== null]), [
      [other.row.id, true],
    ]);
  });
  return cases;
}
