/**
 * Machine passwords, as both ends compute them. The agent stores only
 * key = scrypt(password, salt); it never receives the password itself. On a
 * challenge the client derives the same key and answers with
 * HMAC-SHA256(key, "tether-auth-v1|<machine id>|<nonce>"), so the relay in
 * between never sees anything it could replay or crack offline cheaply.
 */
import { Buffer } from "node:buffer";
import { createHmac, scrypt, timingSafeEqual } from "node:crypto";

/** scrypt cost: N=2^15, r=8, p=1 — about 0.1 s and 32 MiB per derivation. */
export const SCRYPT = { n: 1 << 15, r: 8, p: 1 } as const;
export const KEY_BYTES = 32;

export function deriveKey(
  password: string,
  saltHex: string,
  params: { n: number; r: number; p: number } = SCRYPT,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(
      password.normalize("NFC"),
      Buffer.from(saltHex, "hex"),
      KEY_BYTES,
      { N: params.n, r: params.r, p: params.p, maxmem: 256 * params.n * params.r + 1024 * 1024 },
      (err, key) => (err ? reject(err) : resolve(key)),
    );
  });
}

export function proofFor(key: Uint8Array, machineId: string, nonce: string): string {
  return createHmac("sha256", key).update(`tether-auth-v1|${machineId}|${nonce}`).digest("hex");
}

/** Constant-time comparison of two hex strings. */
export function hexEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}
