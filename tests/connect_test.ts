/** Issue 4: `tether connect` through a real relay and agent, driven in a real terminal (tmux). */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { eventually, Proc, tetherArgv, World } from "./helpers.ts";
import { TcpProxy } from "./proxy.ts";
import { hasTmux, Tmux } from "./tmux.ts";

const ignore = !hasTmux();
if (ignore) console.error("connect tests skipped: tmux is not installed (apt-get install tmux)");

function connectIn(w: World, args: string[], env: Record<string, string> = {}) {
  return Tmux.start(tetherArgv(["connect", ...args]), {
    env: w.env({ TERM: "xterm-256color", ...env }),
  });
}

async function sessions(w: World) {
  const r = await w.tether(["sessions", "--json"]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  return JSON.parse(r.stdout) as { id: string; clients: number; attached: boolean }[];
}

Deno.test({
  name: "connect: banner, output, resize, Ctrl-C stays attached, Ctrl-D detaches, reattach replays",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("shellbox");
    {
      await using t = await connectIn(w, ["shellbox"]);
      await t.waitFor(/resolving shellbox \.\.\. ok \(id [0-9a-f]{8}, online \d+s\)/);
      await t.waitFor(/dialing relay \.\.\. ok\nauth \.\.\. ok \(session [0-9a-f]{12}, new\)/);
      await t.waitFor(/attached — Ctrl-D to disconnect, Ctrl-C is sent to the remote/);
      await t.line("echo marker-$((6*7))");
      await t.waitFor(/^marker-42$/m);

      await t.line("stty size");
      await t.waitFor(/^30 100$/m);
      await t.resize(90, 25);
      await t.line("stty size");
      await t.waitFor(/^25 90$/m);

      // Ctrl-C reaches whatever runs: the sleep, or the line still starting it (130 either way).
      await t.line("echo sleeping; sleep 100");
      await t.waitFor(/^sleeping$/m);
      await t.keys("C-c");
      await t.line("echo slept-$?");
      await t.waitFor(/^slept-130$/m);
      await t.line("echo still-here");
      await t.waitFor(/^still-here$/m);

      await t.keys("C-d");
      await t.waitFor(/detached from session [0-9a-f]{12} on shellbox[\s\S]*\[exited 0\]/);
    }
    const [s] = await sessions(w);
    assert.ok(s, "the session is still listed after detaching");
    assert.equal(s.clients, 0);
    assert.equal(s.attached, false);
    const machines = await w.machines();
    assert.equal(machines[0].sessions, 1);

    await using again = await connectIn(w, ["shellbox"]);
    await again.waitFor(/auth \.\.\. ok \(session [0-9a-f]{12}, joined\)/);
    await again.waitFor(/^marker-42$/m); // replayed from the ring buffer
    await again.line("echo back-again");
    await again.waitFor(/^back-again$/m);
  },
});

Deno.test({
  name: "connect: a second client sees the first client's typing; --read-only input is dropped",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("shared");
    await using a = await connectIn(w, ["shared"]);
    await a.waitFor(/attached —/);
    const [s] = await sessions(w);
    await using b = await connectIn(w, ["shared", "--session", s.id]);
    await b.waitFor(/attached —/);
    await a.line("echo typed-by-$((1+1))-a");
    await b.waitFor(/^typed-by-2-a$/m);
    await b.line("echo typed-by-b");
    await a.waitFor(/^typed-by-b$/m);

    await using v = await connectIn(w, ["shared", "--read-only"]);
    await v.waitFor(/attached read-only/);
    await v.line("echo from-viewer-$((3+4))");
    await a.line("echo after-viewer");
    await v.waitFor(/^after-viewer$/m);
    assert.doesNotMatch(await a.screen(), /from-viewer-7/);
  },
});

