import assert from "node:assert/strict";
import { type AgentLink, type ClientLink, Hub } from "../../src/relay/hub.ts";
import { SqliteStore } from "../../src/relay/store_sqlite.ts";
import {
  CH_STDIN,
  CH_STDOUT,
  decodeFrame,
  encodeCredit,
  encodeData,
} from "../../src/protocol/frames.ts";
import { MAX_STREAMS_PER_CONN, ProtocolError } from "../../src/protocol/messages.ts";
import { fakeConn, type Sent } from "./fakes.ts";

const facts = {
  name: "box",
  hostname: "h",
  labels: {},
  os: "linux",
  arch: "x86_64",
  agent_version: "0",
  e2e_key: "",
};

async function world() {
  const dir = await Deno.makeTempDir();
  const store = new SqliteStore(dir);
  await store.ensureWorkspace("w");
  await store.ensureWorkspace("other");
  const agentKey = await store.createKey("w", "agent");
  const m = await store.enrollMachine("w", agentKey.id, facts);
  const logs: string[] = [];
  const hub = new Hub(store, (l) => logs.push(l));
  const a = fakeConn();
  const agent: AgentLink = {
    conn: a.conn,
    principal: { kind: "machine", keyId: agentKey.id, workspace: "w", machineId: m.id },
    machineId: m.id,
    workspace: "w",
    info: { name: "box", hostname: "h", labels: {}, os: "linux", arch: "x86_64" },
    lastSeen: Date.now(),
    routes: new Map(),
    nextSid: 1,
    sessions: [],
    pending: new Map(),
    nextReq: 1,
  };
  hub.addAgent(agent);
  const client = (workspace = "w") => {
    const c = fakeConn();
    const link: ClientLink = {
      conn: c.conn,
      principal: { kind: "client", keyId: "k1", workspace },
      workspace,
      routes: new Map(),
      opening: new Map(),
    };
    hub.addClient(link);
    return { link, sent: c.sent };
  };
  return {
    hub,
    store,
    machine: m.id,
    agent,
    agentSent: a.sent as Sent,
    client,
    logs,
    async [Symbol.asyncDispose]() {
      await store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Lets the store's answers (promises) reach the hub: opens and requests wait on them. */
const settled = () => new Promise((r) => setTimeout(r, 0));

const open = (machine: string, o: Record<string, unknown> = {}) => ({
  t: "open" as const,
  sid: 1,
  machine,
  kind: "exec" as const,
  argv: ["cat"],
  stdin: true,
  window: 100,
  ...o,
});

Deno.test("hub: an open is routed (machine stripped, client key set by the relay), frames and exit go back", async () => {
  await using w = await world();
  const c = w.client();
  w.hub.onClientControl(c.link, open(w.machine, { client_key: "forged" }));
  await settled();
  const fwd = w.agentSent.controls[0] as Record<string, unknown>;
  assert.equal(fwd.t, "open");
  assert.equal(fwd.machine, undefined);
  assert.equal(fwd.client_key, "k1");
  const asid = fwd.sid as number;
  w.hub.onAgentControl(w.agent, { t: "started", sid: asid, window: 50, session: "e1" });
  assert.deepEqual(c.sent.controls[0], { t: "started", sid: 1, window: 50, session: "e1" });
  // Output within the client's window goes through with the sid rewritten; beyond it is refused.
  const out = encodeData(asid, CH_STDOUT, 0, new Uint8Array(60));
  w.hub.onAgentFrame(w.agent, decodeFrame(out), out);
  assert.deepEqual(c.sent.data[0].slice(0, 2), [CH_STDOUT, 0]);
  const more = encodeData(asid, CH_STDOUT, 60, new Uint8Array(41));
  assert.throws(() => w.hub.onAgentFrame(w.agent, decodeFrame(more), more), ProtocolError);
  // stdin within the agent's window; credit back from the client lifts the output window.
  const input = encodeData(1, CH_STDIN, 0, new Uint8Array(50));
  w.hub.onClientFrame(c.link, decodeFrame(input), input);
  const tooMuch = encodeData(1, CH_STDIN, 50, new Uint8Array(1));
  assert.throws(() => w.hub.onClientFrame(c.link, decodeFrame(tooMuch), tooMuch), ProtocolError);
  const credit = encodeCredit(1, CH_STDOUT, 60);
  w.hub.onClientFrame(c.link, decodeFrame(credit), credit);
  w.hub.onAgentFrame(w.agent, decodeFrame(more), more);
  w.hub.onAgentControl(w.agent, { t: "exit", sid: asid, code: 3 });
  assert.deepEqual(c.sent.controls.at(-1), { t: "exit", sid: 1, code: 3 });
  assert.equal(c.link.routes.size, 0);
  assert.equal(w.agent.routes.size, 0);
  const [row] = await w.store.listAudit();
  assert.deepEqual([row.argv, row.bytes_in, row.bytes_out, row.exit_code, row.session], [
    ["cat"],
    50,
    101,
    3,
    "e1",
  ]);
});

Deno.test("hub: other workspaces and offline machines; a lost agent or client ends its routes", async () => {
  await using w = await world();
  const stranger = w.client("other");
  w.hub.onClientControl(stranger.link, open(w.machine));
  await settled();
  assert.equal((stranger.sent.controls[0] as { code: string }).code, "machine_not_found");
  const c = w.client();
  w.hub.onClientControl(c.link, open(w.machine));
  await settled();
  w.hub.onClientControl(c.link, open(w.machine, { sid: 2 }));
  await settled();
  // The agent goes: both streams are told, resumable (the command may run on).
  w.hub.dropAgent(w.agent, "connection reset");
  const lost = c.sent.controls.filter((m) => m.t === "error") as {
    code: string;
    resumable?: boolean;
  }[];
  assert.deepEqual(lost.map((e) => [e.code, e.resumable]), [["session_lost", true], [
    "session_lost",
    true,
  ]]);
  w.hub.onClientControl(c.link, open(w.machine, { sid: 3 }));
  await settled();
  assert.equal((c.sent.controls.at(-1) as { code: string }).code, "machine_offline");
  // A client that goes tells the agent its streams were lost (not detached).
  w.hub.addAgent(w.agent);
  w.hub.onClientControl(c.link, open(w.machine, { sid: 4 }));
  await settled();
  const asid = (w.agentSent.controls.at(-1) as { sid: number }).sid;
  w.hub.dropClient(c.link);
  assert.deepEqual(w.agentSent.controls.at(-1), { t: "close", sid: asid, reason: "lost" });
});

Deno.test("hub: sessions are gathered from the agents; requests forward and answer", async () => {
  await using w = await world();
  const c = w.client();
  w.hub.onClientControl(c.link, { t: "req", id: 7, op: "sessions", args: {} });
  await settled();
  const ask = w.agentSent.controls.at(-1) as { t: string; id: number; op: string };
  assert.deepEqual([ask.t, ask.op], ["req", "sessions"]);
  w.hub.onAgentControl(w.agent, {
    t: "res",
    id: ask.id,
    result: [{
      id: "e1",
      kind: "exec",
      created: 0,
      command: "sleep 9",
      clients: 0,
      cols: 1,
      rows: 1,
      idle_ms: 0,
      state: "running",
    }],
  });
  await settled();
  const res = c.sent.controls.at(-1) as {
    id: number;
    result: { id: string; kind: string; machine: string; state: string }[];
  };
  assert.equal(res.id, 7);
  assert.deepEqual(res.result.map((s) => [s.id, s.kind, s.machine, s.state]), [[
    "e1",
    "exec",
    "box",
    "running",
  ]]);
  // remove_machine refuses an online machine.
  w.hub.onClientControl(c.link, {
    t: "req",
    id: 8,
    op: "remove_machine",
    args: { machine: w.machine },
  });
  await settled();
  assert.equal((c.sent.controls.at(-1) as { error: { code: string } }).error.code, "forbidden");
  w.hub.onClientControl(c.link, { t: "req", id: 9, op: "warp", args: {} });
  await settled();
  assert.equal((c.sent.controls.at(-1) as { error: { code: string } }).error.code, "usage");
});

Deno.test("hub: a revoked key's connections are closed by the sweep", async () => {
  await using w = await world();
  const c = w.client();
  // k1 is not a key in the store: the sweep sees it as revoked or gone.
  await w.hub.sweep();
  assert.deepEqual(c.sent.closed, [[4401, "the relay revoked this key"]]);
  assert.deepEqual(w.agentSent.closed, [], "the agent's key is fine");
});

Deno.test("hub: credit beyond a stream's window is refused (it would let the relay buffer without bound)", async () => {
  await using w = await world();
  const c = w.client();
  w.hub.onClientControl(c.link, open(w.machine));
  await settled();
  const asid = (w.agentSent.controls[0] as { sid: number }).sid;
  w.hub.onAgentControl(w.agent, { t: "started", sid: asid, window: 50 });
  const credit = encodeCredit(1, CH_STDOUT, 1);
  assert.throws(
    () => w.hub.onClientFrame(c.link, decodeFrame(credit), credit),
    /beyond its window/,
  );
  const agentCredit = encodeCredit(asid, CH_STDIN, 1);
  assert.throws(
    () => w.hub.onAgentFrame(w.agent, decodeFrame(agentCredit), agentCredit),
    /beyond its window/,
  );
});

Deno.test("hub: while an open waits for the store, controls wait in order and a close ends it", async () => {
  await using w = await world();
  const c = w.client();
  w.hub.onClientControl(c.link, open(w.machine));
  w.hub.onClientControl(c.link, { t: "resize", sid: 1, cols: 100, rows: 30 });
  w.hub.onClientControl(c.link, { t: "eof", sid: 1 });
  assert.equal(w.agentSent.controls.length, 0, "nothing reaches the agent before the audit row");
  await settled();
  assert.deepEqual(w.agentSent.controls.map((m) => m.t), ["open", "resize", "eof"]);
  // A close before the store answered: the agent never hears of the stream, the audit says why.
  w.hub.onClientControl(c.link, open(w.machine, { sid: 2 }));
  w.hub.onClientControl(c.link, { t: "close", sid: 2, reason: "kill" });
  await settled();
  assert.equal(w.agentSent.controls.length, 3);
  assert.equal(c.link.routes.has(2), false);
  const rows = await w.store.listAudit();
  assert.equal(rows.find((r) => r.error === "killed")?.argv?.[0], "cat");
  // The same sid twice, or a flood of controls before the open, is a broken client.
  w.hub.onClientControl(c.link, open(w.machine, { sid: 3 }));
  assert.throws(() => w.hub.onClientControl(c.link, open(w.machine, { sid: 3 })), ProtocolError);
  assert.throws(() => {
    for (let i = 0; i < 100; i++) w.hub.onClientControl(c.link, { t: "eof", sid: 3 });
  }, /too many messages/);
  await settled();
});

Deno.test("hub: a client that leaves while its open waits for the store leaves nothing behind", async () => {
  await using w = await world();
  const c = w.client();
  w.hub.onClientControl(c.link, open(w.machine));
  w.hub.dropClient(c.link);
  await settled();
  assert.equal(w.agentSent.controls.length, 0);
  assert.equal(w.agent.routes.size, 0);
  const [row] = await w.store.listAudit();
  assert.equal(row.error, "client_lost");
});

Deno.test("hub: one stream too many is that stream's refusal; a fleet peer carries more", async () => {
  await using w = await world();
  const c = w.client();
  for (let sid = 1; sid <= MAX_STREAMS_PER_CONN + 1; sid++) {
    w.hub.onClientControl(c.link, open(w.machine, { sid }));
  }
  await settled();
  const refused = c.sent.controls.filter((m) => m.t === "error");
  assert.equal(refused.length, 1);
  assert.equal((refused[0] as { sid: number }).sid, MAX_STREAMS_PER_CONN + 1);
  assert.equal((refused[0] as { code: string }).code, "rate_limited");
  assert.equal(c.link.conn.isOpen, true, "the connection and its other streams go on");
  // The machine itself is full now: the next open anywhere is refused the same way.
  const other = w.client();
  w.hub.onClientControl(other.link, open(w.machine, { sid: 1 }));
  await settled();
  assert.equal((other.sent.controls[0] as { code: string }).code, "rate_limited");
});

Deno.test("hub: a fleet peer's link carries more than one client's limit of streams", async () => {
  await using w = await world();
  // A relay of the fleet forwards many clients' streams on one link (to several machines).
  const p = fakeConn();
  const peer: ClientLink = {
    conn: p.conn,
    principal: { kind: "relay", keyId: "relay:r1", workspace: "", relayId: "r1" },
    workspace: "",
    routes: new Map(),
    opening: new Map(),
    peer: true,
  };
  w.hub.addClient(peer);
  for (let sid = 1; sid <= MAX_STREAMS_PER_CONN + 1; sid++) {
    w.hub.onClientControl(peer, open(`nosuch-${sid}`, { sid, workspace: "w", client_key: "k1" }));
  }
  await settled();
  const codes = new Set(p.sent.controls.map((m) => (m as { code?: string }).code));
  // Each is refused for its own reason (no such machine), none for the link's stream count.
  assert.deepEqual([...codes], ["machine_not_found"]);
  assert.equal(p.sent.controls.length, MAX_STREAMS_PER_CONN + 1);
});

Deno.test("hub: heartbeat times reach the store only once they are stale, not on every flush", async () => {
  await using w = await world();
  const writes: number[] = [];
  const touch = w.store.touchMachines.bind(w.store);
  w.store.touchMachines = (seen) => {
    writes.push(seen.size);
    return touch(seen);
  };
  // The test's agent link has no stored time yet: the first flush writes it.
  await w.hub.flushLastSeen();
  assert.deepEqual(writes, [1]);
  // Heartbeats keep coming; the stored time is recent: nothing is written.
  w.agent.lastSeen = Date.now();
  await w.hub.flushLastSeen();
  assert.deepEqual(writes, [1]);
  // Ten minutes on, it is written again.
  w.agent.lastSeen = Date.now() + 10 * 60_000;
  await w.hub.flushLastSeen();
  assert.deepEqual(writes, [1, 1]);
  assert.equal((await w.store.getMachine(w.machine))?.last_seen, w.agent.lastSeen);
});
