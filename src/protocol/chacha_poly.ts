/**
 * ChaCha20-Poly1305 (RFC 8439) in plain TypeScript, for small messages: a keystroke, a line
 * of output, a sealed control message. node:crypto's AEAD costs ~7 µs a call whatever the
 * size (a new Cipheriv object, four calls into the runtime), which is most of what sealing
 * adds to an `exec --stream` turn; this costs a fraction of that for a few hundred bytes, and
 * node:crypto stays faster for bulk (e2e.ts picks by size). Checked against RFC 8439's test
 * vectors and against node:crypto on random input (tests/unit/chacha_poly_test.ts).
 */

const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574];

/** A ChaCha20 key and nonce as words, and one 64-byte block of state to reuse. */
class ChaCha {
  private readonly init = new Uint32Array(16);
  private readonly x = new Uint32Array(16);
  readonly block = new Uint8Array(64);
  private readonly blockWords = new DataView(this.block.buffer);

  /** Takes a key and nonce (the one state is reused: typed arrays cost more than a block). */
  setKey(key: Uint8Array, nonce: Uint8Array): this {
    const w = (b: Uint8Array, i: number) =>
      (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
    this.init.set(SIGMA, 0);
    for (let i = 0; i < 8; i++) this.init[4 + i] = w(key, i * 4);
    this.init[12] = 0;
    for (let i = 0; i < 3; i++) this.init[13 + i] = w(nonce, i * 4);
    return this;
  }

  /** Fills `block` with the keystream block `counter`. */
  run(counter: number): void {
    const s = this.init;
    s[12] = counter;
    let x0 = s[0], x1 = s[1], x2 = s[2], x3 = s[3], x4 = s[4], x5 = s[5], x6 = s[6], x7 = s[7];
    let x8 = s[8], x9 = s[9], x10 = s[10], x11 = s[11], x12 = s[12], x13 = s[13], x14 = s[14];
    let x15 = s[15];
    for (let i = 0; i < 10; i++) {
      // Columns.
      x0 = (x0 + x4) | 0, x12 ^= x0, x12 = (x12 << 16) | (x12 >>> 16);
      x8 = (x8 + x12) | 0, x4 ^= x8, x4 = (x4 << 12) | (x4 >>> 20);
      x0 = (x0 + x4) | 0, x12 ^= x0, x12 = (x12 << 8) | (x12 >>> 24);
      x8 = (x8 + x12) | 0, x4 ^= x8, x4 = (x4 << 7) | (x4 >>> 25);
      x1 = (x1 + x5) | 0, x13 ^= x1, x13 = (x13 << 16) | (x13 >>> 16);
      x9 = (x9 + x13) | 0, x5 ^= x9, x5 = (x5 << 12) | (x5 >>> 20);
      x1 = (x1 + x5) | 0, x13 ^= x1, x13 = (x13 << 8) | (x13 >>> 24);
      x9 = (x9 + x13) | 0, x5 ^= x9, x5 = (x5 << 7) | (x5 >>> 25);
      x2 = (x2 + x6) | 0, x14 ^= x2, x14 = (x14 << 16) | (x14 >>> 16);
      x10 = (x10 + x14) | 0, x6 ^= x10, x6 = (x6 << 12) | (x6 >>> 20);
      x2 = (x2 + x6) | 0, x14 ^= x2, x14 = (x14 << 8) | (x14 >>> 24);
      x10 = (x10 + x14) | 0, x6 ^= x10, x6 = (x6 << 7) | (x6 >>> 25);
      x3 = (x3 + x7) | 0, x15 ^= x3, x15 = (x15 << 16) | (x15 >>> 16);
      x11 = (x11 + x15) | 0, x7 ^= x11, x7 = (x7 << 12) | (x7 >>> 20);
      x3 = (x3 + x7) | 0, x15 ^= x3, x15 = (x15 << 8) | (x15 >>> 24);
      x11 = (x11 + x15) | 0, x7 ^= x11, x7 = (x7 << 7) | (x7 >>> 25);
      // Diagonals.
      x0 = (x0 + x5) | 0, x15 ^= x0, x15 = (x15 << 16) | (x15 >>> 16);
      x10 = (x10 + x15) | 0, x5 ^= x10, x5 = (x5 << 12) | (x5 >>> 20);
      x0 = (x0 + x5) | 0, x15 ^= x0, x15 = (x15 << 8) | (x15 >>> 24);
      x10 = (x10 + x15) | 0, x5 ^= x10, x5 = (x5 << 7) | (x5 >>> 25);
      x1 = (x1 + x6) | 0, x12 ^= x1, x12 = (x12 << 16) | (x12 >>> 16);
      x11 = (x11 + x12) | 0, x6 ^= x11, x6 = (x6 << 12) | (x6 >>> 20);
      x1 = (x1 + x6) | 0, x12 ^= x1, x12 = (x12 << 8) | (x12 >>> 24);
      x11 = (x11 + x12) | 0, x6 ^= x11, x6 = (x6 << 7) | (x6 >>> 25);
      x2 = (x2 + x7) | 0, x13 ^= x2, x13 = (x13 << 16) | (x13 >>> 16);
      x8 = (x8 + x13) | 0, x7 ^= x8, x7 = (x7 << 12) | (x7 >>> 20);
      x2 = (x2 + x7) | 0, x13 ^= x2, x13 = (x13 << 8) | (x13 >>> 24);
      x8 = (x8 + x13) | 0, x7 ^= x8, x7 = (x7 << 7) | (x7 >>> 25);
      x3 = (x3 + x4) | 0, x14 ^= x3, x14 = (x14 << 16) | (x14 >>> 16);
      x9 = (x9 + x14) | 0, x4 ^= x9, x4 = (x4 << 12) | (x4 >>> 20);
      x3 = (x3 + x4) | 0, x14 ^= x3, x14 = (x14 << 8) | (x14 >>> 24);
      x9 = (x9 + x14) | 0, x4 ^= x9, x4 = (x4 << 7) | (x4 >>> 25);
    }
    const x = this.x;
    x[0] = x0, x[1] = x1, x[2] = x2, x[3] = x3, x[4] = x4, x[5] = x5, x[6] = x6, x[7] = x7;
    x[8] = x8, x[9] = x9, x[10] = x10, x[11] = x11, x[12] = x12, x[13] = x13, x[14] = x14;
    x[15] = x15;
    const out = this.blockWords;
    for (let i = 0; i < 16; i++) out.setUint32(i * 4, (x[i] + s[i]) >>> 0, true);
  }

  /** XORs the keystream from block `counter` on into `data`, writing `out` (may be the same). */
  xor(counter: number, data: Uint8Array, out: Uint8Array, outAt: number): void {
    const b = this.block;
    for (let at = 0; at < data.length; at += 64, counter++) {
      this.run(counter);
      const n = Math.min(64, data.length - at);
      for (let i = 0; i < n; i++) out[outAt + at + i] = data[at + i] ^ b[i];
    }
  }
}

/**
 * Poly1305 with ten 13-bit limbs: every product (< 2^30) and every sum of ten (< 2^34) is
 * an exact double.
 */
class Poly1305 {
  private readonly r = new Float64Array(10);
  private readonly h = new Float64Array(10);
  private readonly d = new Float64Array(10);
  private readonly t = new Float64Array(10);
  private readonly pad = new Uint16Array(8);
  private readonly buf = new Uint8Array(16);
  private fill = 0;

