import assert from "node:assert/strict";
import { AttachState, CTRL_D } from "../../src/client/attach_state.ts";

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array | null) => (b ? new TextDecoder().decode(b) : null);

function fresh(rules: Partial<ConstructorParameters<typeof AttachState>[0]> = {}) {
  return new AttachState({
    oneShot: false,
    detachKey: CTRL_D,
    isTerminal: true,
    machineName: "box",
    ...rules,
  });
}

Deno.test("attach state: connecting → replaying → live; the replay loses its terminal queries", () => {
  const s = fresh();
  assert.equal(s.phase, "connecting");
  assert.deepEqual(s.openSpec(), {});
  s.started({ session: "abc", attach_id: "a1", offset: 0, end: 10 });
  assert.equal(s.phase, "replaying");
  // A cursor-position query (ESC [ 6 n) in the replay is not replayed.
  assert.equal(text(s.output(0, bytes("ab\x1b[6ncd"))), "abcd");
  assert.equal(s.phase, "replaying");
  assert.equal(text(s.output(8, bytes("ef\x1b[6n"))), "ef\x1b[6n", "past the replay: shown as is");
  assert.equal(s.phase, "live");
  assert.deepEqual(s.openSpec(), { session: "abc", resume: "a1", offset: 14 });
});

Deno.test("attach state: what was shown is not shown again; a gap on resume is announced", () => {
  const s = fresh();
  s.started({ session: "abc", attach_id: "a1", offset: 5, end: 5 });
  assert.equal(s.phase, "live");
  assert.equal(text(s.output(5, bytes("hello"))), "hello");
  assert.equal(text(s.output(7, bytes("llo!"))), "!", "overlap cut");
  assert.equal(s.output(3, bytes("xx")), null, "all shown already");
  assert.equal(s.lost({ code: "session_lost", message: "relay gone" }), "reconnect");
  assert.equal(s.phase, "reconnecting");
  const notice = s.started({ session: "abc", attach_id: "a2", offset: 20, end: 20 });
  assert.equal(notice, "[tether: 9 bytes of output were lost while away]");
  assert.equal(s.phase, "live");
});

Deno.test("attach state: the detach key, the end of input, a signal", () => {
  const s = fresh();
  s.started({ session: "abc", offset: 0 });
  assert.equal(text(s.input(bytes("ls\n"))), "ls\n");
  assert.equal(text(s.input(bytes(`ab${String.fromCharCode(CTRL_D)}cd`))), "ab");
  assert.deepEqual([s.phase, s.outcome], ["detached", { kind: "detach", code: 0, session: "abc" }]);
  // No key (or not a terminal): Ctrl-D is input like any other.
  for (const rules of [{ detachKey: null }, { isTerminal: false }, { oneShot: true }]) {
    const n = fresh(rules);
    n.started({ session: "x", offset: 0 });
    assert.equal(n.input(bytes("\x04")).length, 1);
    assert.equal(n.phase, "live");
  }
  const piped = fresh({ isTerminal: false });
  piped.started({ session: "p", offset: 0 });
  assert.equal(piped.inputEnded(), "detach");
  assert.equal(piped.outcome?.code, 0);
  const oneShot = fresh({ oneShot: true });
  oneShot.started({ session: "o", offset: 0 });
  assert.equal(oneShot.inputEnded(), "eof");
  assert.equal(oneShot.phase, "live");
  const killed = fresh();
  killed.started({ session: "k", offset: 0 });
  killed.signalled("SIGTERM");
  assert.deepEqual(killed.outcome, { kind: "detach", code: 143, session: "k", signal: "SIGTERM" });
  killed.exited(0);
  assert.equal(killed.outcome?.kind, "detach", "the first end stands");
});

Deno.test("attach state: what ends an attach for good", () => {
  const s = fresh();
  s.started({ session: "abc", offset: 0 });
  const revoked = s.lost({ code: "unauthenticated", message: "the relay revoked this key" });
  assert.ok(revoked !== "reconnect");
  assert.equal(revoked.code, "unauthenticated");
  assert.equal(s.phase, "ended");

  const shot = fresh({ oneShot: true });
  shot.started({ session: "x", offset: 0 });
  const r = shot.lost({ code: "session_lost", message: "gone" });
  assert.ok(r !== "reconnect" && r.code === "session_lost", "exec -t has nothing to come back to");

  const away = fresh();
  away.started({ session: "abc", offset: 0 });
  away.lost({ code: "session_lost", message: "agent gone" });
  assert.equal(away.reattachRefused({ code: "machine_offline", message: "not yet" }), undefined);
  const ended = away.reattachRefused({ code: "session_not_found", message: "no session" });
  assert.equal(ended?.code, "session_lost");
  assert.match(ended!.message, /session abc ended while we were away/);
  assert.match(ended!.hint!, /tether connect box --new/);

  const slow = fresh();
  slow.started({ session: "abc", offset: 0 });
  slow.lost({ code: "session_lost", message: "x" });
  const gave = slow.gaveUp(60_000, "connection refused");
  assert.match(gave.message, /could not reconnect within 60s: connection refused/);
  assert.match(gave.hint!, /--session abc/);

  const done = fresh();
  done.started({ session: "d", offset: 0 });
  done.exited(7);
  assert.deepEqual(done.outcome, { kind: "exit", code: 7, session: "d" });
});
