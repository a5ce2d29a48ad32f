/**
 * The prompts on a real terminal: tests/fixtures/prompt_demo.ts (picker →
 * confirm → a raw-mode read of Deno.stdin, as attach does) runs in a private
 * tmux server; keys go in with send-keys and the screen is read with
 * capture-pane. Every wait polls the screen for the expected text, so the
 * tests do not depend on timing. Skipped, with a message, without tmux.
 */
import assert from "node:assert/strict";

function hasTmux(): boolean {
  try {
    return new Deno.Command("tmux", { args: ["-V"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

const TMUX = hasTmux();
if (!TMUX) {
  console.error("prompts_tmux_test: tmux not found, skipping the real-terminal prompt tests");
}

const REPO = new URL("../..", import.meta.url).pathname;
const DEMO = "tests/fixtures/prompt_demo.ts";

class Pane {
  private readonly socket = `tether-prompts-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;

  private async tmux(...args: string[]): Promise<string> {
    const out = await new Deno.Command("tmux", {
      args: ["-L", this.socket, "-f", "/dev/null", ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`tmux ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    }
    return new TextDecoder().decode(out.stdout);
  }

  /** Runs the demo with `args` in a 120×30 terminal; the pane stays after it exits. */
  static async demo(...args: string[]): Promise<Pane> {
    const p = new Pane();
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    const cmd = [Deno.execPath(), "run", "-q", "-A", "--config", "deno.json", DEMO, ...args]
      .map(q).join(" ");
    await p.tmux(
      "new-session",
      "-d",
      "-x",
      "120",
      "-y",
      "30",
      "-c",
      REPO,
      // After the demo: its exit code, then the terminal's mode as the shell finds it.
      `${cmd}; echo "[exit $?]"; printf '[after'; ` +
        `for f in $(stty -a | tr ';' ' '); do case $f in icanon|-icanon|echo|-echo) printf ' %s' $f;; esac; done; ` +
        `echo ']'; sleep 600`,
    );
    return p;
  }

  type(text: string) {
    return this.tmux("send-keys", "-l", text);
  }

  keys(...names: string[]) {
    return this.tmux("send-keys", ...names);
  }

  async screen(): Promise<string> {
    return (await this.tmux("capture-pane", "-p")).replace(/\n+$/, "");
  }

  async cursorVisible(): Promise<boolean> {
    return (await this.tmux("display-message", "-p", "#{cursor_flag}")).trim() === "1";
  }

  /** Waits until the screen matches `re`; returns the screen. */
  async waitFor(re: RegExp, ms = 20_000): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const s = await this.screen();
      if (re.test(s)) return s;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; screen:\n${s}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async close(): Promise<void> {
    await this.tmux("kill-server").catch(() => {});
  }
}

const NO_TRACE = /error:|Uncaught|\n\s+at /;

Deno.test({
  name: "tmux: type to filter, Down, Enter picks, confirm, then attach reads raw Deno.stdin",
  ignore: !TMUX,
  async fn() {
    const p = await Pane.demo("--stty");
    try {
      let s = await p.waitFor(/4\/4 · type to filter/);
      assert.match(s, /^❯ prod-api-1 +8f23a4b0 +ip-10-0-1-5 +online +3s$/m);
      assert.match(s, /^ {2}prod-db +77aa00bb +db-primary +offline +2h$/m);
      await p.type("api");
      s = await p.waitFor(/^\? Pick a machine: api$/m);
      assert.match(s, /2\/4 · type to filter/);
      assert.doesNotMatch(s, /staging-web|prod-db/);
      await p.keys("Down");
      await p.waitFor(/^❯ prod-api-2/m);
      await p.keys("Enter");
      s = await p.waitFor(/\? Attach to prod-api-2 \(1c2d3e4f\)\? \(Y\/n\)/);
      assert.match(s, /^✔ Pick a machine: prod-api-2 \(1c2d3e4f\)$/m);
      assert.doesNotMatch(s, /HOSTNAME|type to filter/, "the list is erased after the pick");
      await p.keys("Enter");
      s = await p.waitFor(/READY/);
      assert.match(
        s,
        /✔ Attach to prod-api-2 \(1c2d3e4f\)\? Yes\nCONFIRMED true\nTTY icanon echo\n/,
      );
      // The attached session gets every byte, Ctrl-C included: nothing is left reading stdin.
      await p.type("hi");
      await p.waitFor(/GOT "hi"/);
      await p.keys("C-c");
      await p.waitFor(/GOT "\\u0003"/);
      await p.keys("C-d");
      s = await p.waitFor(/\[exit \d+\]/);
      assert.match(s, /DETACHED\n\[exit 0\]/);
      assert.doesNotMatch(s, NO_TRACE);
      assert.ok(await p.cursorVisible());
    } finally {
      await p.close();
    }
  },
});

Deno.test({
  name: "tmux: Ctrl-C in the picker cancels cleanly (exit 130, list erased, terminal restored)",
  ignore: !TMUX,
  async fn() {
    const p = await Pane.demo("--stty");
    try {
      await p.waitFor(/4\/4 · type to filter/);
      await p.type("pro");
      await p.waitFor(/^\? Pick a machine: pro$/m);
      await p.keys("C-c");
      const s = await p.waitFor(/\[exit \d+\]/);
      assert.match(s, /TTY icanon echo\ntether: cancelled\n\[exit 130\]/);
      assert.doesNotMatch(s, /HOSTNAME|prod-api|type to filter/, "the list is erased");
      assert.doesNotMatch(s, NO_TRACE);
      assert.ok(await p.cursorVisible());
    } finally {
      await p.close();
    }
  },
});

Deno.test({
  name: "tmux: Ctrl-C in the password prompt shows the hidden cursor again",
  ignore: !TMUX,
  async fn() {
    const p = await Pane.demo("--stty", "--password");
    try {
      const s0 = await p.waitFor(/\? Password:/);
      assert.match(s0, /\[input is masked\]/);
      assert.equal(await p.cursorVisible(), false, "the password prompt hides the cursor");
      await p.type("secret");
      await p.keys("C-c");
      const s = await p.waitFor(/\[exit \d+\]/);
      assert.match(s, /TTY icanon echo\ntether: cancelled\n\[exit 130\]/);
      assert.doesNotMatch(s, /secret/);
      assert.doesNotMatch(s, NO_TRACE);
      assert.ok(await p.cursorVisible(), "cursor visible again");
    } finally {
      await p.close();
    }
  },
});

for (const [sig, code] of [["SIGTERM", 143], ["SIGHUP", 129]] as const) {
  Deno.test({
    name: `tmux: ${sig} during the picker still restores the terminal (exit ${code})`,
    ignore: !TMUX,
    async fn() {
      const pidFile = await Deno.makeTempFile();
      const p = await Pane.demo(`--pid-file=${pidFile}`);
      try {
        await p.waitFor(/4\/4 · type to filter/);
        Deno.kill(Number(await Deno.readTextFile(pidFile)), sig);
        const s = await p.waitFor(/\[after[^\]]*\]/);
        assert.match(s, new RegExp(`\\[exit ${code}\\]\\n\\[after icanon echo\\]`));
        assert.doesNotMatch(s, /HOSTNAME|type to filter/, "the list is erased");
        assert.doesNotMatch(s, NO_TRACE);
        assert.ok(await p.cursorVisible());
      } finally {
        await p.close();
        await Deno.remove(pidFile);
      }
    },
  });
}
