/**
 * Issue 13: exec that outlives its watcher (--detach, --attach, retention, a lost client),
 * and processes that die with the agent, through a real relay and agent.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { eventually, pgrep, tetherArgv, World } from "./helpers.ts";
import { hasTmux, Tmux } from "./tmux.ts";

async function execs(w: World) {
  const r = await w.tether(["sessions", "--json"]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  return (JSON.parse(r.stdout) as {
    id: string;
    kind: string;
    state?: string;
    exit_code?: number;
    clients: number;
  }[]).filter((s) => s.kind === "exec");
}

Deno.test("exec --detach prints the id and exits 0; --attach streams from the start (or --offset) and returns the code", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const flag = join(w.home, "go");
  const d = await w.tether([
    "exec",
    "--detach",
    "box",
    "--",
    "sh",
    "-c",
    `echo one; echo err >&2; while [ ! -e ${flag} ]; do sleep 0.05; done; echo two; exit 3`,
  ]);
  assert.equal(d.code, 0, d.stderr);
  const id = d.stdout.trim();
  assert.match(id, /^[0-9a-f]{12}$/);
  assert.match(d.stderr, new RegExp(`tether exec --attach ${id}`));
  const [running] = await execs(w);
  assert.equal(running.id, id);
  assert.equal(running.state, "running");
  const human = await w.tether(["sessions", "box"]);
  assert.match(human.stdout, new RegExp(`${id}\\s+box\\s+exec\\s.*running`));

  // Watch it: what it printed before we came, then the rest, then its exit code.
  const p = w.spawn(["exec", "--attach", id]);
  await p.waitFor(/^one$/m, "stdout");
  await p.waitFor(/^err$/m, "stderr");
  await Deno.writeTextFile(flag, "");
  const st = await p.status;
  assert.equal(st.code, 3, p.stderr);
  assert.equal(p.stdout, "one\ntwo\n");
  // Ended, it is kept: again from the start, from an offset, as JSON events; a prefix will do.
  const again = await w.tether(["exec", "--attach", id.slice(0, 6)]);
  assert.equal(again.code, 3);
  assert.equal(again.stdout, "one\ntwo\n");
  const tail = await w.tether(["exec", "box", "--attach", id, "--offset", "4"]);
  assert.equal(tail.stdout, "two\n");
  assert.equal(tail.code, 3);
  const ev = await w.tether(["exec", "--attach", id, "--events"]);
  const events = ev.stdout.trim().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(events.at(-1), { type: "exit", code: 3, signal: null });
  const [ended] = await execs(w);
  assert.deepEqual([ended.state, ended.exit_code], ["exited", 3]);
  assert.match((await w.tether(["sessions"])).stdout, new RegExp(`${id}.*exited 3`));

  // JSON, and a detached command gets /dev/null as stdin.
  const j = await w.tether(["exec", "--detach", "box", "--json", "--", "sh", "-c", "wc -c"], {
    stdin: "ignored",
  });
  const o = JSON.parse(j.stdout);
  assert.equal(o.machine, "box");
  const out = await w.tether(["exec", "--attach", o.exec]);
  assert.equal(out.stdout.trim(), "0");

  // Unknown ids and misuse.
  const none = await w.tether(["exec", "--attach", "0123456789ab", "--json"]);
  assert.equal(none.code, 255);
  assert.equal(JSON.parse(none.stdout).error.code, "session_not_found");
  const both = await w.tether(["exec", "--attach", id, "box", "--", "true"]);
  assert.equal(both.code, 2);
});

Deno.test("exec keeps output bounded with nobody watching; a watcher is told what was dropped", async () => {
  await using w = await World.create();
  const RING = 524288; // the least --ring-bytes takes
  await w.startAgent("chatty", { args: ["--ring-bytes", String(RING)] });
  const d = await w.tether([
    "exec",
    "--detach",
    "chatty",
    "--",
    "sh",
    "-c",
    "head -c 800000 /dev/zero | tr '\\0' x; echo; echo tail",
  ]);
  const id = d.stdout.trim();
  await eventually(async () => (await execs(w))[0]?.state === "exited", "the exec to end");
  const r = await w.tether(["exec", "--attach", id]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdoutBytes.length, RING, "the newest 512 KiB");
  assert.match(r.stdout, /x\ntail\n$/);
  assert.match(r.stderr, new RegExp(`tether: ${800006 - RING} bytes of stdout are no longer kept`));
  const ev = await w.tether(["exec", "--attach", id, "--events"]);
  const dropped = ev.stdout.trim().split("\n").map((l) => JSON.parse(l)).find((e) =>
    e.type === "dropped"
  );
  assert.deepEqual(dropped, { type: "dropped", stream: "stdout", bytes: 800006 - RING });
  const small = await w.tether(["agent", "run", "--ring-bytes", "65536", "--json"]);
  assert.equal(small.code, 2, "a ring smaller than a quarter window would stall");
});

Deno.test("an exec outlives a client killed with -9, and one told SIGTERM (which says how to reattach)", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const flag = join(w.home, "go");
  const script = `echo a; while [ ! -e ${flag} ]; do sleep 0.05; done; echo b; exit 4`;
  const p = w.spawn(["exec", "box", "--events", "--", "sh", "-c", script]);
  await p.waitFor(/"data":"a\\n"/, "stdout");
  const id = JSON.parse(p.stdout.split("\n")[0]).exec;
  p.kill("SIGKILL");
  await p.status;
  const q = w.spawn(["exec", "box", "--", "sh", "-c", script.replace("exit 4", "exit 6")]);
  await q.waitFor(/^a$/m, "stdout");
  q.kill("SIGTERM");
  const st = await q.status;
  assert.equal(st.code, 143);
  const m = /SIGTERM: left exec ([0-9a-f]{12}) running on box; follow it: tether exec --attach \1/
    .exec(q.stderr);
  assert.ok(m, q.stderr);
  await Deno.writeTextFile(flag, "");
  const r = await w.tether(["exec", "--attach", id]);
  assert.equal(r.code, 4, r.stderr);
  assert.equal(r.stdout, "a\nb\n");
  const r2 = await w.tether(["exec", "--attach", m[1]]);
  assert.equal(r2.code, 6, r2.stderr);
  assert.equal(r2.stdout, "a\nb\n");
});

Deno.test("a second Ctrl-C or sessions kill ends an exec; an ended exec is forgotten after --exec-retention", async () => {
  await using w = await World.create();
  await w.startAgent("box", { args: ["--exec-retention", "2s"] });
  const d = await w.tether(["exec", "--detach", "box", "--", "sleep", "300"]);
  const id = d.stdout.trim();
  const watcher = w.spawn(["exec", "--attach", id]);
  await eventually(async () => (await execs(w))[0]?.clients === 1, "the watcher");
  const k = await w.tether(["sessions", "kill", id, "--json"]);
  assert.equal(k.code, 0, k.stdout + k.stderr);
  assert.equal((await watcher.status).code, 143, "the watcher gets the exit status: SIGTERM");
  assert.match((await w.tether(["sessions"])).stdout, new RegExp(`${id}.*killed \\(SIGTERM\\)`));

  const p = w.spawn(["exec", "box", "--", "sleep", "301"]);
  await eventually(async () => await pgrep("sleep 301"), `the command to start: ${p.stderr}`);
  p.kill("SIGINT"); // forwarded to the command … which sleep takes as the end, so:
  await p.status;
  const q = w.spawn(["exec", "box", "--", "sh", "-c", "trap '' INT; echo up; sleep 302"]);
  await q.waitFor(/^up$/m, "stdout");
  q.kill("SIGINT"); // ignored by the command
  await eventually(async () => await pgrep("sleep 302"), "still running");
  q.kill("SIGINT"); // the second one ends it
  const st = await q.status;
  assert.equal(st.code, 255);
  assert.match(q.stderr, /interrupted: the command was ended/);
  await eventually(async () => !(await pgrep("sleep 302")), "the command to end");

  // Two seconds after the end, the kept ones are forgotten.
  await eventually(
    async () => (await execs(w)).length === 0,
    "ended execs to be forgotten after --exec-retention",
  );
  const gone = await w.tether(["exec", "--attach", id, "box", "--json"]);
  assert.equal(JSON.parse(gone.stdout).error.code, "session_not_found");
});

Deno.test({
  name: "kill -9 of the agent ends a connect session's processes too (background jobs included)",
  ignore: !hasTmux(),
  async fn() {
    await using w = await World.create();
    const agent = await w.startAgent("shell");
    const tag = 2000 + Math.floor(Math.random() * 8000);
    await using t = await Tmux.start(tetherArgv(["connect", "shell"]), {
      env: w.env({ TERM: "xterm-256color" }),
    });
    await t.waitFor(/attached —/);
    // A job in the background (its own process group), and one in the foreground.
    await t.line(`sleep ${tag} & sh -c 'sleep ${tag + 1} & sleep ${tag + 2}'`);
    await eventually(async () => await pgrep(`sleep ${tag + 2}`), "the commands to start");
    agent.kill("SIGKILL");
    await eventually(async () => {
      const left = await Promise.all([tag, tag + 1, tag + 2].map((n) => pgrep(`sleep ${n}`)));
      return left.every((x) => x === "");
    }, "every process of the session to end");
    // Back: the session is gone, and the client says so once, with what to do.
    await w.startAgent("shell");
    await t.waitFor(
      /session [0-9a-f]{12} ended while we were away[\s\S]*--new[\s\S]*\[exited 255\]/,
      30_000,
    );
  },
});

Deno.test("resume with stdin backed up: nothing spins, every byte arrives once", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const flag = join(w.home, "go");
  // The command reads nothing until told: 3 MiB of stdin fill every window on the way.
  const p = w.spawn([
    "exec",
    "box",
    "--",
    "sh",
    "-c",
    `while [ ! -e ${flag} ]; do sleep 0.05; done; wc -c`,
  ], { stdin: true });
  const chunk = new Uint8Array(64 * 1024).fill(120);
  const writing = (async () => {
    for (let i = 0; i < 48; i++) await p.write(chunk);
    await p.closeStdin();
  })();
  await eventually(async () => (await execs(w))[0]?.state === "running", "the exec");
  await w.stopRelay("SIGKILL");
  await p.waitFor(/reconnecting/);
  await w.startRelay();
  await p.waitFor(/reconnected/, "stderr", 30_000);
  await Deno.writeTextFile(flag, "");
  const st = await p.ended();
  await writing;
  assert.equal(st.code, 0, p.stderr);
  assert.equal(p.stdout.trim(), String(48 * 64 * 1024));
});

Deno.test("--timeout covers what the command leaves running; a failing local write is tether's failure", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const tag = 4000 + Math.floor(Math.random() * 4000);
  const t = await w.tether([
    "exec",
    "box",
    "--timeout",
    "1s",
    "--json",
    "--",
    "sh",
    "-c",
    `sleep ${tag} & echo hi`,
  ]);
  assert.equal(t.code, 255);
  assert.equal(JSON.parse(t.stdout.trim().split("\n").at(-1)!).error.code, "timeout");
  await eventually(async () => !(await pgrep(`sleep ${tag}`)), "the background job to be ended");
  // Our stdout is a full device: not the command's exit status, but tether's failure.
  const full = await new Deno.Command("sh", {
    args: [
      "-c",
      `${
        tetherArgv(["exec", "box", "--", "echo", "hi"]).map((a) => `'${a}'`).join(" ")
      } > /dev/full`,
    ],
    env: w.env(),
    clearEnv: true,
    stderr: "piped",
  }).output();
  assert.equal(full.code, 255);
  assert.match(new TextDecoder().decode(full.stderr), /cannot write the command's output here/);
});
