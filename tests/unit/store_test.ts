import assert from "node:assert/strict";
import { Store } from "../../src/relay/store.ts";
import { parseKey } from "../../src/protocol/keys.ts";

async function withStore(fn: (s: Store, dir: string) => void | Promise<void>) {
  const dir = await Deno.makeTempDir();
  const s = new Store(dir);
  try {
    await fn(s, dir);
  } finally {
    s.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const facts = {
  name: "web-1",
  hostname: "h",
  labels: { env: "prod" },
  os: "linux",
  arch: "x86_64",
  agent_version: "0.1.0",
};

Deno.test("store: keys authenticate by hash, revoked ones do not, last use is written in batches", () =>
  withStore((s) => {
    s.ensureWorkspace("w");
    const k = s.createKey("w", "client");
    assert.match(k.key, /^tether_client_[0-9a-f]{12}_[0-9a-f]{40}$/);
    const parsed = parseKey(k.key)!;
    assert.deepEqual(s.authenticate(parsed), { kind: "client", keyId: k.id, workspace: "w" });
    assert.equal(s.authenticate({ ...parsed, secret: "0".repeat(40) }), null, "a wrong secret");
    assert.equal(s.authenticate({ ...parsed, kind: "agent" }), null, "the wrong role");
    assert.equal(s.listKeys()[0].last_used_at, null, "a key check writes nothing");
    s.flushKeyUse();
    assert.ok(s.listKeys()[0].last_used_at! > 0);
    assert.deepEqual(s.revokedAmong([k.id, "nosuch"]), ["nosuch"]);
    assert.equal(s.revokeKey(k.id), true);
    assert.equal(s.revokeKey("nosuch"), false);
    assert.equal(s.authenticate(parsed), null);
    assert.deepEqual(s.revokedAmong([k.id]), [k.id]);
    assert.throws(() => s.createKey("nope", "agent"), /no workspace named 'nope'/);
  }));

Deno.test("store: machines enroll, update, retire, go and are pruned; their key dies with the enroller", () =>
  withStore((s) => {
    s.ensureWorkspace("w");
    const agentKey = s.createKey("w", "agent");
    const m = s.enrollMachine("w", agentKey.id, facts);
    const machineKey = { kind: "machine" as const, id: m.id, secret: m.secret };
    assert.deepEqual(s.authenticate(machineKey), {
      kind: "machine",
      keyId: agentKey.id,
      workspace: "w",
      machineId: m.id,
    });
    s.updateMachine(m.id, { ...facts, name: "web-2", labels: {} });
    const row = s.getMachine(m.id)!;
    assert.deepEqual([row.name, row.labels, row.retired_at], ["web-2", {}, null]);
    s.touchMachines(new Map([[m.id, 1]]));
    assert.ok(s.getMachine(m.id)!.last_seen > 1, "last_seen never goes back");

    s.retireMachine(m.id);
    assert.deepEqual(s.listMachines("w"), [], "retired: out of listings");
    assert.equal(s.listMachines("w", { retired: true }).length, 1);
    assert.equal(s.authenticate(machineKey), null, "and refused");

    const other = s.enrollMachine("w", agentKey.id, facts);
    const now = Date.now();
    assert.deepEqual(s.pruneMachines(now - 60_000, now - 60_000, new Set()), [], "nothing old yet");
    const gone = s.pruneMachines(now + 1, now + 1, new Set([other.id]));
    assert.deepEqual(gone.map((g) => g.id), [m.id], "the retired one goes; the online one stays");
    assert.equal(s.removeMachine(other.id), true);
    assert.equal(s.removeMachine(other.id), false);

    const third = s.enrollMachine("w", agentKey.id, facts);
    s.revokeKey(agentKey.id);
    assert.equal(s.authenticate({ kind: "machine", id: third.id, secret: third.secret }), null);
  }));

Deno.test("store: the audit log; health says when the store cannot be written", () =>
  withStore((s) => {
    const id = s.auditStart({
      workspace: "w",
      key_id: "k",
      machine_id: "m",
      machine_name: "box",
      kind: "exec",
      argv: ["echo", "hi"],
      session: null,
    });
    s.auditEnd(id, {
      bytes_in: 1,
      bytes_out: 2,
      exit_code: 0,
      signal: null,
      error: null,
      session: "abc",
    });
    s.auditEnd(id, {
      bytes_in: 9,
      bytes_out: 9,
      exit_code: 9,
      signal: null,
      error: null,
      session: null,
    });
    const [row] = s.listAudit();
    assert.deepEqual(
      [row.argv, row.bytes_in, row.bytes_out, row.exit_code, row.session],
      [["echo", "hi"], 1, 2, 0, "abc"],
      "a row is ended once",
    );
    assert.equal(s.health(), undefined);
  }));

Deno.test("store: a data dir that cannot be used says where and why", async () => {
  const file = await Deno.makeTempFile();
  try {
    assert.throws(() => new Store(`${file}/relay`), (e: Error & { code?: string }) => {
      assert.equal(e.code, "relay_unavailable");
      assert.match(e.message, new RegExp(`cannot use the relay's data dir ${file}/relay: `));
      return true;
    });
  } finally {
    await Deno.remove(file);
  }
});
