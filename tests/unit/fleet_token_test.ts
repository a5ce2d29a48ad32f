import assert from "node:assert/strict";
import { fleetToken, FleetTokens, newRelayId } from "../../src/relay/fleet.ts";
import { advertiseProblem } from "../../src/cli/relay.ts";
import { decodeEvent, encodeEvent } from "../../src/relay/store_postgres.ts";

const SECRET = "0123456789abcdef0123";

Deno.test("fleet token: proves the secret, is for one relay, within five minutes, once", () => {
  const id = newRelayId(), me = newRelayId();
  const now = Date.now();
  const fresh = () => new FleetTokens(SECRET, me);
  assert.equal(fresh().check(fleetToken(SECRET, id, me, now), now), id);
  assert.equal(fresh().check(fleetToken(SECRET, id, me, now - 290_000), now), id);
  assert.equal(fresh().check(fleetToken(SECRET, id, me, now + 290_000), now), id);
  assert.equal(fresh().check(fleetToken(SECRET, id, me, now - 310_000), now), undefined);
  assert.equal(fresh().check(fleetToken("another-secret-entirely", id, me, now), now), undefined);
  // Made for another relay of the fleet: refused here.
  assert.equal(fresh().check(fleetToken(SECRET, id, newRelayId(), now), now), undefined);
  // Seen once: a replay of the same header is refused; a new token is fine.
  const tokens = fresh();
  const t = fleetToken(SECRET, id, me, now);
  assert.equal(tokens.check(t, now), id);
  assert.equal(tokens.check(t, now + 1000), undefined);
  assert.equal(tokens.check(fleetToken(SECRET, id, me, now), now), id);
  // Another id with the same MAC, a bearer key, garbage: refused.
  const [, rest] = fleetToken(SECRET, id, me, now).split(" ");
  const forged = `Fleet rother.${rest.split(".").slice(1).join(".")}`;
  assert.equal(fresh().check(forged, now), undefined);
  for (
    const h of ["", "Bearer x", "Fleet ", "Fleet a.b.c", `Fleet ${id}.1.${"0".repeat(64)}`]
  ) {
    assert.equal(fresh().check(h, now), undefined, h);
  }
});

Deno.test("fleet events survive NOTIFY payloads; unknown ones are ignored", () => {
  for (
    const e of [
      { kind: "revoke" as const, id: "abc123" },
      { kind: "machine" as const, id: "7e0b-uuid" },
      { kind: "lease" as const, machine: "m-1", relay: "r0a1b2c3d4", epoch: 42 },
    ]
  ) {
    assert.deepEqual(decodeEvent(encodeEvent(e)), e);
  }
  for (const p of ["", "revoke:", "lease:m:r:x", "other:1", "lease:m"]) {
    assert.equal(decodeEvent(p), undefined, p);
  }
});

Deno.test("--advertise: an address the others cannot reach, or plain ws:// across machines, is said", () => {
  assert.equal(advertiseProblem("ws://127.0.0.1:7420"), undefined);
  assert.equal(advertiseProblem("wss://relay-a.internal:7420"), undefined);
  assert.match(advertiseProblem("ws://0.0.0.0:7420")!, /cannot reach/);
  assert.match(advertiseProblem("ws://[::]:7420")!, /cannot reach/);
  assert.match(advertiseProblem("ws://relay-a.internal:7420")!, /unencrypted/);
});
