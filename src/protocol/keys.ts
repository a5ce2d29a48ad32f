/**
 * The format of keys presented as `Authorization: Bearer`:
 * `tether_<kind>_<id>_<secret>`. The id is public and finds the row; the
 * secret is hex, at least 160 random bits, and the relay keeps only its hash.
 * Kinds: `client` and `agent` keys belong to a workspace; a `machine` key is
 * the identity an agent received when it enrolled.
 */
export type KeyKind = "client" | "agent" | "machine";
export type KeyRole = "client" | "agent";

export interface ParsedKey {
  kind: KeyKind;
  id: string;
  secret: string;
}

const KEY_RE = /^tether_(client|agent|machine)_([0-9a-f-]{8,64})_([0-9a-f]{40,128})$/;

export function parseKey(key: string): ParsedKey | null {
  const m = KEY_RE.exec(key);
  if (!m) return null;
  return { kind: m[1] as KeyKind, id: m[2], secret: m[3] };
}

export function formatKey(kind: KeyKind, id: string, secret: string): string {
  return `tether_${kind}_${id}_${secret}`;
}
