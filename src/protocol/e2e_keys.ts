/**
 * End-to-end keys at rest: an agent's and a client's key pair (0600 files, made at first
 * use), client public keys as text lines (`tether whoami`, `agent run --authorized-keys`).
 */
import { dirname } from "node:path";
import { writePrivate } from "../common/files.ts";
import { TetherError } from "../common/errors.ts";
import {
  decodeKey,
  encodeKey,
  fingerprint,
  fromBase64,
  generateKeyPair,
  KEY_TYPE,
  type KeyPair,
  keyPairFromPrivate,
  toBase64,
} from "./e2e.ts";

/** Reads the key pair kept at `path`, or makes one and keeps it there (0600). */
export function loadOrCreateKeyPair(path: string): KeyPair {
  let text: string | undefined;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (text === undefined) {
    const kp = generateKeyPair();
    Deno.mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writePrivate(
      path,
      JSON.stringify({ type: KEY_TYPE, private: toBase64(kp.priv), public: toBase64(kp.pub) }) +
        "\n",
    );
    return kp;
  }
  // A damaged key file is said, never replaced: a new key would be a new identity.
  try {
    const o = JSON.parse(text);
    const priv = fromBase64(String(o.private));
    if (o.type !== KEY_TYPE || priv.length !== 32) throw new Error();
    return keyPairFromPrivate(priv);
  } catch {
    throw new TetherError("not_configured", `${path} is not a tether key file`, {
      hint: "restore it from a backup, or remove it to make a new key (clients that pinned " +
        "the old one will refuse the new one until told to trust it)",
    });
  }
}

/** `tether-x25519 BASE64 COMMENT`: one public key as a line. */
export function keyLine(pub: Uint8Array, comment = ""): string {
  return `${KEY_TYPE} ${encodeKey(pub)}${comment ? " " + comment : ""}`;
}

/** One authorized key: its fingerprint and the comment of its line. */
export interface AuthorizedKey {
  fingerprint: string;
  comment: string;
}

/**
 * Parses an authorized keys file: a public key per line (`tether-x25519 BASE64 comment`,
 * or BASE64 alone), `#` comments and blank lines. A line that is not a key is an error
 * naming it: a typo must not silently shut someone out (or in).
 */
export function parseAuthorizedKeys(text: string, path: string): Map<string, AuthorizedKey> {
  const out = new Map<string, AuthorizedKey>();
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const words = line.split(/\s+/);
    if (words[0] === KEY_TYPE) words.shift();
    const key = words[0] ? decodeKey(words[0]) : undefined;
    if (!key) {
      throw new TetherError("usage", `${path}:${i + 1}: not a tether public key`, {
        hint: "each line is what `tether whoami` prints: tether-x25519 BASE64 [comment]",
      });
    }
    const fp = fingerprint(key);
    out.set(fp, { fingerprint: fp, comment: words.slice(1).join(" ") });
  });
  return out;
}
