import assert from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import { chachaOpenInPlace, chachaSealInto } from "../../src/protocol/chacha_poly.ts";

const hex = (s: string) =>
  new Uint8Array((s.replace(/\s/g, "").match(/../g) ?? []).map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

/** Opens a copy of `sealed`: the plaintext, or undefined when the tag does not match. */
function chachaOpen(
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  sealed: Uint8Array,
): Uint8Array | undefined {
  const box = sealed.slice();
  if (!chachaOpenInPlace(key, nonce, ad, box)) return undefined;
  return box.subarray(0, box.length - 16);
}

function seal(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, plain: Uint8Array): Uint8Array {
  const out = new Uint8Array(plain.length + 16);
  chachaSealInto(key, nonce, ad, plain, out, 0);
  return out;
}

Deno.test("chacha_poly: RFC 8439 §2.8.2, the AEAD test vector", () => {
  const key = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
  const nonce = hex("070000004041424344454647");
  const ad = hex("50515253c0c1c2c3c4c5c6c7");
  const plain = new TextEncoder().encode(
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
  );
  const sealed = seal(key, nonce, ad, plain);
  assert.equal(
    toHex(sealed.subarray(0, plain.length)),
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116",
  );
  assert.equal(toHex(sealed.subarray(plain.length)), "1ae10b594f09e26a7e902ecbd0600691");
  assert.deepEqual(chachaOpen(key, nonce, ad, sealed), plain);
});

Deno.test("chacha_poly: the same bytes as node:crypto for every length 0..600 and random keys, nonces and AD; a flipped bit does not open", () => {
  for (let n = 0; n <= 600; n++) {
    const key = crypto.getRandomValues(new Uint8Array(32));
    const nonce = crypto.getRandomValues(new Uint8Array(12));
    const ad = crypto.getRandomValues(new Uint8Array(n % 37));
    const plain = crypto.getRandomValues(new Uint8Array(n));
    const c = createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: 16 });
    c.setAAD(ad, { plaintextLength: n });
    const expect = new Uint8Array([...c.update(plain), ...c.final(), ...c.getAuthTag()]);
    const got = seal(key, nonce, ad, plain);
    assert.equal(toHex(got), toHex(expect), `length ${n}`);
    assert.deepEqual(chachaOpen(key, nonce, ad, got), plain);
    const bad = got.slice();
    bad[(n * 7) % bad.length] ^= 1 << (n % 8);
    assert.equal(chachaOpen(key, nonce, ad, bad), undefined);
  }
  // All-ones: the carries of Poly1305 at their largest.
  const key = new Uint8Array(32).fill(0xff);
  const nonce = new Uint8Array(12).fill(0xff);
  const plain = new Uint8Array(1000).fill(0xff);
  const c = createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: 16 });
  c.setAAD(plain.subarray(0, 50), { plaintextLength: 1000 });
  const expect = new Uint8Array([...c.update(plain), ...c.final(), ...c.getAuthTag()]);
  assert.equal(toHex(seal(key, nonce, plain.subarray(0, 50), plain)), toHex(expect));
});

Deno.test("chacha_poly: 70,000 bytes (the module's memory grows) and a failed open leaves the input as it was", () => {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const plain = new Uint8Array(70_000);
  crypto.getRandomValues(plain.subarray(0, 65_536));
  const c = createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: 16 });
  c.setAAD(new Uint8Array(0), { plaintextLength: plain.length });
  const expect = new Uint8Array([...c.update(plain), ...c.final(), ...c.getAuthTag()]);
  const got = seal(key, nonce, new Uint8Array(0), plain);
  assert.equal(toHex(got), toHex(expect));
  const bad = got.slice();
  bad[5] ^= 1;
  const before = bad.slice();
  assert.equal(chachaOpenInPlace(key, nonce, new Uint8Array(0), bad), false);
  assert.deepEqual(bad, before);
});

Deno.test("chacha_poly: chacha_poly.gen.ts is chacha_poly.wat assembled", async () => {
  const { generate, OUT } = await import("../../scripts/wasm.ts");
  assert.ok(
    (await Deno.readTextFile(OUT)) === await generate(),
    "src/protocol/chacha_poly.gen.ts is out of date: run ./scripts/deno run -P scripts/wasm.ts",
  );
});
