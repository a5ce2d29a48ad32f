/** Minting and checking key secrets; the format itself is in protocol/keys.ts. */
import { Buffer } from "node:buffer";
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

export function newSecret(): string {
  return randomBytes(20).toString("hex");
}

export function newKeyId(): string {
  return randomBytes(6).toString("hex");
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

const DUMMY_HASH = hashSecret("no such key");

/** Constant-time check of a presented secret against a stored hash (or a dummy when absent). */
export function secretMatches(secret: string, storedHash: string | undefined): boolean {
  const a = Buffer.from(hashSecret(secret), "hex");
  const b = Buffer.from(storedHash ?? DUMMY_HASH, "hex");
  return timingSafeEqual(a, b) && storedHash !== undefined;
}
