/**
 * The browser terminal a share link opens (`tether share`, docs/SHARE.md): one HTML page
 * at /s, its script and styles under /s/, all from this bundle — xterm.js and its fit
 * addon and scrypt-js (machine passwords) come from their npm packages, imported as text,
 * so an offline relay serves them. The page then speaks the relay's protocol on
 * /v1/share (server.ts).
 *
 * The page allows nothing it does not load from the relay itself: a strict
 * Content-Security-Policy (scripts and connections to its own origin only, no frames,
 * no forms elsewhere). xterm.js writes the terminal's styles at run time, hence
 * 'unsafe-inline' for styles only.
 */
import xtermJs from "@xterm/xterm/lib/xterm.js" with { type: "text" };
import xtermCss from "@xterm/xterm/css/xterm.css" with { type: "text" };
import fitJs from "@xterm/addon-fit/lib/addon-fit.js" with { type: "text" };
import scryptJs from "scrypt-js/scrypt.js" with { type: "text" };
import pageHtml from "./page/index.html" with { type: "text" };
import pageJs from "./page/page.js" with { type: "text" };
import pageCss from "./page/page.css" with { type: "text" };
import { createHash } from "node:crypto";
import { PROTOCOL_VERSION, VERSION } from "../protocol/version.ts";
import type { HttpAnswer } from "./http.ts";
import { PAGE_PATH } from "../protocol/share.ts";

const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

const COMMON = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
};

const JS = "text/javascript; charset=utf-8";
const CSS = "text/css; charset=utf-8";

const ASSETS: Record<string, { type: string; body: string }> = {
  "/s/xterm.js": { type: JS, body: xtermJs },
  "/s/xterm.css": { type: CSS, body: xtermCss },
  "/s/addon-fit.js": { type: JS, body: fitJs },
  "/s/scrypt.js": { type: JS, body: scryptJs },
  "/s/page.js": {
    type: JS,
    body: `const TETHER = ${JSON.stringify({ v: PROTOCOL_VERSION, version: VERSION })};\n${pageJs}`,
  },
  "/s/page.css": { type: CSS, body: pageCss },
};

/**
 * The page names each asset with a hash of its content (`/s/xterm.js?v=…`), so a browser
 * may keep them for good (and keep their compiled code): a new release is a new URL.
 */
const HTML = pageHtml.replace(/"(\/s\/[\w.-]+)"/g, (whole, path: string) => {
  const asset = ASSETS[path];
  if (!asset) return whole;
  const v = createHash("sha256").update(asset.body).digest("hex").slice(0, 12);
  return `"${path}?v=${v}"`;
});

/** The page or one of its assets, or undefined for any other path. */
export function pageAnswer(path: string): HttpAnswer | undefined {
  if (path === PAGE_PATH || path === `${PAGE_PATH}/`) {
    return {
      status: 200,
      body: HTML,
      headers: {
        ...COMMON,
        "content-type": "text/html; charset=utf-8",
        "content-security-policy": CSP,
        "x-frame-options": "DENY",
        // The page holds nothing secret (the token is in the fragment), but a stale one
        // could speak an older protocol.
        "cache-control": "no-store",
      },
    };
  }
  const asset = ASSETS[path];
  if (!asset) return undefined;
  return {
    status: 200,
    body: asset.body,
    headers: {
      ...COMMON,
      "content-type": asset.type,
      "cache-control": "public, max-age=31536000, immutable",
    },
  };
}
