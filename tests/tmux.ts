/**
 * A real terminal for end-to-end tests: a private tmux server (its own
 * socket), one window running a command, keys sent with send-keys, the
 * screen read with capture-pane.
 */
export function hasTmux(): boolean {
  try {
    return new Deno.Command("tmux", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

export class Tmux {
  private readonly socket = `tether-test-${crypto.randomUUID().slice(0, 8)}`;

  private constructor(readonly name: string) {}

  static async start(
    command: string[],
    opts: { env?: Record<string, string>; cols?: number; rows?: number; after?: string } = {},
  ): Promise<Tmux> {
    const t = new Tmux("main");
    const envArgs = Object.entries(opts.env ?? {}).flatMap(([k, v]) => ["-e", `${k}=${v}`]);
    const quoted = command.map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
    // Keep the pane after the command ends, so its last words can be read.
    await t.tmux(
      "new-session",
      "-d",
      "-s",
      t.name,
      "-x",
      String(opts.cols ?? 100),
      "-y",
      String(opts.rows ?? 30),
      ...envArgs,
      `${quoted}; echo "[exited $?]"; ${opts.after ?? ""} sleep 600`,
    );
    return t;
  }

  private async tmux(...args: string[]): Promise<string> {
    const out = await new Deno.Command("tmux", {
      args: ["-L", this.socket, ...args],
      stderr: "piped",
    })
      .output();
    if (!out.success) {
      throw new Error(`tmux ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    return new TextDecoder().decode(out.stdout);
  }

  /** Pid of the command the pane runs (the child of the pane's shell). */
  async commandPid(): Promise<number> {
    const shell = (await this.tmux("display-message", "-p", "-t", this.name, "#{pane_pid}")).trim();
    const out = await new Deno.Command("pgrep", { args: ["-P", shell] }).output();
    return Number(new TextDecoder().decode(out.stdout).trim().split("\n")[0]);
  }

  /** Types text literally (no key-name interpretation). */
  type(text: string): Promise<string> {
    return this.tmux("send-keys", "-t", this.name, "-l", text);
  }

  /** Sends key names: Enter, C-c, C-d, Escape … */
  keys(...keys: string[]): Promise<string> {
    return this.tmux("send-keys", "-t", this.name, ...keys);
  }

  async line(text: string): Promise<void> {
    await this.type(text);
    await this.keys("Enter");
  }

  /** The visible screen plus scrollback, trailing blank lines removed. */
  async screen(): Promise<string> {
    const s = await this.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", this.name);
    return s.replace(/\s+$/, "");
  }

  async resize(cols: number, rows: number): Promise<void> {
    await this.tmux("resize-window", "-t", this.name, "-x", String(cols), "-y", String(rows));
  }

  /** Waits until the screen matches; returns the match. */
  async waitFor(re: RegExp, timeoutMs = 15_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    for (;;) {
      last = await this.screen();
      const m = re.exec(last);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`screen never matched ${re}:\n${last}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.tmux("kill-server").catch(() => {});
  }
}
