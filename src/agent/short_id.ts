/** Ids of sessions and execs: 12 hex digits (48 random bits), found by id or unique prefix. */

export function newShortId(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 12);
}

/** The entry whose id is `id`, else the only one whose id starts with it. */
export function findByPrefix<T extends { id: string }>(
  items: Map<string, T>,
  id: string,
): T | undefined {
  const exact = items.get(id);
  if (exact) return exact;
  const hits = [...items.values()].filter((x) => x.id.startsWith(id));
  return hits.length === 1 ? hits[0] : undefined;
}
