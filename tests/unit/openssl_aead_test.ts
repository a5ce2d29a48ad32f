import assert from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import { nativeAead, type NativeCipher } from "../../src/protocol/openssl_aead.ts";
import { requirement } from "../helpers.ts";

/** node:crypto's seal, the fallback's: the bytes the native one must give. */
function nodeSeal(
  cipher: NativeCipher,
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  plain: Uint8Array,
): Uint8Array {
  const c = createCipheriv(cipher as "aes-256-gcm", key, nonce, { authTagLength: 16 });
  c.setAAD(ad, { plaintextLength: plain.length });
  return new Uint8Array([...c.update(plain), ...c.final(), ...c.getAuthTag()]);
}

const needOpenssl = requirement(
  nativeAead() ? undefined : "OpenSSL's libcrypto was not found (apt-get install libssl3)",
);

function native() {
  needOpenssl.check();
  return nativeAead()!;
}

Deno.test({
  name: "openssl_aead: OpenSSL is found here (FFI allowed, libcrypto installed)",
  ignore: needOpenssl.ignore,
}, () => {
  assert.match(native().version, /^0x[13]/);
});

for (const cipher of ["chacha20-poly1305", "aes-256-gcm"] as const) {
  Deno.test({
    name: `openssl_aead: ${cipher} gives node:crypto's bytes for lengths 0..600 and 64 KiB, ` +
      "at an offset; opens in place; a flipped bit or a wrong AD does not open",
    ignore: needOpenssl.ignore,
  }, () => {
    const a = native();
    for (const n of [...Array(601).keys(), 16_383, 65_536]) {
      const key = crypto.getRandomValues(new Uint8Array(32));
      const nonce = crypto.getRandomValues(new Uint8Array(12));
      const ad = crypto.getRandomValues(new Uint8Array(n % 37));
      const plain = new Uint8Array(n);
      for (let i = 0; i < n; i += 65_536) {
        crypto.getRandomValues(plain.subarray(i, Math.min(n, i + 65_536)));
      }
      const expect = nodeSeal(cipher, key, nonce, ad, plain);
      const out = new Uint8Array(n + 16 + 7).fill(0xee);
      a.sealInto(cipher, key, nonce, ad, plain, out, 5);
      assert.deepEqual(out.subarray(5, 5 + n + 16), expect, `length ${n}`);
      assert.equal(out[4], 0xee);
      assert.equal(out[n + 21], 0xee);

      const box = expect.slice();
      assert.ok(a.openInPlace(cipher, key, nonce, ad, box));
      assert.deepEqual(box.subarray(0, n), plain);

      if (n % 50 !== 0) continue;
      const flipped = expect.slice();
      flipped[(n * 7) % flipped.length] ^= 0x40;
      assert.equal(a.openInPlace(cipher, key, nonce, ad, flipped), false);
      const wrongAd = ad.length ? ad.map((b, i) => i === 0 ? b ^ 1 : b) : Uint8Array.of(1);
      assert.equal(a.openInPlace(cipher, key, nonce, wrongAd, expect.slice()), false);
    }
  });
}

Deno.test("openssl_aead: TETHER_NATIVE_CRYPTO=off leaves it out", async () => {
  const script = `
    import { nativeAead } from ${
    JSON.stringify(new URL("../../src/protocol/openssl_aead.ts", import.meta.url).href)
  };
    console.log(nativeAead() === undefined ? "none" : "native");
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", script],
    env: { TETHER_NATIVE_CRYPTO: "off", NO_COLOR: "1" },
  }).output();
  assert.equal(
    new TextDecoder().decode(out.stdout).trim(),
    "none",
    new TextDecoder().decode(out.stderr),
  );
});