Deno.test({
  name: "connect: a full-screen program opens and quits; exec -t returns its exit code",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("screeny");
    await using t = await connectIn(w, ["screeny"]);
    await t.waitFor(/attached —/);
    await t.line("vi -u NONE /tmp/tether-vi-test.txt");
    await t.waitFor(/tether-vi-test\.txt/);
    await t.waitFor(/^~/m);
    // vi starts in normal mode. No Escape first: arriving in the same read as ":", vi can
    // take ESC + ":" for one key sequence and never quit (seen once under load).
    await t.type(":q!");
    await t.keys("Enter");
    await t.line("echo vi-done");
    await t.waitFor(/^vi-done$/m);

    await using x = await Tmux.start(
      tetherArgv(["exec", "-t", "screeny", "--", "sh", "-c", "tty; exit 7"]),
      {
        env: w.env(),
      },
    );
    await x.waitFor(/^\/dev\/pts\/\d+/m);
    await x.waitFor(/\[exited 7\]/);
  },
});

Deno.test({
  name: "connect: --detach-key moves detaching off Ctrl-D, whose EOF then reaches the remote",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("keyed");
    {
      await using t = await connectIn(w, ["keyed", "--detach-key", "ctrl-]"]);
      await t.waitFor(/attached — Ctrl-\] to disconnect, Ctrl-C is sent to the remote/);
      await t.line("cat; echo cat-ended-$?");
      await t.keys("C-d"); // EOF for cat, not a detach
      await t.waitFor(/^cat-ended-0$/m);
      await t.keys("C-]");
      await t.waitFor(/detached from session [0-9a-f]{12} on keyed[\s\S]*\[exited 0\]/);
    }
    {
      await using t = await connectIn(w, ["keyed", "--new", "--detach-key", "none"]);
      await t.waitFor(/attached — no detach key \(--detach-key none\)/);
      await t.line("echo shell-$((2+2))"); // the shell reads its input now
      await t.waitFor(/^shell-4$/m);
      await t.keys("C-d"); // EOF for the login shell: it ends, and so does the session
      await t.waitFor(/session [0-9a-f]{12} on keyed ended \(exit 0\)[\s\S]*\[exited 0\]/);
    }
    const bad = await w.tether(["connect", "keyed", "--detach-key", "alt-x"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /invalid --detach-key 'alt-x'/);
  },
});

Deno.test({
  name: "connect: the session ends after the grace window with nobody attached",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("graceful", { args: ["--session-grace", "1s"] });
    {
      await using t = await connectIn(w, ["graceful"]);
      await t.waitFor(/attached —/);
      await t.keys("C-d");
      await t.waitFor(/detached/);
    }
    await eventually(
      async () => (await sessions(w)).length === 0,
      "the session to end 1 s after its client left",
      10_000,
    );
    const r = await w.tether(["sessions", "kill", "nope", "--json"]);
    assert.equal(JSON.parse(r.stdout).error.code, "session_not_found");
  },
});

Deno.test({
  name: "connect: survives a relay restart while attached",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("steady");
    await using t = await connectIn(w, ["steady"]);
    await t.waitFor(/attached —/);
    await t.line("echo before-restart");
    await t.waitFor(/^before-restart$/m);
    await w.stopRelay();
    await t.waitFor(/reconnecting…/);
    await w.startRelay();
    await t.waitFor(/\[tether: reconnected\]/, 30_000);
    await t.line("echo after-restart");
    await t.waitFor(/^after-restart$/m);
  },
});

Deno.test({
  name: "connect: resume after a dropped client connection is byte-exact",
  async fn() {
    await using w = await World.create();
    await w.startAgent("exact");
    const size = 3 * 1024 * 1024;
    const gen = await w.tether([
      "exec",
      "exact",
      "--",
      "sh",
      "-c",
      `head -c ${size} /dev/urandom | base64 -w 100 > /tmp/tether-exact-$PPID.txt; echo /tmp/tether-exact-$PPID.txt`,
    ]);
    const file = gen.stdout.trim();
    const sum = await w.tether(["exec", "exact", "--", "cat", file]);
    const want = createHash("sha256").update(sum.stdout).digest("hex");

    const proxy = new TcpProxy({ hostname: "127.0.0.1", port: w.port });
    try {
      // A client on pipes (no TTY) through a proxy we can cut; the test reads its output slowly.
      const p = Proc.tether(["connect", "-t", "exact"], {
        env: w.env({ TETHER_RELAY: `ws://127.0.0.1:${proxy.port}` }),
        stdin: true,
      });
      await p.waitFor(/attached —/);
      await p.write(`stty -echo; echo BEGIN; cat ${file}; echo END\n`);
      await p.waitFor(/BEGIN/, "stdout");
      for (let i = 0; i < 3; i++) {
        await p.waitUntil((x) => x.stdout.length > (i + 1) * 500_000, `${i + 1}/2 MB of output`);
        assert.ok(proxy.cut() >= 1, "cut the client's connection");
        await p.waitFor(new RegExp(`(reconnected[\\s\\S]*){${i + 1}}`), "stderr", 30_000);
      }
      await p.waitFor(/\r?\nEND\r?\n/, "stdout", 60_000);
      const text = p.stdout.replaceAll("\r\n", "\n");
      const body = text.slice(text.indexOf("BEGIN\n") + 6, text.lastIndexOf("END\n"));
      assert.equal(createHash("sha256").update(body).digest("hex"), want, "no gap, no duplicate");
      await p.stop();
    } finally {
      proxy.close();
      await w.tether(["exec", "exact", "--", "rm", "-f", file]);
    }
  },
});