  private readonly clamped = new Uint8Array(16);

  /** Starts a MAC with a one-time key (the one state is reused). */
  setKey(key: Uint8Array): this {
    // r is clamped as RFC 8439 says, on its bytes.
    const r = this.clamped;
    r.set(key.subarray(0, 16));
    r[3] &= 15, r[7] &= 15, r[11] &= 15, r[15] &= 15;
    r[4] &= 252, r[8] &= 252, r[12] &= 252;
    limbs(r, 0, 0, this.r);
    for (let i = 0; i < 8; i++) this.pad[i] = key[16 + i * 2] | (key[17 + i * 2] << 8);
    this.h.fill(0);
    this.fill = 0;
    return this;
  }

  /** h = (h + block) * r mod 2^130 - 5; `hibit` is 1 for a full block, 0 for the last. */
  private block(m: Uint8Array, at: number, hibit: number): void {
    const h = this.h, r = this.r, d = this.d, t = this.t;
    limbs(m, at, hibit, t);
    for (let i = 0; i < 10; i++) h[i] += t[i];
    for (let i = 0; i < 10; i++) {
      let di = 0;
      for (let j = 0; j <= i; j++) di += h[j] * r[i - j];
      for (let j = i + 1; j < 10; j++) di += h[j] * 5 * r[i + 10 - j];
      d[i] = di;
    }
    let c = 0;
    for (let i = 0; i < 10; i++) {
      const v = d[i] + c;
      c = Math.floor(v / 8192);
      d[i] = v - c * 8192;
    }
    // What is above 2^130 comes back times 5 (2^130 = 5 mod p).
    const v = d[0] + c * 5;
    c = Math.floor(v / 8192);
    d[0] = v - c * 8192;
    d[1] += c;
    h.set(d);
  }

  update(m: Uint8Array): void {
    let at = 0;
    if (this.fill) {
      const n = Math.min(16 - this.fill, m.length);
      this.buf.set(m.subarray(0, n), this.fill);
      this.fill += n;
      at = n;
      if (this.fill < 16) return;
      this.block(this.buf, 0, 1);
      this.fill = 0;
    }
    for (; at + 16 <= m.length; at += 16) this.block(m, at, 1);
    if (at < m.length) {
      this.buf.set(m.subarray(at), 0);
      this.fill = m.length - at;
    }
  }

  /** Zero bytes up to the next 16-byte boundary (the AEAD pads each part so). */
  padTo16(): void {
    if (!this.fill) return;
    this.buf.fill(0, this.fill);
    this.block(this.buf, 0, 1);
    this.fill = 0;
  }

