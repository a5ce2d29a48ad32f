/**
 * The one machine resolver (README "Naming machines"). The first rule that
 * matches decides: exact id; exact name; exact hostname; the part after the
 * last `:` of a name; a unique prefix (≥ 4 characters) of id, name or
 * hostname. A rule matching several machines is `ambiguous_machine`.
 */
import { type Candidate, TetherError } from "../common/errors.ts";

export interface Resolvable {
  id: string;
  name: string;
  hostname: string;
  online: boolean;
}

export const MIN_PREFIX = 4;

const RULES: { name: string; match: (m: Resolvable, q: string) => boolean }[] = [
  { name: "id", match: (m, q) => m.id === q },
  { name: "name", match: (m, q) => m.name === q },
  { name: "hostname", match: (m, q) => m.hostname === q },
  {
    name: "job key",
    match: (m, q) => m.name.includes(":") && m.name.slice(m.name.lastIndexOf(":") + 1) === q,
  },
  {
    name: "prefix",
    match: (m, q) =>
      q.length >= MIN_PREFIX &&
      (m.id.startsWith(q) || m.name.startsWith(q) || m.hostname.startsWith(q)),
  },
];

export function candidates(ms: Resolvable[]): Candidate[] {
  return ms.map((m) => ({ id: m.id, name: m.name, hostname: m.hostname, online: m.online }));
}

/**
 * Resolves `query` among `machines`. `onlineFlag`: the command takes `--online`, so an
 * ambiguity between online and offline machines suggests it.
 */
export function resolveMachine<T extends Resolvable>(
  machines: T[],
  query: string,
  opts: { onlineFlag?: boolean } = {},
): T {
  for (const rule of RULES) {
    const hits = machines.filter((m) => rule.match(m, query));
    if (hits.length === 1) return hits[0];
    if (hits.length > 1) {
      const online = hits.filter((m) => m.online).length;
      const mixed = online > 0 && online < hits.length;
      const ids = `use a full id: ${hits.map((m) => `${m.name} (${m.id.slice(0, 8)})`).join(", ")}`;
      throw new TetherError(
        "ambiguous_machine",
        `'${query}' matches ${hits.length} machines by ${rule.name}` +
          (mixed ? ` (${online} online, ${hits.length - online} offline)` : ""),
        {
          hint: mixed && opts.onlineFlag
            ? `add --online to choose among online ones, or ${ids}`
            : ids,
          candidates: candidates(hits),
        },
      );
    }
  }
  throw new TetherError("machine_not_found", `no machine matches '${query}'`, {
    hint: query.length < MIN_PREFIX
      ? `prefixes need at least ${MIN_PREFIX} characters; list machines with \`tether machines\``
      : "list machines with `tether machines`",
  });
}
