/** frames.ts, flow.ts and the heartbeat of conn.ts: the wire's pure parts. */
import assert from "node:assert/strict";
import { Conn, type WsLike } from "../../src/protocol/conn.ts";
import { Credit, Grant } from "../../src/protocol/flow.ts";
import {
  CH_STDERR,
  CH_STDIN,
  CH_STDOUT,
  DATA_FRAME_PREFIX,
  dataFrameInPlace,
  decodeFrame,
  encodeCredit,
  encodeData,
  FRAME_CREDIT,
  FRAME_DATA,
  MAX_BINARY_MESSAGE,
  setFrameSid,
} from "../../src/protocol/frames.ts";
import { ProtocolError } from "../../src/protocol/messages.ts";

Deno.test("frames: DATA and CREDIT round-trip, offsets past 4 GiB, sid rewritten in place", () => {
  const payload = new TextEncoder().encode("hello");
  const f = decodeFrame(encodeData(7, CH_STDERR, 2 ** 33 + 5, payload));
  assert.deepEqual({ ...f, payload: undefined }, {
    type: FRAME_DATA,
    channel: CH_STDERR,
    sid: 7,
    offset: 2 ** 33 + 5,
    payload: undefined,
  });
  assert.deepEqual((f as { payload: Uint8Array }).payload, payload);
  assert.deepEqual(decodeFrame(encodeCredit(9, CH_STDIN, 4096)), {
    type: FRAME_CREDIT,
    channel: CH_STDIN,
    sid: 9,
    bytes: 4096,
  });
  // In place: the header goes in the room before the payload; same bytes as encodeData.
  const buf = new Uint8Array(DATA_FRAME_PREFIX + 5);
  buf.set(payload, DATA_FRAME_PREFIX);
  const inPlace = dataFrameInPlace(buf.subarray(DATA_FRAME_PREFIX), 3, CH_STDOUT, 11);
  assert.deepEqual(inPlace, encodeData(3, CH_STDOUT, 11, payload));
  assert.throws(() => dataFrameInPlace(payload, 1, 1, 0), RangeError);
  setFrameSid(inPlace, 42);
  assert.equal(decodeFrame(inPlace).sid, 42);
});