  /** The tag (h mod p, plus the pad, mod 2^128), into `out` at `at`. */
  private readonly fh = new Uint32Array(10);
  private readonly fg = new Uint32Array(10);
  private readonly w = new Uint32Array(8);

  finish(out: Uint8Array, at: number): void {
    const h = this.fh;
    for (let i = 0; i < 10; i++) h[i] = this.h[i];
    // Carry fully, folding what is above 2^130 back in, twice.
    for (let round = 0; round < 2; round++) {
      let c = 0;
      for (let i = 0; i < 10; i++) {
        const v = h[i] + c;
        c = v >>> 13;
        h[i] = v & 0x1fff;
      }
      h[0] += c * 5;
    }
    let c = h[0] >>> 13;
    h[0] &= 0x1fff;
    h[1] += c;
    // g = h + 5 - 2^130: when that is not negative, it is h mod p.
    const g = this.fg;
    c = 5;
    for (let i = 0; i < 10; i++) {
      const v = h[i] + c;
      c = v >>> 13;
      g[i] = v & 0x1fff;
    }
    const x = c ? g : h;
    const w = this.w;
    w[0] = x[0] | (x[1] << 13);
    w[1] = (x[1] >>> 3) | (x[2] << 10);
    w[2] = (x[2] >>> 6) | (x[3] << 7);
    w[3] = (x[3] >>> 9) | (x[4] << 4);
    w[4] = (x[4] >>> 12) | (x[5] << 1) | (x[6] << 14);
    w[5] = (x[6] >>> 2) | (x[7] << 11);
    w[6] = (x[7] >>> 5) | (x[8] << 8);
    w[7] = (x[8] >>> 8) | (x[9] << 5);
    let s = 0;
    for (let i = 0; i < 8; i++) {
      s = (w[i] & 0xffff) + this.pad[i] + (s >>> 16);
      out[at + i * 2] = s & 0xff;
      out[at + i * 2 + 1] = (s >>> 8) & 0xff;
    }
  }
}

/** 16 little-endian bytes at `at` (and bit 128 if `hibit`) as ten 13-bit limbs. */
function limbs(m: Uint8Array, at: number, hibit: number, out: Float64Array): void {
  const k = (i: number) => m[at + i] | (m[at + i + 1] << 8);
  const t0 = k(0), t1 = k(2), t2 = k(4), t3 = k(6), t4 = k(8), t5 = k(10), t6 = k(12);
  const t7 = k(14);
  out[0] = t0 & 0x1fff;
  out[1] = ((t0 >>> 13) | (t1 << 3)) & 0x1fff;
  out[2] = ((t1 >>> 10) | (t2 << 6)) & 0x1fff;
  out[3] = ((t2 >>> 7) | (t3 << 9)) & 0x1fff;
  out[4] = ((t3 >>> 4) | (t4 << 12)) & 0x1fff;
  out[5] = (t4 >>> 1) & 0x1fff;
  out[6] = ((t4 >>> 14) | (t5 << 2)) & 0x1fff;
  out[7] = ((t5 >>> 11) | (t6 << 5)) & 0x1fff;
  out[8] = ((t6 >>> 8) | (t7 << 8)) & 0x1fff;
  out[9] = (t7 >>> 5) | (hibit << 11);
}

// One state of each, reused: everything here is synchronous.
const CHACHA = new ChaCha();
const POLY = new Poly1305();
const LENGTHS = new Uint8Array(16);
const LENGTHS_VIEW = new DataView(LENGTHS.buffer);
const TAG = new Uint8Array(16);

function mac(chacha: ChaCha, ad: Uint8Array, ct: Uint8Array, out: Uint8Array, at: number): void {
  chacha.run(0);
  const p = POLY.setKey(chacha.block);
  p.update(ad);
  p.padTo16();
  p.update(ct);
  p.padTo16();
  LENGTHS_VIEW.setUint32(0, ad.length, true);
  LENGTHS_VIEW.setUint32(8, ct.length, true);
  p.update(LENGTHS);
  p.finish(out, at);
}

/** Seals `plain` into `out` at `at`: ciphertext, then the 16-byte tag. */
export function chachaSealInto(
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  plain: Uint8Array,
  out: Uint8Array,
  at: number,
): void {
  const c = CHACHA.setKey(key, nonce);
  c.xor(1, plain, out, at);
  mac(c, ad, out.subarray(at, at + plain.length), out, at + plain.length);
}

/** Opens `sealed` (ciphertext and tag); undefined when the tag does not match. */
export function chachaOpen(
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  sealed: Uint8Array,
): Uint8Array | undefined {
  const n = sealed.length - 16;
  if (n < 0) return undefined;
  const c = CHACHA.setKey(key, nonce);
  const ct = sealed.subarray(0, n);
  mac(c, ad, ct, TAG, 0);
  let diff = 0;
  for (let i = 0; i < 16; i++) diff |= TAG[i] ^ sealed[n + i];
  if (diff !== 0) return undefined;
  const plain = new Uint8Array(n);
  c.xor(1, ct, plain, 0);
  return plain;
}
