/**
 * The share page's Noise code (src/relay/page/noise.js, browser JavaScript on WebCrypto),
 * run in Deno's WebCrypto: byte for byte against the Noise test vectors, and against the
 * agent's implementation (src/protocol/e2e.ts).
 */
import assert from "node:assert/strict";
import { generateKeyPair, keyPairFromPrivate, Responder } from "../../src/protocol/e2e.ts";
import "../../src/relay/page/noise.js";

interface PageTransport {
  seal(ad: Uint8Array, plain: Uint8Array): Promise<Uint8Array>;
  open(ad: Uint8Array, sealed: Uint8Array): Promise<Uint8Array>;
  handshakeHash: Uint8Array;
}
const Noise = (globalThis as unknown as {
  TetherNoise: {
    initiate(
      prologue: Uint8Array,
      priv: Uint8Array,
      rs: Uint8Array,
      payload?: Uint8Array,
      e?: Uint8Array,
    ): Promise<{
      message: Uint8Array;
      finish(m: Uint8Array): Promise<{ payload: Uint8Array; transport: PageTransport }>;
    }>;
  };
}).TetherNoise;

const hex = (s: string) => new Uint8Array((s.match(/../g) ?? []).map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

Deno.test("page noise.js: Noise_IK_25519_AESGCM_SHA256 matches the test vectors byte for byte", async () => {
  const vec = JSON.parse(
    Deno.readTextFileSync(new URL("../fixtures/noise_ik_vectors.json", import.meta.url)),
  ).vectors.find((v: { protocol_name: string }) =>
    v.protocol_name === "Noise_IK_25519_AESGCM_SHA256"
  );
  const prologue = hex(vec.init_prologue);
  const [m1, m2, ...transport] = vec.messages;
  const init = await Noise.initiate(
    prologue,
    hex(vec.init_static),
    hex(vec.init_remote_static),
    hex(m1.payload),
    hex(vec.init_ephemeral),
  );
  assert.equal(toHex(init.message), m1.ciphertext);
  // The agent's side, as it answers a page.
  const resp = Responder.read(
    "AESGCM",
    prologue,
    keyPairFromPrivate(hex(vec.resp_static)),
    init.message,
  );
  const reply = resp.reply(hex(m2.payload), keyPairFromPrivate(hex(vec.resp_ephemeral)));
  assert.equal(toHex(reply.message), m2.ciphertext);
  const done = await init.finish(reply.message);
  assert.equal(toHex(done.payload), m2.payload);
  assert.equal(toHex(done.transport.handshakeHash), vec.handshake_hash);
  const none = new Uint8Array(0);
  for (const [i, m] of transport.entries()) {
    if (i % 2 === 0) {
      const sealed = await done.transport.seal(none, hex(m.payload));
      assert.equal(toHex(sealed), m.ciphertext);
      assert.equal(toHex(reply.transport.open(none, sealed)), m.payload);
    } else {
      const sealed = reply.transport.seal(none, hex(m.payload));
      assert.equal(toHex(sealed), m.ciphertext);
      assert.equal(toHex(await done.transport.open(none, sealed)), m.payload);
    }
  }
});

Deno.test("page noise.js: a reply from another key, or an altered item, is an integrity error", async () => {
  const page = generateKeyPair();
  const agent = generateKeyPair();
  const p = new TextEncoder().encode("tether-e2e-v1 m");
  const init = await Noise.initiate(p, page.priv, agent.pub);
  const resp = Responder.read("AESGCM", p, agent, init.message);
  assert.deepEqual(resp.remoteStatic, page.pub);
  const reply = resp.reply();
  const other = await Noise.initiate(p, page.priv, agent.pub);
  await assert.rejects(() => other.finish(reply.message), /integrity/);
  const { transport } = await init.finish(reply.message);
  const ad = new Uint8Array([1]);
  const sealed = reply.transport.seal(ad, new TextEncoder().encode("hello"));
  sealed[0] ^= 1;
  await assert.rejects(() => transport.open(ad, sealed), /integrity/);
});
