import assert from "node:assert/strict";
import {
  decodeKey,
  encodeKey,
  fingerprint,
  generateKeyPair,
  Initiator,
  IntegrityError,
  keyPairFromPrivate,
  Responder,
  type Suite,
} from "../../src/protocol/e2e.ts";

const hex = (s: string) => new Uint8Array((s.match(/../g) ?? []).map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

interface Vector {
  protocol_name: string;
  init_prologue: string;
  init_static: string;
  init_ephemeral: string;
  init_remote_static: string;
  resp_static: string;
  resp_ephemeral: string;
  handshake_hash: string;
  messages: { payload: string; ciphertext: string }[];
}

// The Noise test vectors of cacophony (vectors/cacophony.txt, also in snow), for the two
// suites tether uses.
const vectors: Vector[] = JSON.parse(
  Deno.readTextFileSync(new URL("../fixtures/noise_ik_vectors.json", import.meta.url)),
).vectors;

for (const vec of vectors) {
  Deno.test(`e2e: ${vec.protocol_name} matches the Noise test vectors byte for byte`, () => {
    const suite = vec.protocol_name.split("_")[3] as Suite;
    const prologue = hex(vec.init_prologue);
    const is = keyPairFromPrivate(hex(vec.init_static));
    const rs = keyPairFromPrivate(hex(vec.resp_static));
    assert.equal(toHex(rs.pub), vec.init_remote_static);
    const [m1, m2, ...transport] = vec.messages;
    const init = Initiator.start(
      suite,
      prologue,
      is,
      rs.pub,
      hex(m1.payload),
      keyPairFromPrivate(hex(vec.init_ephemeral)),
    );
    assert.equal(toHex(init.message), m1.ciphertext);
    const resp = Responder.read(suite, prologue, rs, init.message);
    assert.equal(toHex(resp.payload), m1.payload);
    assert.deepEqual(resp.remoteStatic, is.pub);
    const reply = resp.reply(hex(m2.payload), keyPairFromPrivate(hex(vec.resp_ephemeral)));
    assert.equal(toHex(reply.message), m2.ciphertext);
    const done = init.finish(reply.message);
    assert.equal(toHex(done.payload), m2.payload);
    assert.equal(toHex(done.transport.handshakeHash), vec.handshake_hash);
    assert.equal(toHex(reply.transport.handshakeHash), vec.handshake_hash);
    const none = new Uint8Array(0);
    transport.forEach((m, i) => {
      const [from, to] = i % 2 === 0
        ? [done.transport, reply.transport]
        : [reply.transport, done.transport];
      const sealed = from.seal(none, hex(m.payload));
      assert.equal(toHex(sealed), m.ciphertext);
      assert.equal(toHex(to.open(none, sealed)), m.payload);
    });
  });
}

function pair(suite: Suite = "ChaChaPoly") {
  const client = generateKeyPair();
  const agent = generateKeyPair();
  const prologue = new TextEncoder().encode("tether test");
  const init = Initiator.start(suite, prologue, client, agent.pub);
  const resp = Responder.read(suite, prologue, agent, init.message);
  const reply = resp.reply();
  return { c: init.finish(reply.message).transport, a: reply.transport, client, agent };
}

Deno.test("e2e: a dropped, replayed, reordered, altered or foreign item does not open, and nothing after it does", () => {
  const ad = new Uint8Array([1, 2, 3]);
  const msg = (s: string) => new TextEncoder().encode(s);
  // Flipped byte.
  let { c, a } = pair();
  const one = c.seal(ad, msg("one"));
  one[1] ^= 1;
  assert.throws(() => a.open(ad, one), IntegrityError);
  // Once broken, a genuine item does not open either.
  assert.throws(() => a.open(ad, c.seal(ad, msg("two"))), IntegrityError);
  // Dropped: the second item opened first.
  ({ c, a } = pair());
  c.seal(ad, msg("one"));
  assert.throws(() => a.open(ad, c.seal(ad, msg("two"))), IntegrityError);
  // Replayed.
  ({ c, a } = pair());
  const x = c.seal(ad, msg("x"));
  assert.equal(new TextDecoder().decode(a.open(ad, x)), "x");
  assert.throws(() => a.open(ad, x), IntegrityError);
  // Other associated data (the relay changed an offset in a header).
  ({ c, a } = pair());
  assert.throws(() => a.open(new Uint8Array([1, 2, 4]), c.seal(ad, msg("y"))), IntegrityError);
  // Sealed for another stream.
  const other = pair();
  ({ c, a } = pair());
  assert.throws(() => a.open(ad, other.c.seal(ad, msg("z"))), IntegrityError);
  // Our own item reflected back.
  ({ c, a } = pair());
  assert.throws(() => c.open(ad, c.seal(ad, msg("w"))), IntegrityError);
});

Deno.test("e2e: only the agent holding the pinned key can answer; another prologue does not agree", () => {
  const client = generateKeyPair();
  const agent = generateKeyPair();
  const impostor = generateKeyPair();
  const p = new TextEncoder().encode("m1");
  const init = Initiator.start("ChaChaPoly", p, client, agent.pub);
  // The impostor cannot even read the client's static key out of message 1.
  assert.throws(() => Responder.read("ChaChaPoly", p, impostor, init.message), IntegrityError);
  // Another machine's prologue.
  assert.throws(
    () => Responder.read("ChaChaPoly", new TextEncoder().encode("m2"), agent, init.message),
    IntegrityError,
  );
  // A reply made for another handshake.
  const init2 = Initiator.start("ChaChaPoly", p, client, agent.pub);
  const reply2 = Responder.read("ChaChaPoly", p, agent, init2.message).reply();
  assert.throws(() => init.finish(reply2.message), IntegrityError);
  // A truncated message.
  assert.throws(() => Responder.read("ChaChaPoly", p, agent, init.message.subarray(0, 40)));
});

Deno.test("e2e: AESGCM (the browser's suite) works both ways too", () => {
  const { c, a } = pair("AESGCM");
  const ad = new Uint8Array(0);
  assert.equal(
    new TextDecoder().decode(a.open(ad, c.seal(ad, new TextEncoder().encode("hi")))),
    "hi",
  );
  assert.equal(
    new TextDecoder().decode(c.open(ad, a.seal(ad, new TextEncoder().encode("yo")))),
    "yo",
  );
});

Deno.test("e2e: keys as text and fingerprints", () => {
  const k = generateKeyPair();
  assert.deepEqual(decodeKey(encodeKey(k.pub)), k.pub);
  assert.equal(decodeKey("AAAA"), undefined);
  assert.equal(decodeKey("not base64!"), undefined);
  assert.match(fingerprint(k.pub), /^SHA256:[A-Za-z0-9+/]{43}$/);
  assert.deepEqual(keyPairFromPrivate(k.priv).pub, k.pub);
});

Deno.test("e2e: payloads of every size class (WebAssembly up to 512 bytes, OpenSSL or node:crypto in 32 KiB steps above) open to what was sealed", () => {
  for (const suite of ["ChaChaPoly", "AESGCM"] as const) {
    const { c, a } = pair(suite);
    const ad = new Uint8Array([9, 9]);
    for (const n of [0, 1, 64, 65, 511, 512, 513, 32767, 32768, 32769, 65536, 100_001, 262144]) {
      const plain = crypto.getRandomValues(new Uint8Array(Math.min(n, 65536)));
      const big = n > 65536 ? new Uint8Array(n).fill(7) : plain;
      assert.deepEqual(a.open(ad, c.seal(ad, big)), big, `${suite} ${n}`);
    }
  }
});
