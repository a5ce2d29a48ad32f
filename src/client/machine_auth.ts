/**
 * The client side of machine passwords. The password comes from, in order:
 * `--password`, the stored password (`tether password save MACHINE`),
 * `TETHER_PASSWORD`, a prompt on a terminal; with none of these it is
 * `password_required`. A successful check yields a token (24 h, bound to the
 * machine and our key) cached in the config dir, offered on later opens.
 * Both files are 0600.
 */
import { join } from "node:path";
import { writePrivate } from "../common/files.ts";
import { deriveKey, proofFor } from "../protocol/machine_auth.ts";
import type { Challenge } from "../protocol/messages.ts";
import { passwordRequired, type PromptEnv, requirePrompt } from "./prompt_gate.ts";
import type { StreamAuth } from "./relay_client.ts";
import { loadPrompts } from "./select.ts";

export const TOKENS_FILE = "tokens.json";
export const PASSWORDS_FILE = "passwords.json";

function readJson(path: string): Record<string, unknown> {
  try {
    const o = JSON.parse(Deno.readTextFileSync(path));
    return o && typeof o === "object" ? o : {};
  } catch {
    return {};
  }
}

function update(path: string, fn: (o: Record<string, unknown>) => void): void {
  const o = readJson(path);
  fn(o);
  Deno.mkdirSync(join(path, ".."), { recursive: true, mode: 0o700 });
  writePrivate(path, JSON.stringify(o, null, 2) + "\n");
}

/** Stores (or with `null` removes) the password kept for a machine. */
export function savePassword(configDir: string, machineId: string, password: string | null): void {
  update(join(configDir, PASSWORDS_FILE), (o) => {
    if (password === null) delete o[machineId];
    else o[machineId] = password;
  });
}

export function storedPassword(configDir: string, machineId: string): string | undefined {
  const v = readJson(join(configDir, PASSWORDS_FILE))[machineId];
  return typeof v === "string" ? v : undefined;
}

export interface MachineAuthOptions {
  configDir: string;
  machineId: string;
  machineName: string;
  keyId: string;
  /** From --password. */
  password?: string;
  env: PromptEnv;
}

export function machineAuth(opts: MachineAuthOptions): StreamAuth {
  const tokens = join(opts.configDir, TOKENS_FILE);
  const slot = `${opts.machineId}:${opts.keyId}`;
  const cached = readJson(tokens)[slot] as { token?: string; expires?: number } | undefined;
  const token = cached?.token && (cached.expires ?? 0) > Date.now() ? cached.token : undefined;
  const auth: StreamAuth = {
    token,
    async answer(ch: Challenge): Promise<string> {
      let password = opts.password ?? storedPassword(opts.configDir, opts.machineId) ??
        (Deno.env.get("TETHER_PASSWORD") || undefined);
      if (password === undefined) {
        const refusal = passwordRequired(opts.machineName);
        requirePrompt(opts.env, refusal);
        const { promptPassword } = await loadPrompts();
        password = await promptPassword(`Password for ${opts.machineName}`, {
          env: opts.env,
          refusal,
          machine: opts.machineName,
        });
      }
      const key = await deriveKey(password, ch.salt, ch);
      return proofFor(key, opts.machineId, ch.nonce);
    },
    accepted(newToken: string, expires: number) {
      try {
        auth.token = newToken;
        update(tokens, (o) => {
          o[slot] = { token: newToken, expires };
        });
      } catch { /* a read-only config dir only costs a password next time */ }
    },
    tokenRejected() {
      auth.token = undefined;
      try {
        update(tokens, (o) => {
          delete o[slot];
        });
      } catch { /* ignore */ }
    },
  };
  return auth;
}
