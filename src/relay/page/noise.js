// The share page's end of end-to-end encryption (docs/PROTOCOL.md, "End-to-end encryption"):
// the initiator of Noise_IK_25519_AESGCM_SHA256 on WebCrypto, and the transport that seals
// what the page sends and opens what it receives. The same protocol as src/protocol/e2e.ts
// (whose AESGCM suite the agent speaks to pages); tests/unit/page_noise_test.ts checks this
// file against the Noise test vectors too. WebCrypto is asynchronous: callers keep order.
"use strict";

(() => {
  const subtle = crypto.subtle;
  const enc = new TextEncoder();
  const TAG = 16;
  const PKCS8_PREFIX = [48, 46, 2, 1, 0, 48, 5, 6, 3, 43, 101, 110, 4, 34, 4, 32];

  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };

  const sha256 = async (...parts) =>
    new Uint8Array(await subtle.digest("SHA-256", concat(...parts)));

  async function hmac(key, ...parts) {
    const k = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, [
      "sign",
    ]);
    return new Uint8Array(await subtle.sign("HMAC", k, concat(...parts)));
  }

  async function hkdf2(ck, ikm) {
    const temp = await hmac(ck, ikm);
    const a = await hmac(temp, Uint8Array.of(1));
    return [a, await hmac(temp, a, Uint8Array.of(2))];
  }

  /** A raw X25519 private key as a CryptoKey, and its public key. */
  async function keyPair(priv) {
    const privateKey = await subtle.importKey(
      "pkcs8",
      concat(Uint8Array.from(PKCS8_PREFIX), priv),
      { name: "X25519" },
      true,
      ["deriveBits"],
    );
    // The public key is in the JWK of the private one.
    const jwk = await subtle.exportKey("jwk", privateKey);
    return { privateKey, pub: fromBase64Url(jwk.x) };
  }

  async function generate() {
    const kp = await subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
    return {
      privateKey: kp.privateKey,
      pub: new Uint8Array(await subtle.exportKey("raw", kp.publicKey)),
    };
  }

  async function dh(kp, pub) {
    const publicKey = await subtle.importKey("raw", pub, { name: "X25519" }, false, []);
    const out = new Uint8Array(
      await subtle.deriveBits({ name: "X25519", public: publicKey }, kp.privateKey, 256),
    );
    if (out.every((b) => b === 0)) throw new Error("invalid public key");
    return out;
  }

  function nonce(n) {
    const iv = new Uint8Array(12);
    const dv = new DataView(iv.buffer);
    dv.setUint32(4, Math.floor(n / 0x1_0000_0000));
    dv.setUint32(8, n >>> 0);
    return iv;
  }

  async function aesKey(raw) {
    return await subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
  }

  async function seal(key, n, ad, plain) {
    return new Uint8Array(
      await subtle.encrypt(
        { name: "AES-GCM", iv: nonce(n), additionalData: ad, tagLength: 128 },
        key,
        plain,
      ),
    );
  }

  async function open(key, n, ad, sealed) {
    if (sealed.length < TAG) throw new Error("integrity: sealed message too short");
    try {
      return new Uint8Array(
        await subtle.decrypt(
          { name: "AES-GCM", iv: nonce(n), additionalData: ad, tagLength: 128 },
          key,
          sealed,
        ),
      );
    } catch {
      throw new Error("integrity: a sealed message did not verify");
    }
  }

  /** Noise's SymmetricState, for the initiator of IK. */
  class Symmetric {
    static async create(prologue) {
      const s = new Symmetric();
      s.h = concat(enc.encode("Noise_IK_25519_AESGCM_SHA256"), new Uint8Array(4));
      s.ck = s.h;
      s.k = undefined;
      s.n = 0;
      await s.mixHash(prologue);
      return s;
    }
    async mixHash(data) {
      this.h = await sha256(this.h, data);
    }
    async mixKey(ikm) {
      const [ck, k] = await hkdf2(this.ck, ikm);
      this.ck = ck;
      this.k = await aesKey(k);
      this.n = 0;
    }
    async encryptAndHash(plain) {
      if (!this.k) {
        await this.mixHash(plain);
        return plain;
      }
      const out = await seal(this.k, this.n++, this.h, plain);
      await this.mixHash(out);
      return out;
    }
    async decryptAndHash(data) {
      if (!this.k) {
        await this.mixHash(data);
        return data;
      }
      const plain = await open(this.k, this.n++, this.h, data);
      await this.mixHash(data);
      return plain;
    }
  }

  /**
   * A stream's transport keys. seal/open take their counter when called, so calls made in
   * order seal and open in order even though each resolves later.
   */
  class Transport {
    constructor(sendKey, recvKey, handshakeHash) {
      this.sendKey = sendKey;
      this.recvKey = recvKey;
      this.handshakeHash = handshakeHash;
      this.sent = 0;
      this.received = 0;
    }
    seal(ad, plain) {
      return seal(this.sendKey, this.sent++, ad, plain);
    }
    open(ad, sealed) {
      return open(this.recvKey, this.received++, ad, sealed);
    }
  }

  /**
   * Starts a handshake with the agent whose static key is `rs`, as the client whose
   * private key is `priv` (raw bytes). `e` (raw private bytes) is for test vectors only.
   */
  async function initiate(prologue, priv, rs, payload = new Uint8Array(0), e = undefined) {
    const sym = await Symmetric.create(prologue);
    const s = await keyPair(priv);
    const eph = e ? await keyPair(e) : await generate();
    await sym.mixHash(rs);
    await sym.mixHash(eph.pub);
    await sym.mixKey(await dh(eph, rs));
    const encS = await sym.encryptAndHash(s.pub);
    await sym.mixKey(await dh(s, rs));
    const encP = await sym.encryptAndHash(payload);
    return {
      message: concat(eph.pub, encS, encP),
      /** Reads the agent's message 2: the transport, or an "integrity" error. */
      async finish(message) {
        if (message.length < 32 + TAG) throw new Error("integrity: handshake reply too short");
        const re = message.subarray(0, 32);
        await sym.mixHash(re);
        await sym.mixKey(await dh(eph, re));
        await sym.mixKey(await dh(s, re));
        const reply = await sym.decryptAndHash(message.subarray(32));
        const [k1, k2] = await hkdf2(sym.ck, new Uint8Array(0));
        return {
          payload: reply,
          transport: new Transport(await aesKey(k1), await aesKey(k2), sym.h),
        };
      },
    };
  }

  function fromBase64Url(s) {
    const b = atob(
      s.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(s.length / 4) * 4, "="),
    );
    return Uint8Array.from(b, (c) => c.charCodeAt(0));
  }

  function toBase64(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }

  function fromBase64(s) {
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  }

  globalThis.TetherNoise = { initiate, fromBase64Url, toBase64, fromBase64 };
})();
