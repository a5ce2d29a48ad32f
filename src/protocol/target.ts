/** The `target` of a `tcp` stream's open: what the agent connects to, as seen from its machine. */

/** HOST:PORT or [V6]:PORT; undefined when malformed. */
export function parseTarget(target: string): { hostname: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(target);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { hostname: m[1] ?? m[2], port };
}
