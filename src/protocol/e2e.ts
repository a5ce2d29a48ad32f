/**
 * End-to-end encryption between a client and an agent, through a relay that routes
 * what it cannot read or alter (issue 19; docs/PROTOCOL.md "End-to-end encryption").
 *
 * Each stream starts with a Noise IK handshake (noiseprotocol.org, revision 34):
 *
 *   <- s                       the client knows the agent's static key (pinned)
 *   -> e, es, s, ss            in the stream's `open`
 *   <- e, ee, se               in the agent's `accept`
 *
 * and then seals every DATA payload and every stream message with the transport keys
 * Split() gives, as Noise transport messages with associated data: one counter per
 * direction over everything sealed in that direction, so a dropped, reordered, replayed,
 * injected or altered item fails to open. The suite is ChaChaPoly for the CLI (fast in
 * node:crypto here) and AESGCM for the browser page (the cipher WebCrypto has).
 *
 * node:crypto is synchronous, which matters on the data path: measured with Deno 2.9
 * on the 2-core bench machine, one seal or open of a small payload costs 6–8 µs, and
 * ChaCha20-Poly1305 runs at 0.5–1.1 GB/s where AES-256-GCM runs at 0.12–0.14 GB/s
 * (WebCrypto's AES-GCM, asynchronous: 37 µs a small payload, 0.1–0.2 GB/s).
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import { concatBytes } from "../common/bytes.ts";
import { chachaOpenInPlace, chachaSealInto } from "./chacha_poly.ts";
import { nativeAead } from "./openssl_aead.ts";

export const KEY_BYTES = 32;
export const TAG_BYTES = 16;

/** The two suites: the cipher is the only difference. */
export type Suite = "ChaChaPoly" | "AESGCM";
export const SUITES: readonly Suite[] = ["ChaChaPoly", "AESGCM"];

/** Any failure to open what the peer sealed, or a handshake that does not verify. */
export class IntegrityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IntegrityError";
  }
}

export interface KeyPair {
  /** Raw X25519 private key (32 bytes). */
  priv: Uint8Array;
  /** Raw X25519 public key (32 bytes). */
  pub: Uint8Array;
}

// DER prefixes of an X25519 key in PKCS#8 and SPKI form (RFC 8410): raw bytes follow.
const PKCS8_PREFIX = hex("302e020100300506032b656e04220420");
const SPKI_PREFIX = hex("302a300506032b656e032100");

function hex(s: string): Uint8Array {
  return new Uint8Array(s.match(/../g)!.map((b) => parseInt(b, 16)));
}

function privateKeyObject(priv: Uint8Array): KeyObject {
  return createPrivateKey({
    key: concatBytes([PKCS8_PREFIX, priv]) as Buffer,
    format: "der",
    type: "pkcs8",
  });
}

function publicKeyObject(pub: Uint8Array): KeyObject {
  if (pub.length !== KEY_BYTES) throw new IntegrityError("a public key is 32 bytes");
  return createPublicKey({
    key: concatBytes([SPKI_PREFIX, pub]) as Buffer,
    format: "der",
    type: "spki",
  });
}

function rawPublic(k: KeyObject): Uint8Array {
  return new Uint8Array(k.export({ format: "der", type: "spki" })).subarray(SPKI_PREFIX.length);
}

export function generateKeyPair(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  const priv = new Uint8Array(privateKey.export({ format: "der", type: "pkcs8" }))
    .subarray(PKCS8_PREFIX.length);
  return { priv: priv.slice(), pub: rawPublic(publicKey).slice() };
}

export function keyPairFromPrivate(priv: Uint8Array): KeyPair {
  if (priv.length !== KEY_BYTES) throw new Error("an X25519 private key is 32 bytes");
  return { priv, pub: rawPublic(createPublicKey(privateKeyObject(priv))).slice() };
}

function dh(priv: Uint8Array, pub: Uint8Array): Uint8Array {
  const out = diffieHellman({
    privateKey: privateKeyObject(priv),
    publicKey: publicKeyObject(pub),
  });
  // An all-zero result is a low-order point: refuse it, as the Noise spec allows.
  if (out.every((b: number) => b === 0)) throw new IntegrityError("invalid public key");
  return new Uint8Array(out);
}

function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

function hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** Noise's HKDF with two outputs. */
function hkdf2(ck: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const temp = hmac(ck, ikm);
  const a = hmac(temp, Uint8Array.of(1));
  return [a, hmac(temp, a, Uint8Array.of(2))];
}

// ---- keys as text ----

const B64 = /^[A-Za-z0-9+/]+={0,2}$/;

export function toBase64(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s);
}

export function fromBase64(s: string): Uint8Array {
  if (!B64.test(s)) throw new Error("not base64");
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Base64url without padding: keys in a share link's fragment. */
export function toBase64Url(b: Uint8Array): string {
  return toBase64(b).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A public key as text (in hellos, `machines`, authorized_keys): standard base64. */
export function encodeKey(pub: Uint8Array): string {
  return toBase64(pub);
}

/** Parses a public key; undefined when it is not 32 bytes of base64. */
export function decodeKey(text: string): Uint8Array | undefined {
  try {
    const k = fromBase64(text.trim());
    return k.length === KEY_BYTES ? k : undefined;
  } catch {
    return undefined;
  }
}

/** `SHA256:` and the unpadded base64 of the key's SHA-256, as ssh shows host keys. */
export function fingerprint(pub: Uint8Array): string {
  return "SHA256:" + toBase64(sha256(pub)).replace(/=+$/, "");
}

/** The line `tether whoami` prints and `agent run --authorized-keys` reads. */
export const KEY_TYPE = "tether-x25519";

// ---- AEAD ----

/**
 * The nonce for counter `n`, in one buffer reused by every call: each use below takes it
 * at once (a typed array of its own per message cost ~2 µs in Deno, more than sealing a
 * line).
 */
const NONCE = new Uint8Array(new ArrayBuffer(12));
const NONCE_VIEW = new DataView(NONCE.buffer);

function nonce(suite: Suite, n: number): Uint8Array {
  const hi = Math.floor(n / 0x1_0000_0000);
  const lo = n >>> 0;
  if (suite === "ChaChaPoly") {
    NONCE_VIEW.setUint32(4, lo, true);
    NONCE_VIEW.setUint32(8, hi, true);
  } else {
    NONCE_VIEW.setUint32(4, hi);
    NONCE_VIEW.setUint32(8, lo);
  }
  return NONCE;
}

const ALG = { ChaChaPoly: "chacha20-poly1305", AESGCM: "aes-256-gcm" } as const;

/**
 * Up to this many bytes, ChaCha20-Poly1305 runs in WebAssembly (chacha_poly.ts): ~1 µs for
 * a line from a process's first message on, where a call into node:crypto costs 3.5–8 µs
 * whatever the size and one into OpenSSL (openssl_aead.ts) ~1.1 µs once optimised, ~6 µs
 * before, after ~10 ms to load libcrypto: a short exec, whose messages are all small, never
 * loads it (measured on the bench machine). All give the same bytes.
 */
const SMALL = 512;

/**
 * node:crypto's update() takes at most this much at a time: in Deno 2.9 a call on 64 KiB
 * ran at anything from 50 to 115 µs from run to run, two on 32 KiB at 50–54 µs, and smaller
 * pieces cost more per byte (measured on the bench machine).
 */
const UPDATE_CHUNK = 32 * 1024;

/**
 * Seals `plain` into `out` at `at` (ciphertext, then the 16-byte tag); `out` must have
 * room for plain.length + TAG_BYTES there.
 */
function sealInto(
  suite: Suite,
  key: Uint8Array,
  n: number,
  ad: Uint8Array,
  plain: Uint8Array,
  out: Uint8Array,
  at: number,
): void {
  if (suite === "ChaChaPoly" && plain.length <= SMALL) {
    return chachaSealInto(key, nonce(suite, n), ad, plain, out, at);
  }
  const native = nativeAead();
  if (native) return native.sealInto(ALG[suite], key, nonce(suite, n), ad, plain, out, at);
  // Typed as GCM: both AEADs have the same calls here.
  const c = createCipheriv(ALG[suite] as "aes-256-gcm", key, nonce(suite, n), {
    authTagLength: TAG_BYTES,
  });
  c.setAAD(ad);
  let done = 0;
  for (let i = 0; i < plain.length; i += UPDATE_CHUNK) {
    const body = c.update(plain.subarray(i, i + UPDATE_CHUNK));
    out.set(body, at + done);
    done += body.length;
  }
  out.set(c.final(), at + done);
  out.set(c.getAuthTag(), at + plain.length);
}

/**
 * Opens `sealed`. With `inPlace` the plaintext may be written over `sealed` and returned as
 * a view of it (the caller no longer needs the ciphertext, and drops it on a failure).
 */
function open(
  suite: Suite,
  key: Uint8Array,
  n: number,
  ad: Uint8Array,
  sealed: Uint8Array,
  inPlace: boolean,
): Uint8Array {
  if (sealed.length < TAG_BYTES) throw new IntegrityError("sealed message too short");
  const end = sealed.length - TAG_BYTES;
  if (suite === "ChaChaPoly" && end <= SMALL) {
    const box = inPlace ? sealed : sealed.slice();
    if (!chachaOpenInPlace(key, nonce(suite, n), ad, box)) {
      throw new IntegrityError("a sealed message did not verify");
    }
    return box.subarray(0, end);
  }
  const native = nativeAead();
  if (native) {
    const box = inPlace ? sealed : sealed.slice();
    if (!native.openInPlace(ALG[suite], key, nonce(suite, n), ad, box)) {
      throw new IntegrityError("a sealed message did not verify");
    }
    return box.subarray(0, end);
  }
  const d = createDecipheriv(ALG[suite] as "aes-256-gcm", key, nonce(suite, n), {
    authTagLength: TAG_BYTES,
  });
  d.setAAD(ad);
  d.setAuthTag(sealed.subarray(end));
  const plain = new Uint8Array(end);
  let done = 0;
  for (let i = 0; i < end; i += UPDATE_CHUNK) {
    const body = d.update(sealed.subarray(i, Math.min(end, i + UPDATE_CHUNK)));
    plain.set(body, done);
    done += body.length;
  }
  try {
    plain.set(d.final(), done);
  } catch {
    throw new IntegrityError("a sealed message did not verify");
  }
  return plain;
}

// ---- the handshake (Noise SymmetricState) ----

const EMPTY = new Uint8Array(0);

class Symmetric {
  ck: Uint8Array;
  h: Uint8Array;
  private k?: Uint8Array;
  private n = 0;

  constructor(readonly suite: Suite, prologue: Uint8Array) {
    const name = new TextEncoder().encode(`Noise_IK_25519_${suite}_SHA256`);
    this.h = name.length <= 32
      ? concatBytes([name, new Uint8Array(32 - name.length)])
      : sha256(name);
    this.ck = this.h;
    this.mixHash(prologue);
  }

  mixHash(data: Uint8Array): void {
    this.h = sha256(this.h, data);
  }

  mixKey(ikm: Uint8Array): void {
    [this.ck, this.k] = hkdf2(this.ck, ikm);
    this.n = 0;
  }

  encryptAndHash(plain: Uint8Array): Uint8Array {
    if (!this.k) {
      this.mixHash(plain);
      return plain;
    }
    const out = new Uint8Array(plain.length + TAG_BYTES);
    sealInto(this.suite, this.k, this.n++, this.h, plain, out, 0);
    this.mixHash(out);
    return out;
  }

  decryptAndHash(data: Uint8Array): Uint8Array {
    if (!this.k) {
      this.mixHash(data);
      return data;
    }
    const plain = open(this.suite, this.k, this.n++, this.h, data, false);
    this.mixHash(data);
    return plain;
  }

  split(initiator: boolean): Transport {
    const [k1, k2] = hkdf2(this.ck, EMPTY);
    return initiator
      ? new Transport(this.suite, k1, k2, this.h)
      : new Transport(this.suite, k2, k1, this.h);
  }
}

/**
 * A stream's transport keys. `seal` and `open` each count in their direction: the n-th
 * item sealed must be the n-th opened, with the same associated data.
 */
export class Transport {
  private sent = 0;
  private received = 0;
  private broken = false;

  constructor(
    readonly suite: Suite,
    private readonly sendKey: Uint8Array,
    private readonly recvKey: Uint8Array,
    /** The handshake hash: the same on both ends of this stream only. */
    readonly handshakeHash: Uint8Array,
  ) {}

  /** Seals `plain` into `out` at `at` (room for plain.length + TAG_BYTES). */
  sealInto(ad: Uint8Array, plain: Uint8Array, out: Uint8Array, at: number): void {
    sealInto(this.suite, this.sendKey, this.sent++, ad, plain, out, at);
  }

  seal(ad: Uint8Array, plain: Uint8Array): Uint8Array {
    const out = new Uint8Array(plain.length + TAG_BYTES);
    this.sealInto(ad, plain, out, 0);
    return out;
  }

  /**
   * Opens the next item; after one failure every later one fails too. The plaintext may be
   * written over `sealed` (and returned as a view of it): pass a copy to keep the ciphertext.
   */
  open(ad: Uint8Array, sealed: Uint8Array): Uint8Array {
    if (this.broken) throw new IntegrityError("the stream already failed a check");
    try {
      return open(this.suite, this.recvKey, this.received++, ad, sealed, true);
    } catch (e) {
      this.broken = true;
      throw e;
    }
  }
}

/** The client's half of a handshake: message 1 sent, waiting for message 2. */
export class Initiator {
  private constructor(
    private readonly sym: Symmetric,
    private readonly s: KeyPair,
    private readonly e: KeyPair,
    readonly message: Uint8Array,
  ) {}

  /**
   * Starts a handshake with the agent whose static key is `rs`; `message` goes in the
   * open. `e` is for test vectors only.
   */
  static start(
    suite: Suite,
    prologue: Uint8Array,
    s: KeyPair,
    rs: Uint8Array,
    payload: Uint8Array = EMPTY,
    e: KeyPair = generateKeyPair(),
  ): Initiator {
    const sym = new Symmetric(suite, prologue);
    sym.mixHash(rs);
    sym.mixHash(e.pub);
    sym.mixKey(dh(e.priv, rs));
    const encS = sym.encryptAndHash(s.pub);
    sym.mixKey(dh(s.priv, rs));
    const encP = sym.encryptAndHash(payload);
    return new Initiator(sym, s, e, concatBytes([e.pub, encS, encP]));
  }

  /** Reads the agent's message 2; throws IntegrityError unless it came from the agent. */
  finish(message: Uint8Array): { payload: Uint8Array; transport: Transport } {
    if (message.length < KEY_BYTES + TAG_BYTES) {
      throw new IntegrityError("handshake reply too short");
    }
    const re = message.subarray(0, KEY_BYTES);
    this.sym.mixHash(re);
    this.sym.mixKey(dh(this.e.priv, re));
    this.sym.mixKey(dh(this.s.priv, re));
    const payload = this.sym.decryptAndHash(message.subarray(KEY_BYTES));
    return { payload, transport: this.sym.split(true) };
  }
}

/** The agent's half: reads message 1, learns who the client is, answers with message 2. */
export class Responder {
  private constructor(
    private readonly sym: Symmetric,
    private readonly re: Uint8Array,
    /** The client's static public key (proven only once its first sealed item opens). */
    readonly remoteStatic: Uint8Array,
    readonly payload: Uint8Array,
  ) {}

  static read(
    suite: Suite,
    prologue: Uint8Array,
    s: KeyPair,
    message: Uint8Array,
  ): Responder {
    if (message.length < KEY_BYTES * 2 + TAG_BYTES * 2) {
      throw new IntegrityError("handshake message too short");
    }
    const sym = new Symmetric(suite, prologue);
    sym.mixHash(s.pub);
    const re = message.subarray(0, KEY_BYTES).slice();
    sym.mixHash(re);
    sym.mixKey(dh(s.priv, re));
    const rs = sym.decryptAndHash(message.subarray(KEY_BYTES, KEY_BYTES * 2 + TAG_BYTES)).slice();
    sym.mixKey(dh(s.priv, rs));
    const payload = sym.decryptAndHash(message.subarray(KEY_BYTES * 2 + TAG_BYTES));
    return new Responder(sym, re, rs, payload);
  }

  /** Message 2 and the transport keys. `e` is for test vectors only. */
  reply(
    payload: Uint8Array = EMPTY,
    e: KeyPair = generateKeyPair(),
  ): { message: Uint8Array; transport: Transport } {
    this.sym.mixHash(e.pub);
    this.sym.mixKey(dh(e.priv, this.re));
    this.sym.mixKey(dh(e.priv, this.remoteStatic));
    const enc = this.sym.encryptAndHash(payload);
    return { message: concatBytes([e.pub, enc]), transport: this.sym.split(false) };
  }
}
