/**
 * The machine password on the agent: `password.json` in the state dir holds
 * only scrypt(password, salt) and its parameters (0600); `token.key` holds
 * the secret that signs session tokens, replaced whenever the password
 * changes so old tokens stop working. Failed attempts are throttled per
 * client key.
 */
import { Buffer } from "node:buffer";
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { join } from "node:path";
import { writePrivate } from "../common/files.ts";
import { Throttle } from "../common/throttle.ts";
import { deriveKey, hexEqual, proofFor, SCRYPT } from "../protocol/machine_auth.ts";

export const PASSWORD_FILE = "password.json";
export const TOKEN_KEY_FILE = "token.key";
/** A session token is good for 24 hours. */
export const TOKEN_TTL_MS = 24 * 3_600_000;
/** Failures allowed per client key within FAILURE_WINDOW_MS before a cool-down. */
export const MAX_FAILURES = 5;
export const FAILURE_WINDOW_MS = 60_000;
/** First cool-down; it doubles with each further lock-out, up to an hour. */
export const COOLDOWN_MS = 30_000;

interface PasswordFile {
  v: 1;
  algo: "scrypt";
  n: number;
  r: number;
  p: number;
  salt: string;
  key: string;
}

export async function setPassword(stateDir: string, password: string): Promise<void> {
  Deno.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const salt = randomBytes(16).toString("hex");
  const key = await deriveKey(password, salt, SCRYPT);
  const file: PasswordFile = { v: 1, algo: "scrypt", ...SCRYPT, salt, key: key.toString("hex") };
  writePrivate(join(stateDir, TOKEN_KEY_FILE), randomBytes(32).toString("hex") + "\n");
  writePrivate(join(stateDir, PASSWORD_FILE), JSON.stringify(file, null, 2) + "\n");
}

export function clearPassword(stateDir: string): boolean {
  try {
    Deno.removeSync(join(stateDir, PASSWORD_FILE));
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** What the agent checks before running anything for a client. */
export class MachineLock {
  private cached?: { mtime: number; file: PasswordFile | null; tokenKey: Buffer | null };
  private readonly throttle = new Throttle(MAX_FAILURES, FAILURE_WINDOW_MS, COOLDOWN_MS);

  constructor(private readonly stateDir: string, private readonly machineId: () => string) {}

  private load(): { file: PasswordFile | null; tokenKey: Buffer | null } {
    const path = join(this.stateDir, PASSWORD_FILE);
    let mtime = 0;
    try {
      mtime = Deno.statSync(path).mtime?.getTime() ?? 1;
    } catch {
      return { file: null, tokenKey: null };
    }
    if (this.cached?.mtime === mtime) return this.cached;
    const file = JSON.parse(Deno.readTextFileSync(path)) as PasswordFile;
    let tokenKey: Buffer | null = null;
    try {
      tokenKey = Buffer.from(
        Deno.readTextFileSync(join(this.stateDir, TOKEN_KEY_FILE)).trim(),
        "hex",
      );
    } catch { /* no tokens without a key */ }
    this.cached = { mtime, file, tokenKey };
    return this.cached;
  }

  /** Whether this machine has a password. */
  get enabled(): boolean {
    return this.load().file !== null;
  }

  checkToken(token: string | undefined, clientKey: string | undefined): boolean {
    const { tokenKey } = this.load();
    if (!token || !clientKey || !tokenKey) return false;
    const [payload, sig] = token.split(".");
    if (!payload || !sig) return false;
    const want = createHmac("sha256", tokenKey).update(payload).digest();
    const got = Buffer.from(sig, "base64url");
    if (got.length !== want.length || !timingSafeEqual(got, want)) return false;
    try {
      const o = JSON.parse(Buffer.from(payload, "base64url").toString());
      return o.m === this.machineId() && o.k === clientKey && typeof o.exp === "number" &&
        o.exp > Date.now();
    } catch {
      return false;
    }
  }

  issueToken(clientKey: string): { token: string; expires: number } {
    const { tokenKey } = this.load();
    const expires = Date.now() + TOKEN_TTL_MS;
    const payload = Buffer.from(JSON.stringify({ m: this.machineId(), k: clientKey, exp: expires }))
      .toString("base64url");
    const sig = createHmac("sha256", tokenKey ?? randomBytes(32)).update(payload).digest(
      "base64url",
    );
    return { token: `${payload}.${sig}`, expires };
  }

  challenge(): { salt: string; n: number; r: number; p: number; nonce: string } {
    const { file } = this.load();
    if (!file) throw new Error("no password set");
    return {
      salt: file.salt,
      n: file.n,
      r: file.r,
      p: file.p,
      nonce: randomBytes(16).toString("hex"),
    };
  }

  verify(nonce: string, proof: string): boolean {
    const { file } = this.load();
    if (!file) return true;
    return hexEqual(proofFor(Buffer.from(file.key, "hex"), this.machineId(), nonce), proof);
  }

  /** Seconds to wait when this client key is locked out, else 0. */
  lockedFor(clientKey: string): number {
    return this.throttle.blockedFor(clientKey);
  }

  recordFailure(clientKey: string): void {
    this.throttle.fail(clientKey);
  }

  recordSuccess(clientKey: string): void {
    this.throttle.succeed(clientKey);
  }
}
