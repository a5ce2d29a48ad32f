/**
 * The browser terminal a share link opens (`tether share`; docs/PROTOCOL.md, "Share
 * links"): one HTML page at /s, its scripts and styles under /s/, all from this bundle:
 * xterm.js, its fit addon and scrypt-js (machine passwords) from their npm packages and the
 * page's own files, kept gzipped in assets.gen.ts, so an offline relay serves them. The
 * page then speaks the relay's protocol on /v1/share (server.ts).
 *
 * The page allows nothing it does not load from the relay itself: a strict
 * Content-Security-Policy (scripts and connections to its own origin only, no frames,
 * no forms elsewhere). xterm.js writes the terminal's styles at run time, hence
 * 'unsafe-inline' for styles only.
 */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { PROTOCOL_VERSION, VERSION } from "../protocol/version.ts";
import { CLEAR_ERRORS } from "../protocol/e2e_stream.ts";
import type { HttpAnswer } from "./http.ts";
import { PAGE_PATH } from "../protocol/share.ts";
import { PAGE_ASSETS } from "./page/assets.gen.ts";

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

/**
 * The page's settings: the protocol it speaks and the errors the relay may send in the clear
 * about a sealed stream (made here, so they follow the release).
 */
const SETTINGS = `const TETHER = ${
  JSON.stringify({ v: PROTOCOL_VERSION, version: VERSION, clearErrors: [...CLEAR_ERRORS] })
};\n`;
const SETTINGS_PATH = "/s/tether.js";

/** The files as gzip bytes, decoded from the bundle on first use. */
const gzipped = new Map<string, Uint8Array>();

function gz(path: string): Uint8Array {
  let bytes = gzipped.get(path);
  if (!bytes) gzipped.set(path, bytes = Buffer.from(PAGE_ASSETS[path].gz, "base64"));
  return bytes;
}

/**
 * The page, naming each asset with a hash of its content (`/s/xterm.js?v=…`), so a browser
 * may keep them for good (and keep their compiled code): a new release is a new URL.
 */
let html: string | undefined;

/** node:zlib, loaded at the first page request (every command loads this bundle). */
let zlib: typeof import("node:zlib") | undefined;

async function gunzip(bytes: Uint8Array): Promise<Uint8Array> {
  zlib ??= await import("node:zlib");
  return new Uint8Array(zlib.gunzipSync(bytes));
}

async function pageHtml(): Promise<string> {
  html ??= new TextDecoder().decode(await gunzip(gz(PAGE_PATH))).replace(
    /"(\/s\/[\w.-]+)"/g,
    (whole, path: string) => {
      const v = path === SETTINGS_PATH
        ? createHash("sha256").update(SETTINGS).digest("hex").slice(0, 12)
        : PAGE_ASSETS[path]?.hash;
      return v ? `"${path}?v=${v}"` : whole;
    },
  );
  return html;
}

const IMMUTABLE = "public, max-age=31536000, immutable";

/**
 * The page or one of its assets, or undefined for any other path. Assets go gzipped to a
 * browser that takes gzip (all do), unpacked to one that does not.
 */
export async function pageAnswer(
  path: string,
  acceptEncoding = "",
): Promise<HttpAnswer | undefined> {
  if (path === PAGE_PATH || path === `${PAGE_PATH}/`) {
    return {
      status: 200,
      body: await pageHtml(),
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
  if (path === SETTINGS_PATH) {
    return {
      status: 200,
      body: SETTINGS,
      headers: {
        ...COMMON,
        "content-type": "text/javascript; charset=utf-8",
        "cache-control": IMMUTABLE,
      },
    };
  }
  const asset = path.startsWith("/s/") ? PAGE_ASSETS[path] : undefined;
  if (!asset) return undefined;
  const gzip = /\bgzip\b/i.test(acceptEncoding);
  return {
    status: 200,
    body: gzip ? gz(path) : await gunzip(gz(path)),
    headers: {
      ...COMMON,
      "content-type": asset.type,
      "cache-control": IMMUTABLE,
      vary: "accept-encoding",
      ...(gzip ? { "content-encoding": "gzip" } : {}),
    },
  };
}
