/** Default locations, following the XDG base directory conventions. */
import { join } from "node:path";

function home(): string {
  const h = Deno.env.get("HOME");
  if (!h) throw new Error("HOME is not set; pass the directory explicitly");
  return h;
}

/** `$TETHER_CONFIG_DIR`, else `$XDG_CONFIG_HOME/tether`, else `~/.config/tether`. */
export function defaultConfigDir(): string {
  const env = Deno.env.get("TETHER_CONFIG_DIR");
  if (env) return env;
  const xdg = Deno.env.get("XDG_CONFIG_HOME");
  return xdg ? join(xdg, "tether") : join(home(), ".config", "tether");
}

/** `$XDG_DATA_HOME/tether`, else `~/.local/share/tether`: where `tether up` keeps its relay and agent. */
export function defaultDataDir(): string {
  const xdg = Deno.env.get("XDG_DATA_HOME");
  return xdg ? join(xdg, "tether") : join(home(), ".local", "share", "tether");
}

/** `$XDG_STATE_HOME/tether/agent`, else `~/.local/state/tether/agent`. */
export function defaultAgentStateDir(): string {
  const xdg = Deno.env.get("XDG_STATE_HOME");
  return xdg ? join(xdg, "tether", "agent") : join(home(), ".local", "state", "tether", "agent");
}
