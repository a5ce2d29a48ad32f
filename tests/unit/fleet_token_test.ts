import assert from "node:assert/strict";
import { checkFleetToken, fleetToken, newRelayId } from "../../src/relay/fleet.ts";
import { decodeEvent, encodeEvent } from "../../src/relay/store_postgres.ts";

const SECRET = "0123456789abcdef0123";

Deno.test("fleet token: proves the secret and the relay id, within five minutes either way", () => {
  const id = newRelayId();
  const now = Date.now();
  assert.equal(checkFleetToken(SECRET, fleetToken(SECRET, id, now), now), id);
  assert.equal(checkFleetToken(SECRET, fleetToken(SECRET, id, now - 290_000), now), id);
  assert.equal(checkFleetToken(SECRET, fleetToken(SECRET, id, now + 290_000), now), id);
  assert.equal(checkFleetToken(SECRET, fleetToken(SECRET, id, now - 310_000), now), undefined);
  assert.equal(
    checkFleetToken("another-secret-entirely", fleetToken(SECRET, id, now), now),
    undefined,
  );
  // Another id with the same MAC, a bearer key, garbage: refused.
  const [, rest] = fleetToken(SECRET, id, now).split(" ");
  const forged = `Fleet rother.${rest.split(".").slice(1).join(".")}`;
  assert.equal(checkFleetToken(SECRET, forged, now), undefined);
  for (const h of ["", "Bearer x", "Fleet ", "Fleet a.b.c", `Fleet ${id}.1.${"0".repeat(64)}`]) {
    assert.equal(checkFleetToken(SECRET, h, now), undefined, h);
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
