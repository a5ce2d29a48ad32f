/**
 * Issue 17: a share link's browser terminal, in a real Chromium (Debian's `chromium`,
 * driven by playwright-core), through a real relay and agent: typing, resize, a network
 * cut while output flows, read-only links, and every refusal shown on the page.
 */
import assert from "node:assert/strict";
import type { Browser, Page } from "playwright-core";
import { launch, needChromium, pageUntil, typeInto, view } from "./browser.ts";
import { join } from "node:path";
import { baseEnv, eventually, type Proc, run, World } from "./helpers.ts";
import { TcpProxy } from "./proxy.ts";
import { contains, WsTamperProxy } from "./ws_tamper.ts";

/** `tether share ARGS --json`: the link and its id. */
async function share(
  w: World,
  args: string[],
): Promise<{ link: string; id: string; session: string; read_only: boolean }> {
  const r = await w.tether(["share", ...args, "--json"]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  return JSON.parse(r.stdout);
}

/** Opens `link` in a new page and waits until it is attached. */
async function openPage(browser: Browser, link: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 900, height: 500 } });
  await page.goto(link);
  await pageUntil(page, (v) => v.state === "connected", "the page attached");
  return page;
}

/** A CLI client in the same session (stdin a pipe: `connect -t`). */
function cliClient(w: World, session: string, extra: string[] = []): Proc {
  return w.spawn(["connect", "box", "--session", session, "-t", ...extra], { stdin: true });
}

const browserTest = (name: string, fn: (w: World, browser: Browser) => Promise<void>) =>
  Deno.test({
    name,
    ignore: needChromium.ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      needChromium.check();
      await using w = await World.create();
      await w.startAgent("box");
      const browser = await launch();
      try {
        await fn(w, browser);
      } finally {
        await browser.close();
      }
    },
  });

browserTest(
  "share: type in the browser, the CLI in the same session sees it; participants listed",
  async (w, browser) => {
    const s = await share(w, ["box", "--new"]);
    assert.match(
      s.link,
      /^http:\/\/127\.0\.0\.1:\d+\/s#[0-9a-f]{12}\.[0-9a-f]{40}\.[\w-]{43}\.[\w-]{43}$/,
    );
    const page = await openPage(browser, s.link);
    const cli = cliClient(w, s.session);
    await cli.waitFor(/attached/);
    await typeInto(page, "echo hello-from-$((6*7))-browser\n");
    await pageUntil(page, (v) => v.text.includes("hello-from-42-browser"), "the echo in the page");
    await cli.waitFor(/hello-from-42-browser/, "stdout");
    const v = await pageUntil(page, (v) => /2 here/.test(v.people), "two participants listed");
    assert.match(v.people, /you/);
    assert.match(v.people, /key [0-9a-f]+/);
  },
);

browserTest("share: the session takes the window's size, and follows it", async (w, browser) => {
  const s = await share(w, ["box", "--new"]);
  const page = await openPage(browser, s.link);
  const sizeSeen = async (marker: string) => {
    const { size } = await view(page);
    await typeInto(page, `echo ${marker}-$(stty size | tr ' ' x)\n`);
    await pageUntil(
      page,
      (v) => v.text.includes(`${marker}-${size.rows}x${size.cols}`),
      `stty size ${size.rows} ${size.cols} (${marker})`,
    );
    return size;
  };
  const first = await sizeSeen("first");
  await page.setViewportSize({ width: 600, height: 300 });
  await pageUntil(page, (v) => v.size.cols < first.cols && v.size.rows < first.rows, "a refit");
  const second = await sizeSeen("second");
  assert.ok(second.cols < first.cols && second.rows < first.rows);
});

