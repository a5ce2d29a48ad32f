/** Issue 3: `tether exec` and `exec --stream` through a real relay and agent. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { createHash } from "node:crypto";
import {
  awkEchoArgv,
  eventually,
  hasCommand,
  pgrep,
  Proc,
  requirement,
  rss,
  tetherArgv,
  World,
} from "./helpers.ts";

const needPerl = requirement(
  hasCommand("perl", ["-e", "1"])
    ? undefined
    : "these tests need perl (Debian package `perl-base`)",
);

async function worldWithAgent(name = "box"): Promise<World> {
  const w = await World.create();
  await w.startAgent(name);
  return w;
}

Deno.test("argv travels as an array, untouched by any shell", async () => {
  await using w = await worldWithAgent();
  const r = await w.tether(["exec", "box", "--", "printf", "%s|", "a b", "$HOME", "*", "", 'x"y']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'a b|$HOME|*||x"y|');
  assert.equal(r.stderr, "");
});

Deno.test("exit codes: the remote code, 128+n for a signal, separate stdout and stderr", async () => {
  await using w = await worldWithAgent();
  const r = await w.tether(["exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 42"]);
  assert.equal(r.code, 42);
  assert.equal(r.stdout, "out\n");
  assert.equal(r.stderr, "err\n");
  const s = await w.tether(["exec", "box", "--", "sh", "-c", "kill -TERM $$"]);
  assert.equal(s.code, 143);
  const missing = await w.tether(["exec", "box", "--", "no-such-command-xyz"]);
  assert.equal(missing.code, 127);
  assert.match(missing.stderr, /no-such-command-xyz/);
});

Deno.test("the command leads its own session and process group, under its own argv[0]", async () => {
  await using w = await worldWithAgent();
  // /proc/PID/stat: pid (comm) state ppid pgrp session …; exec replaces sh, so $$ is the
  // pid the agent spawned.
  const r = await w.tether(["exec", "box", "--", "sh", "-c", "exec cat /proc/$$/stat"]);
  assert.equal(r.code, 0, r.stderr);
  const [pid, comm, , , pgrp, session] = r.stdout.split(" ");
  assert.equal(comm, "(cat)");
  assert.equal(pgrp, pid, "leads its process group");
  assert.equal(session, pid, "leads its session");
  const argv0 = await w.tether(["exec", "box", "--", "sh", "-c", 'echo "$0"']);
  assert.equal(argv0.stdout, "sh\n");
  // A file that is there but cannot be executed: 126, as a shell says.
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/script`, "#!/bin/sh\necho no\n", { mode: 0o644 });
    const denied = await w.tether(["exec", "box", "--cwd", dir, "--", "./script"]);
    assert.equal(denied.code, 126);
    assert.match(denied.stderr, /\.\/script: Permission denied/);
    await Deno.chmod(`${dir}/script`, 0o755);
    const ok = await w.tether(["exec", "box", "--cwd", dir, "--", "./script"]);
    assert.equal(ok.stdout, "no\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stdin is forwarded; EOF half-closes while output continues; -n gives /dev/null", async () => {
  await using w = await worldWithAgent();
  const r = await w.tether(["exec", "box", "--", "sh", "-c", "cat; echo after-eof"], {
    stdin: "line one\nline two\n",
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "line one\nline two\nafter-eof\n");
  const n = await w.tether(["exec", "box", "-n", "--", "sh", "-c", "wc -c"], { stdin: "ignored" });
  assert.equal(n.stdout.trim(), "0");
});

Deno.test("--cwd and --env reach the remote process", async () => {
  await using w = await worldWithAgent();
  const dir = await Deno.makeTempDir({ dir: w.home });
  const r = await w.tether([
    "exec",
    "box",
    "--cwd",
    dir,
    "--env",
    "GREETING=hi there",
    "--env",
    "EMPTY=",
    "--",
    "sh",
    "-c",
    'pwd; echo "$GREETING"; echo "[${EMPTY-unset}]"',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${Deno.realPathSync(dir)}\nhi there\n[]\n`);
  const bad = await w.tether(["exec", "box", "--cwd", "/no/such/dir", "--", "true"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /\/no\/such\/dir/);
});

Deno.test("exec and exec -t (the PTY path connect takes) start in one place: --workdir ($HOME by default), --cwd relative to it", async () => {
  await using w = await World.create();
  await w.startAgent("homebox");
  const work = Deno.realPathSync(await Deno.makeTempDir({ dir: w.home }));
  await Deno.mkdir(join(work, "sub"));
  await w.startAgent("workbox", { args: ["--workdir", work] });
  const pwd = async (args: string[]) => {
    const r = await w.tether(["exec", ...args, "--", "pwd"]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  const home = Deno.realPathSync(w.home);
  assert.equal(await pwd(["homebox"]), home);
  assert.equal(await pwd(["-t", "homebox"]), home);
  assert.equal(await pwd(["workbox"]), work);
  assert.equal(await pwd(["-t", "workbox"]), work);
  assert.equal(await pwd(["workbox", "--cwd", "sub"]), join(work, "sub"));
  assert.equal(await pwd(["-t", "workbox", "--cwd", "sub"]), join(work, "sub"));
  assert.equal(await pwd(["workbox", "--cwd", "/tmp"]), "/tmp");
  const bad = await w.tether(["agent", "run", "--workdir", join(work, "nope"), "--json"], {
    env: { TETHER_AGENT_KEY: w.keys.agent_key },
  });
  assert.equal(bad.code, 2);
  assert.match(JSON.parse(bad.stdout).error.message, /--workdir .*nope: not an existing directory/);
});

Deno.test("32 MiB of random bytes through cat arrive identical", async () => {
  await using w = await worldWithAgent();
  const data = new Uint8Array(32 * 1024 * 1024);
  for (let i = 0; i < data.length; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
  const r = await w.tether(["exec", "box", "--", "cat"], { stdin: data, timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
  assert.equal(r.stdoutBytes.length, data.length);
  assert.equal(sha(r.stdoutBytes), sha(data));
});

Deno.test({
  name: "exec's stdin arrives identical from a file, a non-blocking pipe and a socket",
  ignore: needPerl.ignore,
  fn: async () => {
    // A bulk stdin is read one chunk ahead; from a pipe or socket at once where bytes are
    // waiting (FIONREAD, then read(2)) and through Deno otherwise. A file, and a pipe or
    // socket fed in bursts with pauses between them (so both ways are taken), made
    // non-blocking by its parent (rsync's way), must all arrive whole and in order.
    needPerl.check();
    await using w = await worldWithAgent();
    const data = new Uint8Array(6 * 1024 * 1024 + 12345);
    for (let i = 0; i < data.length; i += 65536) {
      crypto.getRandomValues(data.subarray(i, i + 65536));
    }
    const file = join(w.home, "input");
    await Deno.writeFile(file, data);
    const sha = createHash("sha256").update(data).digest("hex");
    const remote = ["exec", "box", "--", "sha256sum"];
    const fromFile = new Proc(["sh", "-c", '"$@" < "$F"', "sh", ...tetherArgv(remote)], {
      env: { ...w.env(), F: file },
    });
    assert.equal((await fromFile.status).code, 0, fromFile.stderr);
    assert.equal(fromFile.stdout.split(" ")[0], sha, "from a file");
    // perl feeds the file in bursts of 100,000 bytes, a pause after every fourth.
    const feeder = (kind: "pipe" | "socket") =>
      "use Fcntl; use Socket; " +
      (kind === "pipe"
        ? "pipe(my $r, my $w) or die; fcntl($r, F_SETFL, fcntl($r, F_GETFL, 0) | O_NONBLOCK) or die; "
        : "socketpair(my $w, my $r, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die; ") +
      "my $pid = fork() // die; if (!$pid) { close $w; open(STDIN, '<&', $r) or die; " +
      "close $r; exec @ARGV or die } close $r; open(my $in, '<', $ENV{F}) or die; my $i = 0; " +
      "while (my $n = sysread($in, my $buf, 100000)) { my $o = 0; " +
      "while ($o < $n) { $o += syswrite($w, $buf, $n - $o, $o) // die } " +
      "select(undef, undef, undef, 0.005) if ++$i % 4 == 0 } close $w; waitpid($pid, 0); " +
      "exit($? >> 8)";
    for (const kind of ["pipe", "socket"] as const) {
      const p = new Proc(["perl", "-e", feeder(kind), "--", ...tetherArgv(remote)], {
        env: { ...w.env(), F: file },
      });
      assert.equal((await p.status).code, 0, `${kind}: ${p.stderr}`);
      assert.equal(p.stdout.split(" ")[0], sha, `from a ${kind}`);
    }
  },
});

Deno.test({
  name: "a bulk output's pipe is enlarged on the agent; a trickle's is not; both arrive whole",
  ignore: needPerl.ignore,
  fn: async () => {
    // The command tells on stderr how large its stdout pipe is (F_GETPIPE_SZ) before and
    // after it writes: 256 KiB once the agent saw a full 64 KiB read, unchanged for a line.
    needPerl.check();
    await using w = await worldWithAgent();
    const perl = (bytes: number) =>
      `my $b = join("", map { chr(($_ * 7) % 251) } 0 .. 65535); my $left = ${bytes}; ` +
      "my $before = fcntl(STDOUT, 1032, 0); " +
      "while ($left > 0) { my $n = $left < 65536 ? $left : 65536; " +
      "syswrite(STDOUT, $b, $n) == $n or die; $left -= $n } " +
      'printf STDERR "pipe %d %d\\n", $before, fcntl(STDOUT, 1032, 0)';
    const expected = (bytes: number) => {
      const b = new Uint8Array(65536).map((_, i) => (i * 7) % 251);
      const h = createHash("sha256");
      for (let left = bytes; left > 0; left -= 65536) {
        h.update(b.subarray(0, Math.min(65536, left)));
      }
      return h.digest("hex");
    };
    for (const [bytes, bulk] of [[8 * 1024 * 1024 + 5, true], [100, false]] as const) {
      const r = await w.tether(["exec", "box", "--", "perl", "-e", perl(bytes)], {
        timeoutMs: 60_000,
      });
      assert.equal(r.code, 0, r.stderr);
      const [before, after] = r.stderr.trim().split(" ").slice(1).map(Number);
      assert.equal(after, bulk ? Math.max(before, 262144) : before, `${bytes}: ${r.stderr}`);
      assert.equal(r.stdoutBytes.length, bytes);
      assert.equal(createHash("sha256").update(r.stdoutBytes).digest("hex"), expected(bytes));
    }
  },
});

Deno.test("exec --stream drives a process turn by turn (200 round trips)", async () => {
  await using w = await worldWithAgent();
  const p = w.spawn(["exec", "box", "--stream", "--", ...await awkEchoArgv()], { stdin: true });
  for (let i = 1; i <= 200; i++) {
    const line = JSON.stringify({ turn: i, text: "héllo" });
    await p.write(line + "\n");
    // Line N+1 is sent only after reply N arrived: any buffering deadlocks here.
    await p.waitFor(new RegExp(`"turn":${i},`), "stdout", 10_000);
  }
  await p.closeStdin();
  const st = await p.status;
  assert.equal(st.code, 0, p.stderr);
  assert.equal(p.stdout.trim().split("\n").length, 200);
});

Deno.test("exec --stream leaves shared stdin and stdout pipes blocking for the next command", async () => {
  // --stream reads a piped stdin and writes a piped stdout from the event loop
  // (non-blocking). A pipe's flags are shared: a script's next command must not find it
  // non-blocking (a read or write would fail EAGAIN instead of waiting). The flags are read
  // from /proc, as the next command sees them.
  await using w = await worldWithAgent();
  const p = new Proc(
    [
      "sh",
      "-c",
      '"$@"; echo "tether exited $?"; grep -H flags /proc/self/fdinfo/0 /proc/self/fdinfo/1; ' +
      'cat; echo "cat exited $?"',
      "sh",
      ...tetherArgv(["exec", "box", "--stream", "--", "head", "-n", "1"]),
    ],
    { stdin: true, env: w.env() },
  );
  await p.write("first\n");
  await p.waitFor(/tether exited 0/, "stdout");
  await p.write("second\n");
  await p.closeStdin();
  assert.equal((await p.status).code, 0, p.stderr);
  for (const fd of [0, 1]) {
    const flags = new RegExp(`fdinfo/${fd}:flags:\\s+([0-7]+)`).exec(p.stdout);
    assert.ok(flags, p.stdout);
    assert.equal(parseInt(flags[1], 8) & 0o4000, 0, `O_NONBLOCK is left set on fd ${fd}`);
  }
  assert.equal(
    p.stdout.replace(/.*flags:.*\n/g, ""),
    "first\ntether exited 0\nsecond\ncat exited 0\n",
  );
});

Deno.test("exec whose stdout reader goes away ends the command and exits 141, as SIGPIPE would", async () => {
  // `tether exec m -- yes | head -n 1`: once head exits, our writes fail EPIPE; the remote
  // command must not run on for ever, and the exit status says why (128 + SIGPIPE).
  // With and without --stream (stdout through the event loop, or through Deno's write).
  await using w = await worldWithAgent();
  for (const mode of [["--stream"], []]) {
    const p = new Proc([
      "bash",
      "-c",
      '"$@" | head -n 1; echo "tether exited ${PIPESTATUS[0]}"',
      "bash",
      ...tetherArgv(["exec", "box", ...mode, "--", "yes"]),
    ], { env: w.env() });
    assert.equal((await p.status).code, 0, p.stderr);
    assert.equal(p.stdout, "y\ntether exited 141\n", `${mode}: ${p.stderr}`);
  }
});

Deno.test({
  name: "exec writes all of its output to a stdout made non-blocking by its parent, once it fills",
  ignore: needPerl.ignore,
  fn: async () => {
    // A parent may hand tether a non-blocking pipe (rsync does, and so does any program that
    // set O_NONBLOCK on a pipe it shares): a full pipe then refuses a write (EAGAIN) where a
    // blocking one would wait. perl sets the flag and runs tether; the reader starts only
    // once the command has written everything (1,000,000 bytes, inside tether's 1 MiB
    // window), so the 64 KiB pipe is sure to fill. Plain, --stream, and stderr through 2>&1.
    needPerl.check();
    await using w = await worldWithAgent();
    const done = join(w.home, "written");
    // perl also writes down whether the pipe is still non-blocking once tether has exited:
    // tether must leave it as its parent set it.
    const flagsFile = join(w.home, "flags");
    const nonBlocking =
      "use Fcntl; fcntl(STDOUT, F_SETFL, fcntl(STDOUT, F_GETFL, 0) | O_NONBLOCK) or die $!; " +
      "system(@ARGV); my $st = $?; open(my $f, '>', $ENV{FLAGS}) or die $!; " +
      "print $f ((fcntl(STDOUT, F_GETFL, 0) & O_NONBLOCK) ? 'non-blocking' : 'blocking'); " +
      "close $f; exit($st >> 8)";
    for (const [mode, redirect] of [["", ""], ["--stream", ""], ["", ">&2"]]) {
      await Deno.remove(done).catch(() => {});
      const p = new Proc([
        "sh",
        "-c",
        'perl -e "$0" -- "$@" 2>&1 | { while [ ! -e "$D" ]; do sleep 0.01; done; wc -c; }',
        nonBlocking,
        ...tetherArgv([
          "exec",
          "box",
          ...(mode ? [mode] : []),
          "--",
          "sh",
          "-c",
          `head -c 1000000 /dev/zero ${redirect}; touch '${done}'`,
        ]),
      ], { env: { ...w.env(), D: done, FLAGS: flagsFile } });
      const st = await p.status;
      assert.equal(st.code, 0, p.stderr);
      assert.equal(p.stdout.trim(), "1000000", `${mode} ${redirect}: ${p.stdout}${p.stderr}`);
      assert.equal(await Deno.readTextFile(flagsFile), "non-blocking", `${mode} ${redirect}`);
    }
  },
});

Deno.test({
  name: "exec --stream with one socket as stdin and stdout (socketpair, as inetd or socat give)",
  ignore: needPerl.ignore,
  fn: async () => {
    // Both directions go through the event loop on the same socket, whose O_NONBLOCK is
    // shared: the end of stdin must not put it back in blocking mode while output still
    // flows. perl makes the socketpair, gives one end to tether as fd 0 and 1, sends a line,
    // shuts its writing side, and counts what comes back.
    needPerl.check();
    await using w = await worldWithAgent();
    const perl = "use Socket; socketpair(my $p, my $c, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die; " +
      "my $pid = fork() // die; if (!$pid) { close $p; open(STDIN, '<&', $c) or die; " +
      "open(STDOUT, '>&', $c) or die; close $c; exec @ARGV or die } close $c; " +
      'syswrite($p, "hello\\n"); shutdown($p, 1); my $n = 0; my $head = ""; ' +
      "while (my $r = sysread($p, my $buf, 65536)) { $head .= $buf if $n < 6; $n += $r } " +
      'waitpid($pid, 0); print substr($head, 0, 6), " $n ", $? >> 8, "\\n"';
    const p = new Proc([
      "perl",
      "-e",
      perl,
      "--",
      ...tetherArgv([
        "exec",
        "box",
        "--stream",
        "--",
        "sh",
        "-c",
        "cat; head -c 2000000 /dev/zero",
      ]),
    ], { env: w.env() });
    assert.equal((await p.status).code, 0, p.stderr);
    assert.equal(p.stdout, "hello\n 2000006 0\n", p.stderr);
  },
});

Deno.test("--stream with -t is a usage error; a missing command is a usage error", async () => {
  await using w = await World.create();
  const r = await w.tether(["exec", "box", "--stream", "-t", "--", "true"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--stream/);
  const j = await w.tether(["exec", "box", "--json"]);
  assert.equal(j.code, 2);
  assert.equal(JSON.parse(j.stdout).error.code, "usage");
});

Deno.test("--timeout ends the remote process group even while our stdin stays open", async () => {
  await using w = await worldWithAgent();
  const p = w.spawn([
    "exec",
    "box",
    "--json",
    "--timeout",
    "1s",
    "--",
    "sh",
    "-c",
    "sleep 60 & cat",
  ], {
    stdin: true,
  });
  const st = await p.status;
  assert.equal(st.code, 255);
  assert.equal(JSON.parse(p.stdout).error.code, "timeout");
});

Deno.test("an agent killed mid-command and restarted: session_lost and 255, never 0; nothing left running", async () => {
  await using w = await World.create();
  const agent = await w.startAgent("doomed");
  const tag = 1000 + Math.floor(Math.random() * 8000);
  const p = w.spawn([
    "exec",
    "doomed",
    "--events",
    "--",
    "sh",
    "-c",
    `echo started; sleep ${tag} & sleep ${tag + 1}`,
  ]);
  await p.waitFor(/"stdout","data":"started\\n"/, "stdout");
  const started = JSON.parse(p.stdout.split("\n")[0]);
  assert.match(started.exec, /^[0-9a-f]{12}$/);
  agent.kill("SIGKILL");
  // What the agent ran dies with it: the reaper ends the whole session.
  await eventually(async () => !(await pgrep(`sleep ${tag}`)), "the exec's processes to end");
  assert.equal(await pgrep(`sleep ${tag + 1}`), "");
  // The client waits for the machine to come back; the restarted agent does not know the
  // exit status: session_lost, never 0.
  await p.waitFor(/reconnecting/);
  await w.startAgent("doomed");
  const st = await p.status;
  assert.equal(st.code, 255);
  const events = p.stdout.trim().split("\n").map((l) => JSON.parse(l));
  const last = events.at(-1);
  assert.equal(last.type, "error");
  assert.equal(last.error.code, "session_lost");
  assert.match(last.error.message, /was running when the agent restarted/);
  assert.equal(events.filter((e) => e.type === "exit").length, 0);
  // The machine still tells what became of it.
  const list = JSON.parse((await w.tether(["sessions", "--json"])).stdout);
  assert.deepEqual(
    list.filter((s: { kind: string }) => s.kind === "exec").map((
      s: { id: string; state: string },
    ) => [s.id, s.state]),
    [[started.exec, "lost"]],
  );
  const human = await w.tether(["sessions"]);
  assert.match(human.stdout, new RegExp(`${started.exec}\\s+doomed\\s+exec\\s.*\\blost\\b`));
  const again = await w.tether(["exec", "--attach", started.exec, "--json"]);
  assert.equal(again.code, 255);
  assert.equal(JSON.parse(again.stdout).error.code, "session_lost");
});

Deno.test("a relay restart mid-command: the exec resumes byte-exact both ways and returns its code", async () => {
  await using w = await worldWithAgent();
  const p = w.spawn(["exec", "box", "--", "sh", "-c", "cat; echo done; exit 7"], { stdin: true });
  await p.write("one\n");
  await p.waitFor(/^one$/m, "stdout");
  await w.stopRelay("SIGKILL");
  await p.waitFor(/reconnecting/);
  await p.write("two\n"); // written while nothing carries it: it waits, and goes once
  await w.startRelay();
  await p.waitFor(/^two$/m, "stdout", 30_000);
  await p.closeStdin();
  const st = await p.status;
  assert.equal(st.code, 7, p.stderr);
  assert.equal(p.stdout, "one\ntwo\ndone\n");
  assert.match(p.stderr, /reconnected/);
});

Deno.test("a relay that stays away past the reconnect window: session_lost, and the exec runs on to be attached", async () => {
  await using w = await worldWithAgent();
  const flag = join(w.home, "go");
  const p = w.spawn(
    [
      "exec",
      "box",
      "--events",
      "--",
      "sh",
      "-c",
      `echo before; while [ ! -e ${flag} ]; do sleep 0.05; done; echo after; exit 5`,
    ],
    { env: { TETHER_RECONNECT_WINDOW: "1s" } },
  );
  await p.waitFor(/"data":"before\\n"/, "stdout");
  const id = JSON.parse(p.stdout.split("\n")[0]).exec;
  await w.stopRelay("SIGKILL");
  const st = await p.status;
  assert.equal(st.code, 255);
  const err = JSON.parse(p.stdout.trim().split("\n").at(-1)!).error;
  assert.equal(err.code, "session_lost");
  assert.match(err.hint, new RegExp(`tether exec --attach ${id}`));
  // Nobody watched while it went on; its output and exit status were kept.
  await Deno.writeTextFile(flag, "");
  await w.startRelay();
  await w.agents[0].waitFor(/online as box[\s\S]*online as box/);
  const r = await w.tether(["exec", "--attach", id]);
  assert.equal(r.code, 5, r.stderr);
  assert.equal(r.stdout, "before\nafter\n");
});

Deno.test("--events prints started, stdout/stderr (UTF-8 or base64), then exactly one exit", async () => {
  await using w = await worldWithAgent();
  const r = await w.tether([
    "exec",
    "box",
    "--events",
    "--",
    "sh",
    "-c",
    "printf 'héllo\\n'; printf 'oops\\n' >&2; printf '\\377\\376'; exit 3",
  ]);
  assert.equal(r.code, 3);
  const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(events[0].type, "started");
  assert.equal(typeof events[0].pid, "number");
  const bytes = (type: string) =>
    events.filter((e) => e.type === type).flatMap((e) => [
      ...(e.encoding === "base64"
        ? Uint8Array.from(atob(e.data), (c) => c.charCodeAt(0))
        : new TextEncoder().encode(e.data)),
    ]);
  assert.deepEqual(bytes("stdout"), [...new TextEncoder().encode("héllo\n"), 0xff, 0xfe]);
  assert.ok(events.some((e) => e.encoding === "base64"), "invalid UTF-8 goes out as base64");
  assert.ok(events.some((e) => e.type === "stderr" && e.data === "oops\n"));
  assert.deepEqual(events.at(-1), { type: "exit", code: 3, signal: null });
  assert.equal(events.filter((e) => e.type === "exit" || e.type === "error").length, 1);
});

Deno.test("--events passes every byte on as it arrives: no byte that cannot start a character waits", async () => {
  await using w = await worldWithAgent();
  for (const tail of ["\\370", "\\377", "\\300", "\\365"]) {
    // The process writes one such byte, then waits for us: the event must come before.
    const p = w.spawn([
      "exec",
      "box",
      "--events",
      "--",
      "sh",
      "-c",
      `printf 'x${tail}'; cat >/dev/null`,
    ], {
      stdin: true,
    });
    await p.waitFor(/"encoding":"base64"/, "stdout");
    await p.closeStdin();
    assert.equal((await p.status).code, 0);
  }
  // A real lead byte is held for the rest of its character, which comes in the next chunk.
  const p = w.spawn([
    "exec",
    "box",
    "--events",
    "--",
    "sh",
    "-c",
    "printf 'a\\303'; read _; printf '\\251'",
  ], {
    stdin: true,
  });
  await p.waitFor(/"data":"a"/, "stdout");
  await p.write("go\n");
  await p.waitFor(/"data":"é"/, "stdout");
  assert.equal((await p.status).code, 0);
});

Deno.test("unknown and offline machines: machine_not_found and machine_offline", async () => {
  await using w = await World.create();
  const a = await w.startAgent("sleepy");
  const nf = await w.tether(["exec", "nosuch", "--json", "--", "true"]);
  assert.equal(nf.code, 255);
  assert.equal(JSON.parse(nf.stdout).error.code, "machine_not_found");
  await a.stop();
  await w.waitMachines((ms) => ms.length === 1 && !ms[0].online);
  const off = await w.tether(["exec", "sleepy", "--json", "--", "true"]);
  assert.equal(off.code, 255);
  assert.equal(JSON.parse(off.stdout).error.code, "machine_offline");
});

Deno.test("50 concurrent execs on one agent each get their own output and code", async () => {
  await using w = await worldWithAgent();
  const runs = Array.from(
    { length: 50 },
    (_, i) =>
      w.tether(["exec", "box", "--", "sh", "-c", `sleep 0.5; echo run-${i}; exit ${i % 7}`], {
        timeoutMs: 60_000,
      }),
  );
  const results = await Promise.all(runs);
  results.forEach((r, i) => {
    assert.equal(r.stdout, `run-${i}\n`, r.stderr);
    assert.equal(r.code, i % 7);
  });
});

Deno.test("a reader that stops reading keeps relay and agent memory bounded", async () => {
  await using w = await World.create();
  const agent = await w.startAgent("flood");
  // Our test never reads this process's stdout pipe past the OS buffer.
  const [cmd, ...args] = tetherArgv(["exec", "flood", "--", "yes"]);
  const child = new Deno.Command(cmd, {
    args,
    env: w.env(),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  await reader.read(); // the stream is flowing
  const sample = async () => ({ relay: await rss(w.relay!.pid), agent: await rss(agent.pid) });
  const before = await sample();
  // Back-pressure reached the remote process: `yes` sleeps in a write to its full pipe, so
  // nothing more is read, sent or buffered anywhere. Memory is measured then.
  await eventually(async () => {
    const out = await new Deno.Command("pgrep", { args: ["-P", String(agent.pid), "-x", "yes"] })
      .output();
    const pid = new TextDecoder().decode(out.stdout).trim();
    if (!pid) return false;
    // Through cat: Deno reads /proc only with --allow-all.
    const wchan = await new Deno.Command("cat", { args: [`/proc/${pid}/wchan`] }).output();
    return /pipe/.test(new TextDecoder().decode(wchan.stdout));
  }, "the remote `yes` to block on its full pipe");
  const after = await sample();
  const MiB = 1024 * 1024;
  assert.ok(after.relay - before.relay < 16 * MiB, `relay grew ${after.relay - before.relay}`);
  assert.ok(after.agent - before.agent < 16 * MiB, `agent grew ${after.agent - before.agent}`);
  assert.ok(after.relay < 200 * MiB && after.agent < 200 * MiB, JSON.stringify(after));
  child.kill("SIGKILL");
  await reader.cancel();
  await child.status;
});

Deno.test("exec -t: a PTY with --cwd and --env, the exit code, and --timeout", async () => {
  await using w = await worldWithAgent();
  const r = await w.tether([
    "exec",
    "-t",
    "box",
    "--cwd",
    "/tmp",
    "--env",
    "WHO=pty",
    "--",
    "sh",
    "-c",
    'tty; pwd; echo "$WHO"; exit 4',
  ]);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stdout, /^\/dev\/pts\/\d+\r\n\/tmp\r\npty\r\n$/);
  const t = await w.tether(["exec", "-t", "box", "--timeout", "1s", "--json", "--", "sleep", "30"]);
  assert.equal(t.code, 255);
  assert.equal(JSON.parse(t.stdout.trim().split("\n").at(-1)!).error.code, "timeout");
  await eventually(
    async () => JSON.parse((await w.tether(["sessions", "--json"])).stdout).length === 0,
    "the timed-out session to be gone",
  );
});