Deno.test("frames: malformed binary messages are ProtocolErrors", () => {
  const bad = (b: Uint8Array, re: RegExp) =>
    assert.throws(() => decodeFrame(b), (e) => e instanceof ProtocolError && re.test(e.message));
  bad(new Uint8Array(5), /too short/);
  bad(new Uint8Array(MAX_BINARY_MESSAGE + 1), /too large/);
  const unknown = encodeCredit(1, 0, 1);
  unknown[0] = 9;
  bad(unknown, /unknown frame type 9/);
  const channel = encodeCredit(1, 0, 1);
  channel[1] = 3;
  bad(channel, /bad channel/);
  const reserved = encodeCredit(1, 0, 1);
  reserved[2] = 1;
  bad(reserved, /reserved/);
  bad(new Uint8Array([FRAME_DATA, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), /data frame too short/);
  const far = encodeData(1, 1, 0, new Uint8Array(1));
  new DataView(far.buffer).setUint32(8, 0x200000, true);
  bad(far, /offset out of range/);
  const long = new Uint8Array(13);
  long[0] = FRAME_CREDIT;
  bad(long, /wrong size/);
});

Deno.test("flow: credit waits, wakes, and closes; grants go back in quarter windows", async () => {
  const c = new Credit(0);
  let woke = false;
  const waiting = c.wait().then(() => (woke = true));
  await Promise.resolve();
  assert.equal(woke, false);
  c.add(10);
  await waiting;
  assert.equal(woke, true);
  c.take(10);
  const closed = c.wait();
  c.close();
  await closed; // a closed credit never blocks
  const sent: number[] = [];
  const g = new Grant(100, (n) => sent.push(n));
  g.consumed(10);
  g.consumed(14);
  assert.deepEqual(sent, []);
  g.consumed(1);
  assert.deepEqual(sent, [25]);
  g.consumed(3);
  g.flush();
  assert.deepEqual(sent, [25, 3]);
  g.flush();
  assert.deepEqual(sent, [25, 3], "nothing pending, nothing sent");
});

/** A socket that records what Conn sends and lets the test deliver messages. */
function fakeSocket() {
  const sent: string[] = [];
  const ws: { -readonly [K in keyof WsLike]: WsLike[K] } & {
    closed?: { code: number; reason: string };
  } = {
    readyState: 1,
    bufferedAmount: 0,
    send(d) {
      if (typeof d === "string") sent.push(d);
    },
    close(code = 1000, reason = "") {
      ws.closed = { code, reason };
      ws.readyState = 3;
    },
    trim() {},
    onmessage: null,
    onclose: null,
  };
  return { ws, sent };
}

const PING = '{"t":"ping"}';
const PONG = '{"t":"ping","re":true}';
const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("conn: a probe is answered at once, an answer is not; the handlers see neither", () => {
  const { ws, sent } = fakeSocket();
  const conn = new Conn(ws, { heartbeatMs: 60_000 });
  const seen: string[] = [];
  conn.start({ onControl: (m) => seen.push(m.t), onFrame() {}, onClose() {} });
  ws.onmessage!({ data: PING });
  assert.deepEqual(sent, [PONG]);
  ws.onmessage!({ data: PONG });
  assert.deepEqual(sent, [PONG], "an answer is not answered");
  // Another spelling of a ping is an ordinary message: counted as life, not answered.
  ws.onmessage!({ data: '{ "t": "ping" }' });
  assert.deepEqual(sent, [PONG]);
  assert.deepEqual(seen, ["ping"]);
  conn.close();
});

Deno.test("conn: a busy peer is never probed; a quiet one is; an unanswered probe ends it", async () => {
  const { ws, sent } = fakeSocket();
  const conn = new Conn(ws, { heartbeatMs: 40, deadAfterMs: 160, label: "peer" });
  const reason = new Promise<string>((resolve) =>
    conn.start({ onControl() {}, onFrame() {}, onClose: resolve })
  );
  // Traffic more often than the heartbeat: no probe at all.
  for (let i = 0; i < 10; i++) {
    await tick(15);
    ws.onmessage!({ data: '{"t":"exit","sid":1,"code":0}' });
  }
  assert.deepEqual(sent.filter((s) => s === PING), [], "no probe while the peer talks");
  // Quiet, but answering: probed, and alive.
  for (let i = 0; i < 4; i++) {
    const n = sent.length;
    while (sent.length === n) await tick(5);
    assert.equal(sent.at(-1), PING);
    ws.onmessage!({ data: PONG });
  }
  assert.ok(conn.isOpen);
  // Then a probe nobody answers: closed as dead, with the reason.
  const t0 = Date.now();
  assert.match(await reason, /no heartbeat from peer for 0s/);
  assert.ok(Date.now() - t0 >= 120 - 5, `closed after ${Date.now() - t0} ms`);
  assert.equal(ws.closed?.code, 4408);
});

Deno.test("conn: while idle, a link is probed only after the idle heartbeat", async () => {
  const { ws, sent } = fakeSocket();
  const conn = new Conn(ws, { heartbeatMs: 20, deadAfterMs: 80 });
  let idle = true;
  conn.probeIdleAfter(60_000, () => idle);
  conn.start({ onControl() {}, onFrame() {}, onClose() {} });
  await tick(150);
  assert.deepEqual(sent, [], "no probe within the idle heartbeat");
  assert.ok(conn.isOpen, "and no death either");
  // A stream opens (the relay and the agent say so): the short heartbeat holds again at once.
  idle = false;
  conn.wake();
  while (sent.length === 0) await tick(5);
  assert.equal(sent[0], PING);
  ws.onmessage!({ data: PONG });
  assert.ok(conn.isOpen);
  conn.close();
});

Deno.test("conn: an idle link sleeps in its ticker until its probe is due, then is probed", async () => {
  const { ws, sent } = fakeSocket();
  let ticks = 0;
  ws.trim = () => void ticks++; // called once per tick of the connection
  const conn = new Conn(ws, { heartbeatMs: 20, deadAfterMs: 80 });
  conn.probeIdleAfter(300, () => true);
  const t0 = Date.now();
  const reason = new Promise<string>((resolve) =>
    conn.start({ onControl() {}, onFrame() {}, onClose: resolve })
  );
  await tick(200);
  // Ticked every 10 ms until 20 ms of silence, then asleep until the idle heartbeat is due.
  assert.ok(ticks <= 5, `ticked ${ticks} times while idle`);
  assert.deepEqual(sent, []);
  while (sent.length === 0) await tick(5);
  assert.equal(sent[0], PING);
  assert.ok(Date.now() - t0 >= 290, `probed after ${Date.now() - t0} ms`);
  // Unanswered: dead after the rest of the dead time, as a busy link would be.
  assert.match(await reason, /no heartbeat from peer/);
  assert.equal(ws.closed?.code, 4408);
});

Deno.test("conn: a malformed message closes that connection with an error", async () => {
  const { ws, sent } = fakeSocket();
  const conn = new Conn(ws, { heartbeatMs: 1000 });
  const reason = new Promise<string>((resolve) =>
    conn.start({ onControl() {}, onFrame() {}, onClose: resolve })
  );
  ws.onmessage!({ data: '{"t":"open","sid":"x"}' });
  assert.match(await reason, /protocol error: open: field 'sid'/);
  assert.equal(ws.closed?.code, 4400);
  assert.equal(JSON.parse(sent.at(-1)!).t, "error");
});