browserTest(
  "share: the network cut while output flows; the page reconnects with nothing lost or repeated",
  async (w, browser) => {
    const s = await share(w, ["box", "--new"]);
    // The page reaches the relay through a proxy that goes silent, as a real network does
    // (nothing crosses, nothing closes): Chromium's offline mode (CDP) refuses new
    // connections but leaves an open WebSocket alone. The page must notice by its heartbeat.
    using proxy = new TcpProxy({ hostname: "127.0.0.1", port: w.port });
    const context = await browser.newContext({ viewport: { width: 900, height: 500 } });
    const page = await context.newPage();
    await page.goto(s.link.replace(`:${w.port}/`, `:${proxy.port}/`));
    await pageUntil(page, (v) => v.state === "connected", "the page attached");
    const watcher = cliClient(w, s.session, ["--read-only"]);
    await watcher.waitFor(/attached/);
    await typeInto(
      page,
      "for i in $(seq 1 400); do echo line-$i; sleep 0.01; done; echo end-$((6*7))\n",
    );
    await pageUntil(page, (v) => v.text.includes("line-20\n"), "output flowing to the page");
    await context.setOffline(true);
    proxy.setSilent(true);
    await pageUntil(page, (v) => v.state === "reconnecting", "the page saw its connection drop");
    // Output goes on while the page is away: the CLI watcher sees it.
    await watcher.waitFor(/line-200\r?\n/, "stdout");
    proxy.setSilent(false);
    await context.setOffline(false);
    const v = await pageUntil(page, (v) => v.text.includes("end-42"), "the rest of the output");
    assert.equal(v.state, "connected");
    // A line as a terminal shows it: what follows its last carriage return.
    const lines = (text: string) =>
      text.split(/\r?\n/).map((l) => l.split("\r").pop()!).filter((l) => /^line-\d+$/.test(l));
    const expected = Array.from({ length: 400 }, (_, i) => `line-${i + 1}`);
    assert.deepEqual(lines(v.text), expected);
    // The CLI's replay of the same session agrees.
    const replay = cliClient(w, s.session, ["--read-only"]);
    await replay.waitFor(/end-42/, "stdout");
    assert.deepEqual(lines(replay.stdout), expected);
  },
);

browserTest(
  "share: a read-only link shows it, and its keystrokes never reach the shell",
  async (w, browser) => {
    const s = await share(w, ["box", "--new", "--read-only"]);
    assert.equal(s.read_only, true);
    const page = await openPage(browser, s.link);
    assert.equal(await page.locator("#mode").isVisible(), true);
    assert.equal(await page.locator("#mode").textContent(), "read-only");
    await typeInto(page, "echo typed-in-the-page\n");
    // A writer in the same session: its marker reaches the page, the page's typing does not.
    const cli = cliClient(w, s.session);
    await cli.waitFor(/attached/);
    await cli.write("echo marker-$((2+3))\n");
    const v = await pageUntil(page, (v) => v.text.includes("marker-5"), "the writer's output");
    assert.doesNotMatch(v.text + cli.stdout, /typed-in-the-page/);
    const sessions = await w.tether(["sessions", "box", "--json"]);
    const listed = (JSON.parse(sessions.stdout) as {
      id: string;
      participants?: { key: string; read_only: boolean }[];
    }[]).find((x) => x.id === s.session);
    const page_ = listed?.participants?.find((p) => p.key === `share:${s.id}`);
    assert.equal(page_?.read_only, true);
    assert.equal(listed?.participants?.length, 2);
    const table = await w.tether(["sessions", "box"]);
    assert.match(table.stdout, /2 \(1 browser\)/);
  },
);

