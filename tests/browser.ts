/**
 * Chromium for the share page's tests (issue 17): Debian's `chromium`, driven by
 * playwright-core through `executablePath` (nothing is downloaded at run time), and the
 * page's own view of itself (`globalThis.tetherShare`, src/relay/page/page.js).
 */
import { type Browser, chromium, type Page } from "playwright-core";
import { eventually, requirement } from "./helpers.ts";

const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/** The browser to use: env TETHER_CHROMIUM, else the first of the usual paths. */
export const CHROMIUM = Deno.env.get("TETHER_CHROMIUM") ??
  CANDIDATES.find((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  });

export const needChromium = requirement(
  CHROMIUM ? undefined : "browser tests need Chromium (Debian package `chromium`)",
);

export function launch(args: string[] = []): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    // Root in a container: Chromium's sandbox cannot start there.
    args: ["--no-sandbox", ...args],
  });
}

/** What the page says of itself. */
export interface PageView {
  state: string;
  offset?: number;
  error?: { code: string; message: string };
  text: string;
  people: string;
  size: { cols: number; rows: number };
}

export function view(page: Page): Promise<PageView> {
  return page.evaluate(() => {
    // deno-lint-ignore no-explicit-any
    const v = (globalThis as any).tetherShare;
    return {
      state: v.state,
      offset: v.offset(),
      error: v.error,
      text: v.text(),
      // deno-lint-ignore no-explicit-any
      people: (globalThis as any).document.getElementById("people")?.textContent ?? "",
      size: v.size(),
    };
  });
}

/** Waits until the page's view satisfies `pred`; returns it. */
export function pageUntil(
  page: Page,
  pred: (v: PageView) => boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<PageView> {
  return eventually(
    async () => {
      const v = await view(page);
      return pred(v) ? v : undefined;
    },
    what,
    timeoutMs,
  );
}

/** Types into the page's terminal, as a person would. */
export async function typeInto(page: Page, text: string): Promise<void> {
  await page.locator(".xterm-helper-textarea").focus();
  await page.keyboard.type(text);
}
