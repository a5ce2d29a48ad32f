import assert from "node:assert/strict";
import { MAX_CONTROL_MESSAGE, parseControl, ProtocolError } from "../../src/protocol/messages.ts";

function fails(text: string, re: RegExp) {
  assert.throws(() => parseControl(text), (e: unknown) => {
    assert.ok(e instanceof ProtocolError, String(e));
    assert.match(e.message, re);
    return true;
  });
}

Deno.test("messages: each kind parses; fields not in its schema are dropped", () => {
  const open = parseControl(JSON.stringify({
    t: "open",
    sid: 1,
    machine: "m",
    kind: "exec",
    argv: ["echo", "hi"],
    stdin: true,
    window: 1024,
    evil: "dropped",
  }));
  assert.deepEqual(open, {
    t: "open",
    sid: 1,
    machine: "m",
    kind: "exec",
    argv: ["echo", "hi"],
    stdin: true,
    window: 1024,
  });
  const samples = [
    {
      t: "hello",
      v: 1,
      role: "agent",
      version: "0.1.0",
      agent: { name: "a", hostname: "h", labels: {}, os: "linux", arch: "x86_64" },
    },
    {
      t: "welcome",
      v: 1,
      version: "0.1.0",
      workspace: "w",
      key_id: "k",
      heartbeat_ms: 2000,
      machine: { id: "m" },
    },
    { t: "ping" },
    { t: "req", id: 1, op: "machines", args: {} },
    { t: "res", id: 1, result: [1, 2] },
    { t: "res", id: 1, error: { code: "usage", message: "no" } },
    { t: "started", sid: 1, window: 5, session: "abc", offset: 0, err_offset: 3, stdin_offset: 9 },
    { t: "eof", sid: 1 },
    { t: "signal", sid: 1, signal: "SIGINT" },
    { t: "resize", sid: 1, cols: 80, rows: 24 },
    { t: "exit", sid: 1, code: 0, signal: null },
    { t: "error", sid: 1, code: "session_lost", message: "gone", resumable: true },
    { t: "error", code: "unauthenticated", message: "revoked", hint: "h" },
    { t: "close", sid: 1, reason: "kill" },
    {
      t: "sessions",
      sessions: [{
        id: "s",
        created: 1,
        command: "sh",
        clients: 0,
        cols: 80,
        rows: 24,
        idle_ms: 0,
      }],
    },
    { t: "notice", sid: 1, message: "hi" },
    { t: "challenge", sid: 1, salt: "00", n: 1024, r: 8, p: 1, nonce: "ab" },
    { t: "auth", sid: 1, proof: "ff" },
    { t: "auth_ok", sid: 1, token: "t", expires: 5 },
    { t: "open", sid: 2, kind: "exec", argv: [], session: "abc", stdin: false, window: 1 },
  ];
  for (const m of samples) assert.deepEqual(parseControl(JSON.stringify(m)), m, m.t);
});

Deno.test("messages: a bad message names its type and the field", () => {
  fails(
    '{"t":"open","sid":"one","kind":"exec","argv":["x"],"stdin":true,"window":1}',
    /^open: field 'sid': /,
  );
  fails(
    '{"t":"open","sid":1,"kind":"exec","argv":[],"stdin":true,"window":1}',
    /^open: argv: must not be empty/,
  );
  fails(
    '{"t":"open","sid":1,"kind":"exec","argv":["a",3],"stdin":true,"window":1}',
    /^open: field 'argv\.1'/,
  );
  fails('{"t":"resize","sid":1,"cols":0,"rows":24}', /^resize: field 'cols'/);
  fails('{"t":"exit","sid":1,"code":256}', /^exit: field 'code'/);
  fails('{"t":"error","sid":1,"code":"nope","message":"x"}', /^error: field 'code'/);
  fails('{"t":"close","sid":1,"reason":"bye"}', /^close: field 'reason'/);
  fails(
    '{"t":"hello","v":1,"role":"agent","version":"x","agent":{"name":"a","hostname":"h","labels":{"k":1},"os":"","arch":""}}',
    /^hello: field 'agent\.labels\.k'/,
  );
  fails('{"t":"warp"}', /unknown control message type 'warp'/);
  fails('{"sid":1}', /unknown control message type 'undefined'/);
  fails("[1]", /must be an object/);
  fails("{not json", /not JSON/);
  fails(JSON.stringify({ t: "ping", pad: "x".repeat(MAX_CONTROL_MESSAGE) }), /too large/);
  const many = Object.fromEntries(Array.from({ length: 1025 }, (_, i) => [`k${i}`, "v"]));
  fails(
    JSON.stringify({ t: "open", sid: 1, kind: "pty", argv: [], stdin: true, window: 1, env: many }),
    /^open: field 'env': has too many entries/,
  );
});