browserTest(
  "share: used, expired, revoked and incomplete links are refused on the page; a revoked link's page is cut within 2 s; joins are audited",
  async (w, browser) => {
    const first = await share(w, ["box", "--new"]);
    const page = await openPage(browser, first.link);
    const refusedOn = async (link: string, message: RegExp) => {
      const other = await browser.newPage(); // a fresh tab: nothing to resume with
      await other.goto(link);
      const v = await pageUntil(other, (v) => v.state === "refused", `a refusal (${message})`);
      assert.match(await other.locator("#message").textContent() ?? "", message);
      await other.close();
      return v;
    };
    await refusedOn(first.link, /already used/);
    const brief = await share(w, ["box", "--session", first.session, "--ttl", "1s"]);
    const expires = Date.parse(
      JSON.parse((await w.tether(["share", "--list", "--json"])).stdout)
        .find((x: { id: string }) => x.id === brief.id).expires_at,
    );
    await new Promise((r) => setTimeout(r, Math.max(0, expires - Date.now() + 50)));
    await refusedOn(brief.link, /expired/);
    const revoked = await share(w, ["box", "--session", first.session, "--uses", "3"]);
    assert.equal((await w.tether(["share", "--revoke", revoked.id])).code, 0);
    await refusedOn(revoked.link, /revoked/);
    await refusedOn(first.link.replace(/#.*/, "#abc"), /incomplete/);
    await refusedOn(first.link.replace(/\.[0-9a-f]{40}\./, `.${"0".repeat(40)}.`), /not valid/);
    // A link whose keys were cut short (end to end, the page needs both) is incomplete.
    await refusedOn(first.link.replace(/\.[\w-]{43}$/, ".abc"), /incomplete/);

    // Revoking the link a page joined with cuts it.
    const revoke = await w.tether(["share", "--revoke", first.id]);
    assert.equal(revoke.code, 0, revoke.stderr);
    const cutAt = Date.now();
    const v = await pageUntil(page, (v) => v.state === "refused", "the page cut", 5_000);
    assert.ok(Date.now() - cutAt < 2_000, `cut after ${Date.now() - cutAt} ms`);
    assert.match(v.error?.message ?? "", /revoked/);

    const list = JSON.parse((await w.tether(["share", "--list", "--json"])).stdout) as {
      id: string;
      state: string;
    }[];
    const state = (id: string) => list.find((x) => x.id === id)?.state;
    assert.deepEqual([state(first.id), state(brief.id), state(revoked.id)], [
      "revoked",
      "expired",
      "revoked",
    ]);
    const audit = await w.tether(["relay", "audit", "--data-dir", w.relayDir, "--json"]);
    const joins = (JSON.parse(audit.stdout) as {
      key_id: string;
      remote: string | null;
      read_only: boolean;
      kind: string;
    }[]).filter((r) => r.key_id === `share:${first.id}`);
    assert.equal(joins.length, 1);
    assert.match(joins[0].remote ?? "", /^127\.0\.0\.1:\d+$/);
    assert.equal(joins[0].read_only, false);
    assert.equal(joins[0].kind, "pty");
  },
);

browserTest("share: a page from another origin is refused on the page", async (w, browser) => {
  const s = await share(w, ["box", "--new", "--uses", "2"]);
  // The relay is told its public address; the page is opened under another name for it.
  await w.stopRelay();
  await w.startRelay(["--public-url", `http://localhost:${w.port}`]);
  const page = await browser.newPage();
  await page.goto(s.link);
  const v = await pageUntil(page, (v) => v.state === "refused", "the refusal");
  assert.equal(v.error?.code, "forbidden");
  assert.match(
    v.error?.message ?? "",
    /origin \(http:\/\/127\.0\.0\.1:\d+\) is not the relay's own \(http:\/\/localhost:\d+\)/,
  );
});

browserTest(
  "share: a machine with a password: the page asks for it, and asks again when wrong",
  async (w, browser) => {
    const stateDir = join(w.home, "agents", "vault");
    const set = await run(["password", "set", "--state-dir", stateDir], {
      env: baseEnv(w.home),
      stdin: "tiger-lily\n",
    });
    assert.equal(set.code, 0, set.stderr);
    await w.startAgent("vault");
    const refused = await w.tether(["share", "vault", "--new", "--json"]);
    assert.equal(JSON.parse(refused.stdout).error.code, "password_required");
    const r = await w.tether(["share", "vault", "--new", "--json", "--password", "tiger-lily"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const page = await browser.newPage();
    await page.goto(JSON.parse(r.stdout).link);
    await page.locator("#password").waitFor();
    await page.locator("#password").fill("wrong");
    await page.locator("#password-form button").click();
    await eventually(
      async () => /Wrong password/.test(await page.locator("#message").textContent() ?? ""),
      "asked again",
    );
    await page.locator("#password").fill("tiger-lily");
    await page.locator("#password-form button").click();
    await pageUntil(page, (v) => v.state === "connected", "attached after the password");
    await typeInto(page, "echo unlocked-$((3*3))\n");
    await pageUntil(page, (v) => v.text.includes("unlocked-9"), "the shell answers");
  },
);

Deno.test({
  name:
    "share, end to end: the relay's link to the agent carries no keystroke or output in the clear; a flipped frame shows integrity on the page",
  ignore: needChromium.ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    needChromium.check();
    await using w = await World.create();
    const proxy = new WsTamperProxy({ hostname: "127.0.0.1", port: w.port });
    using _p = proxy;
    await w.startAgent("box", { relay: `ws://127.0.0.1:${proxy.port}` });
    // The page reaches the relay through a hostile middle too.
    const pageSide = new WsTamperProxy({ hostname: "127.0.0.1", port: w.port });
    using _q = pageSide;
    const browser = await launch();
    try {
      const s = await share(w, ["box", "--new"]);
      const page = await openPage(
        browser,
        s.link.replace(`:${w.port}/`, `:${pageSide.port}/`),
      );
      await typeInto(page, "echo BKEY-$((3*3))-OUT\n");
      await pageUntil(page, (v) => v.text.includes("BKEY-9-OUT"), "the echo in the page");
      const seen = proxy.all();
      assert.ok(contains(seen, '"t":"sealed"'), "the page's stream is sealed");
      for (const secret of ["BKEY", "9-OUT"]) {
        assert.ok(!contains(seen, secret), `${secret} crossed the relay in the clear`);
      }
      // The relay's audit: the page's join (key share:ID) is a sealed stream.
      const audit = JSON.parse(
        (await w.tether(["relay", "audit", "--data-dir", w.relayDir, "--json"])).stdout,
      );
      const join = audit.find((r: { key_id: string }) => r.key_id === `share:${s.id}`);
      assert.equal(join?.sealed, true, JSON.stringify(audit));
      // The relay speaks for the agent in the clear, on other stream ids: a password challenge
      // (to phish the password), an exit 0, a notice. The page hears none of it.
      const forged = (sid: number) =>
        `{"t":"challenge","sid":${sid + 7},"salt":"00","n":2,"r":1,"p":1,"nonce":"00"}`;
      for (const text of [forged, (sid: number) => `{"t":"exit","sid":${sid + 7},"code":0}`]) {
        pageSide.arm({ mode: "text", direction: "down", nth: 1, text });
        await typeInto(page, "echo forged-$((1+1))\n");
        await pageSide.tampered;
      }
      await pageUntil(page, (v) => (v.text.match(/forged-2/g) ?? []).length >= 2, "echoes");
      const after = await view(page);
      assert.equal(after.state, "connected");
      const prompt = await page.evaluate(() =>
        // deno-lint-ignore no-explicit-any
        (globalThis as any).document.getElementById("password-form").hidden
      );
      assert.equal(prompt, true, "no password prompt");
      assert.ok(!contains(pageSide.all(), '"t":"auth"'), "no answer in the clear");

      // The relay's side flips a byte of the next output frame: the page stops, and says why.
      proxy.arm({ mode: "flip", direction: "up", nth: 1 });
      await typeInto(page, "echo after\n");
      const v = await pageUntil(page, (v) => v.state === "refused", "the page refusing");
      assert.equal(v.error?.code, "integrity");
      assert.match(v.error?.message ?? "", /altered on the way/);
    } finally {
      await browser.close();
    }
  },
});
