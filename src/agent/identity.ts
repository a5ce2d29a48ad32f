/** The machine identity an agent keeps in its state dir (0600), reused across restarts. */
import { join } from "node:path";
import { writePrivate } from "../common/files.ts";

export interface Identity {
  id: string;
  secret: string;
  relay: string;
}

export const IDENTITY_FILE = "identity.json";

export function loadIdentity(stateDir: string): Identity | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(join(stateDir, IDENTITY_FILE));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  const o = JSON.parse(text);
  if (typeof o?.id !== "string" || typeof o?.secret !== "string") {
    throw new Error(`${join(stateDir, IDENTITY_FILE)} is not a tether identity`);
  }
  return { id: o.id, secret: o.secret, relay: String(o.relay ?? "") };
}

export function saveIdentity(stateDir: string, identity: Identity): void {
  Deno.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  writePrivate(join(stateDir, IDENTITY_FILE), JSON.stringify(identity, null, 2) + "\n");
}