Deno.test({
  name: "connect with no machine on a terminal: picker (type to filter), confirm, attach",
  ignore,
  async fn() {
    await using w = await World.create();
    await Promise.all([w.startAgent("alpha-web"), w.startAgent("beta-db")]);
    const [beta] = (await w.machines()).filter((m) => m.name === "beta-db");
    await using t = await connectIn(w, []);
    await t.waitFor(/Pick a machine/);
    await t.waitFor(/alpha-web[\s\S]*beta-db/);
    await t.type("beta");
    await t.waitFor(/beta-db/);
    await t.keys("Enter");
    await t.waitFor(new RegExp(`Attach to beta-db \\(${beta.id.slice(0, 8)}\\)\\?`));
    await t.keys("Enter");
    await t.waitFor(/attached — Ctrl-D to disconnect/);
    await t.line("echo picked-$((40+2))");
    await t.waitFor(/^picked-42$/m);
    await t.keys("C-d");
    await t.waitFor(/detached from session [0-9a-f]+ on beta-db/);
  },
});

Deno.test({
  name: "connect picker: Ctrl-C cancels cleanly with exit 130 and no stack trace",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("only-one");
    await using t = await connectIn(w, []);
    await t.waitFor(/Pick a machine/);
    await t.keys("C-c");
    const screen = (await t.waitFor(/\[exited 130\]/)).input;
    assert.match(screen, /tether: cancelled/);
    assert.doesNotMatch(screen, /at .*\.ts:\d+|Error:/);
  },
});

Deno.test("sessions kill ends a live session: its client gets the exit status and the list empties", async () => {
  await using w = await World.create();
  await w.startAgent("killable");
  const p = w.spawn(["connect", "-t", "killable"], { stdin: true });
  await p.waitFor(/attached —/);
  const [s] = await sessions(w);
  assert.equal(s.clients, 1);
  const k = await w.tether(["sessions", "kill", s.id.slice(0, 6), "--json"]);
  assert.equal(k.code, 0, k.stdout + k.stderr);
  assert.deepEqual(JSON.parse(k.stdout), { killed: s.id, machine: "killable" });
  const st = await p.status;
  assert.match(p.stderr, new RegExp(`session ${s.id} on killable ended \\(exit \\d+\\)`));
  assert.notEqual(st.code, 255, "an exit status arrived; nothing was lost");
  assert.deepEqual(await sessions(w), []);
});

Deno.test({
  name: "connect: SIGTERM to the client restores the terminal and leaves the session running",
  ignore,
  async fn() {
    await using w = await World.create();
    await w.startAgent("sturdy");
    await using t = await Tmux.start(tetherArgv(["connect", "sturdy"]), {
      env: w.env({ TERM: "xterm-256color" }),
      after: "stty -a | grep -q -- ' icanon' && echo TTY-RESTORED || echo TTY-STILL-RAW;",
    });
    await t.waitFor(/attached —/);
    await t.line("echo alive");
    await t.waitFor(/^alive$/m);
    Deno.kill(await t.commandPid(), "SIGTERM");
    await t.waitFor(
      /SIGTERM: detached from session [0-9a-f]+ on sturdy[\s\S]*\[exited 143\]\s*TTY-RESTORED/,
    );
    const [s] = await sessions(w);
    assert.ok(s, "the session keeps running");
  },
});
