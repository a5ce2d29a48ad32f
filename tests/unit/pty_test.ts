/** The libc pseudo-terminal under real shells: size, job control, signals, cleanup. */
import assert from "node:assert/strict";
import {
  ensurePtySupport,
  type ProcessInfo,
  processInfo,
  Pty,
  type PtyOptions,
  sessionProcesses,
} from "../../src/agent/pty.ts";

// The shared libc handle is a resource that lives for the whole process; open it
// before any test so the resource sanitizer does not count it against the first one.
ensurePtySupport();

const enc = new TextEncoder();
const WAIT_MS = 10_000;
const BASH = ["bash", "--norc", "--noprofile", "-i"];
const BASH_ENV = { PS1: "PROMPT> ", HISTFILE: "/dev/null", INPUTRC: "/dev/null" };

/** A Pty whose output is pumped into `text`, with waits for patterns. */
class Term {
  readonly pty: Pty;
  text = "";
  ended = false;
  readonly pumped: Promise<void>;
  #changed: () => void = () => {};

  constructor(opts: Partial<PtyOptions> & { argv: string[] }) {
    this.pty = Pty.spawn({ cols: 80, rows: 24, ...opts });
    this.pumped = this.#pump();
  }

  async #pump(): Promise<void> {
    const buf = new Uint8Array(4096);
    const dec = new TextDecoder();
    try {
      for (let n; (n = await this.pty.read(buf)) !== null;) {
        this.text += dec.decode(buf.subarray(0, n), { stream: true });
        this.#changed();
      }
    } finally {
      this.ended = true;
      this.#changed();
    }
  }

  /** Output position to search from later. */
  mark(): number {
    return this.text.length;
  }

  /** Resolves with the first match of `re` in the output after `from`. */
  async waitFor(re: RegExp, from = 0, ms = WAIT_MS): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.text.slice(from).match(re);
      if (m) return m;
      if (this.ended) throw new Error(`output ended without ${re}: ${JSON.stringify(this.text)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${re} within ${ms} ms: ${JSON.stringify(this.text)}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#changed = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  send(s: string): Promise<void> {
    return this.pty.write(enc.encode(s));
  }

  /** Runs one shell line and waits for the next prompt after it. */
  async run(line: string): Promise<string> {
    const from = this.mark();
    await this.send(line + "\n");
    const m = await this.waitFor(/\r\n([\s\S]*?)PROMPT> $/, from);
    // Leave out readline's bracketed-paste mode switches around each command.
    return m[1].replaceAll("\x1b[?2004l\r", "").replaceAll("\x1b[?2004h", "");
  }

  /** Reads to EOF and returns the exit. */
  async finish(): Promise<{ out: string; code: number; signal: string | null }> {
    await this.pumped;
    const exit = await this.pty.exited;
    return { out: this.text, ...exit };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.pty.terminate(500);
    await this.pumped;
  }
}

/** Until `pred` holds, looking every few ms, within the overall wait. */
async function until(pred: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Dead, or a zombie nobody has reaped yet (its parent is gone). */
function gone(pid: number): boolean {
  const st = processInfo(pid);
  return st === null || st.state === "Z" || st.state === "X";
}

Deno.test("pty: output of a short command, then EOF and its exit code", async () => {
  const t = new Term({ argv: ["printf", "hello"] });
  const r = await t.finish();
  assert.equal(r.out, "hello");
  assert.deepEqual([r.code, r.signal], [0, null]);
  assert.equal(await t.pty.read(new Uint8Array(16)), null);
  t.pty.close();
  t.pty.close();

  const failing = new Term({ argv: ["sh", "-c", "echo out; exit 42"] });
  const f = await failing.finish();
  assert.equal(f.out, "out\r\n"); // ONLCR: the terminal translates \n
  assert.equal(f.code, 42);
  failing.pty.close();
});

Deno.test("pty: stty sees the spawn size, then the size after resize()", async () => {
  await using t = new Term({
    argv: ["sh", "-c", "stty size; read x; stty size"],
    cols: 90,
    rows: 30,
  });
  await t.waitFor(/^30 90\r\n/);
  const from = t.mark();
  t.pty.resize(120, 40);
  await t.send("\n");
  await t.waitFor(/^\r\n40 120\r\n/, from);
  assert.equal((await t.finish()).code, 0);
  assert.throws(() => t.pty.resize(0, 10), RangeError);
});

Deno.test("pty: a full-screen program redraws on resize and leaves cleanly", async () => {
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(
      file,
      Array.from({ length: 200 }, (_, i) => `line-${i + 1}`).join("\n") + "\n",
    );
    await using t = new Term({
      argv: ["vim", "-u", "NONE", "-i", "NONE", "-N", "-n", "-X", file],
      rows: 10,
      env: { TERM: "xterm" },
    });
    await t.waitFor(/200L[\s\S]*line-9\b/);
    assert.doesNotMatch(t.text, /line-10\b/);
    const from = t.mark();
    t.pty.resize(80, 20); // SIGWINCH: vim redraws with more lines
    await t.waitFor(/line-19\b/, from);
    await t.send("\x1b:q!\r");
    const r = await t.finish();
    assert.equal(r.code, 0);
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("pty: bash -i has job control: no warning, jobs, kill %1", async () => {
  await using t = new Term({ argv: BASH, env: BASH_ENV });
  await t.waitFor(/PROMPT> $/);
  assert.doesNotMatch(t.text, /job control|cannot set terminal process group/);
  assert.match(await t.run("sleep 100 &"), /\[1\] \d+/);
  assert.match(await t.run("jobs"), /\[1\]\+\s+Running\s+sleep 100 &/);
  // Within one line bash notifies nothing, so the job is still in its table for `wait %1`.
  assert.match(await t.run("kill %1; wait %1; echo rc=$?"), /rc=143/);
  assert.equal(await t.run("jobs"), "");
  // bash leads the session and, at its prompt, its group is the terminal's foreground group.
  const me = processInfo(t.pty.pid)!;
  assert.equal(me.session, t.pty.pid);
  assert.equal(me.tpgid, t.pty.pid);
  await t.send("exit\n");
  assert.equal((await t.finish()).code, 0);
});

Deno.test("pty: Ctrl-C (0x03) interrupts the foreground sleep, the shell lives on", async () => {
  await using t = new Term({ argv: BASH, env: BASH_ENV });
  await t.waitFor(/PROMPT> $/);
  const from = t.mark();
  await t.send("sleep 100\n");
  // Wait until sleep is the terminal's foreground group, so ^C is a signal, not line editing.
  let sleeper: ProcessInfo | undefined;
  await until(() => {
    sleeper = sessionProcesses(t.pty.pid).find((p) => p.comm === "sleep" && p.pgrp === p.tpgid);
    return sleeper !== undefined;
  }, "sleep in the foreground");
  await t.send("\x03");
  await t.waitFor(/\^C[\s\S]*PROMPT> $/, from);
  await until(() => gone(sleeper!.pid), "sleep to die");
  assert.match(await t.run("echo rc=$?"), /rc=130/);
  await t.send("exit\n");
  assert.equal((await t.finish()).code, 0);
});

Deno.test("pty: death by signal gives 128+n and the signal's name", async () => {
  const self = new Term({ argv: ["sh", "-c", "kill -TERM $$"] });
  assert.deepEqual(await self.pty.exited, { code: 143, signal: "SIGTERM" });
  await self.pumped;
  self.pty.close();

  const t = new Term({ argv: ["sh", "-c", "echo ready; exec sleep 100"] });
  await t.waitFor(/ready/);
  t.pty.kill("SIGKILL");
  assert.deepEqual(await t.pty.exited, { code: 137, signal: "SIGKILL" });
  await t.pumped;
  t.pty.close();
});

Deno.test("pty: kill() ends the whole process group, background grandchild too", async () => {
  const t = new Term({ argv: ["sh", "-c", 'sleep 100 & echo "bg=$!"; wait'] });
  const bg = Number((await t.waitFor(/bg=(\d+)/))[1]);
  assert.equal(processInfo(bg)?.pgrp, t.pty.pid);
  t.pty.kill("SIGTERM");
  const exit = await t.pty.exited;
  assert.equal(exit.signal, "SIGTERM");
  await until(() => gone(bg), "the background sleep to die");
  await t.pumped;
  t.pty.close();
});

Deno.test("pty: terminate() also ends job-control jobs in their own process groups", async () => {
  const t = new Term({ argv: BASH, env: BASH_ENV });
  await t.waitFor(/PROMPT> $/);
  const bg = Number((await t.run("trap '' HUP; sleep 100 & echo bg=$!")).match(/bg=(\d+)/)![1]);
  const st = processInfo(bg)!;
  assert.equal(st.session, t.pty.pid);
  assert.notEqual(st.pgrp, t.pty.pid); // bash put the job in a group of its own
  const exit = await t.pty.terminate(500);
  assert.ok(exit.code >= 0, "the shell's status is known"); // 0 or 129: EIO and SIGHUP race
  await until(() => gone(bg), "the job to die");
  await t.pumped;
  assert.deepEqual(sessionProcesses(t.pty.pid), []);
});

Deno.test("pty: timers keep firing while a read is pending; close() ends the read", async () => {
  const pty = Pty.spawn({ argv: ["cat"], cols: 80, rows: 24 });
  try {
    const buf = new Uint8Array(1024);
    let settled = false;
    const first = pty.read(buf).finally(() => settled = true);
    let ticks = 0;
    const interval = setInterval(() => ticks++, 5);
    try {
      await until(() => ticks >= 20, "20 timer ticks");
    } finally {
      clearInterval(interval);
    }
    assert.equal(settled, false, "nothing was written, so the read is still pending");
    await pty.write(enc.encode("x\n"));
    let seen = "";
    for (let n = await first; n !== null;) {
      seen += new TextDecoder().decode(buf.subarray(0, n));
      if (seen === "x\r\nx\r\n") break; // the echo, then cat's copy
      n = await pty.read(buf);
    }
    assert.equal(seen, "x\r\nx\r\n");

    // cat has nothing more to say, so this read waits until close() ends it.
    const pending = pty.read(buf);
    await assert.rejects(pty.read(buf), Deno.errors.Busy);
    pty.close();
    assert.equal(await pending, null);
    await assert.rejects(pty.write(enc.encode("y")), Deno.errors.BadResource);
  } finally {
    await pty.terminate(500);
  }
});

Deno.test("pty: large writes wait for room and arrive whole, in order", async () => {
  await using t = new Term({
    argv: ["sh", "-c", "stty raw -echo; echo ready; head -c 300000 | cksum"],
  });
  await t.waitFor(/ready/);
  const data = new Uint8Array(300_000).map((_, i) => 97 + (i % 26));
  const half = data.length / 2;
  await Promise.all([
    t.send(""),
    t.pty.write(data.subarray(0, half)),
    t.pty.write(data.subarray(half)),
  ]);
  const expected = await new Deno.Command("cksum", { stdin: "piped", stdout: "piped" }).spawn();
  const w = expected.stdin.getWriter();
  await w.write(data);
  await w.close();
  const want = new TextDecoder().decode((await expected.output()).stdout).trim();
  await t.waitFor(new RegExp(want));
  assert.equal((await t.finish()).code, 0);
});

Deno.test("pty: env reaches the child, TERM included; clearEnv starts empty", async () => {
  Deno.env.set("TETHER_PTY_TEST_PARENT", "inherited");
  try {
    const t = new Term({
      argv: ["sh", "-c", 'printf "%s|%s|%s" "$TERM" "$GREETING" "$TETHER_PTY_TEST_PARENT"'],
      env: { TERM: "screen-256color", GREETING: "hi there" },
    });
    assert.equal((await t.finish()).out, "screen-256color|hi there|inherited");
    t.pty.close();
  } finally {
    Deno.env.delete("TETHER_PTY_TEST_PARENT");
  }
  const bare = new Term({ argv: ["env"], env: { ONLY: "1" }, clearEnv: true });
  const lines = (await bare.finish()).out.trim().split("\r\n").sort();
  assert.deepEqual(lines, ["ONLY=1", "TERM=xterm-256color"]);
  bare.pty.close();
});

Deno.test("pty: the child starts clean: default SIGPIPE, only fds 0-2, all the terminal", async () => {
  await using t = new Term({
    argv: [
      "bash",
      "-c",
      'yes | head -1 >/dev/null; echo "pipe=${PIPESTATUS[0]}"; tty; exec sleep 100',
    ],
  });
  const m = await t.waitFor(/^pipe=(\d+)\r\n(\S+)\r\n/);
  assert.equal(m[1], "141"); // Deno ignores SIGPIPE; the child must not inherit that
  assert.match(m[2], /^\/dev\/pts\/\d+$/);
  // Deno will not read /proc itself without --allow-all; ls will. While `exec sleep` loads,
  // its dynamic loader holds libc open for a moment: what stays open is what was inherited.
  const want = [`0 ${m[2]}`, `1 ${m[2]}`, `2 ${m[2]}`];
  let fds: string[] = [];
  for (let i = 0; i < 50; i++) {
    const ls = await new Deno.Command("ls", { args: ["-l", `/proc/${t.pty.pid}/fd`] }).output();
    fds = new TextDecoder().decode(ls.stdout).split("\n").filter((l) => l.includes(" -> "))
      .map((l) => l.replace(/.* (\d+) -> (.*)$/, "$1 $2"));
    if (fds.length === want.length) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.deepEqual(fds, want);
});

Deno.test("pty: cwd is the child's working directory, also for a relative argv[0]", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const t = new Term({ argv: ["pwd"], cwd: dir });
    assert.equal((await t.finish()).out, `${Deno.realPathSync(dir)}\r\n`);
    t.pty.close();
    await Deno.writeTextFile(`${dir}/hello.sh`, '#!/bin/sh\necho hello from "$(pwd)"\n');
    await Deno.chmod(`${dir}/hello.sh`, 0o755);
    const rel = new Term({ argv: ["./hello.sh"], cwd: dir });
    assert.equal((await rel.finish()).out, `hello from ${Deno.realPathSync(dir)}\r\n`);
    rel.pty.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pty: a missing command or cwd throws from spawn", () => {
  assert.throws(
    () => Pty.spawn({ argv: ["no-such-command-xyz"], cols: 80, rows: 24 }),
    (e: Error) => e instanceof Deno.errors.NotFound && /no-such-command-xyz/.test(e.message),
  );
  assert.throws(
    () => Pty.spawn({ argv: ["true"], cwd: "/no/such/dir", cols: 80, rows: 24 }),
    Deno.errors.NotFound,
  );
  assert.throws(
    () => Pty.spawn({ argv: ["true"], cwd: "/etc/hostname", cols: 80, rows: 24 }),
    Deno.errors.NotADirectory,
  );
  const plain = Deno.makeTempFileSync();
  try {
    Deno.chmodSync(plain, 0o644);
    assert.throws(
      () => Pty.spawn({ argv: [plain], cols: 80, rows: 24 }),
      Deno.errors.PermissionDenied,
    );
  } finally {
    Deno.removeSync(plain);
  }
});
