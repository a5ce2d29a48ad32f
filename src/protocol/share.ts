/** Where a share link's page lives on a relay, and how a link is made (`tether share`). */

import { MAX_HOLD_MS } from "./messages.ts";

/** A link's lifetime (`--ttl`): by default, and at most (the longest a session is held). */
export const SHARE_DEFAULT_TTL_MS = 3_600_000;
export const SHARE_MAX_TTL_MS = MAX_HOLD_MS;
/** Most pages one link may open (`--uses`). */
export const SHARE_MAX_USES = 1000;

/** Checks a link's lifetime and uses; a usage error says which is wrong. */
export function shareLimitsProblem(ttlMs: number, uses: number): string | undefined {
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1000 || ttlMs > SHARE_MAX_TTL_MS) {
    return "--ttl must be between 1s and 7d";
  }
  if (!Number.isSafeInteger(uses) || uses < 1 || uses > SHARE_MAX_USES) {
    return `--uses must be between 1 and ${SHARE_MAX_USES}`;
  }
  return undefined;
}

/**
 * A share link as the relay keeps and lists it (`share_list`): one workspace, one machine,
 * one session; the token's secret is kept only as a hash. It opens at most `uses_left`
 * more times, until `expires_at`, unless revoked.
 */
export interface ShareView {
  /** Public: the token is `ID.SECRET`. */
  id: string;
  workspace: string;
  machine_id: string;
  session: string;
  read_only: boolean;
  /** The key that made it. */
  created_by: string;
  created_at: number;
  expires_at: number;
  uses_left: number;
  revoked_at: number | null;
}

/** The key id a share link's pages act as (`share:ID`: audit rows, the agent's participants). */
export const SHARE_KEY_PREFIX = "share:";

/** The WebSocket endpoint of share pages. */
export const SHARE_PATH = "/v1/share";
/** Where the page is; a link is `<relay>/s#TOKEN`. */
export const PAGE_PATH = "/s";

/**
 * The link to a share page of the relay at `relay` (its ws:// or wss:// URL): the token is
 * in the fragment, which a browser never sends in a request.
 */
export function shareLink(relay: string, token: string): string {
  const u = new URL(relay);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = PAGE_PATH;
  u.search = "";
  u.hash = token;
  return u.toString();
}
