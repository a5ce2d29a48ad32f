/**
 * Issue 13: a relay whose disk fills up, and a data dir that cannot be written, on a real
 * tmpfs (mounting one needs root; CI runs as root).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { eventually, requirement, run, World } from "./helpers.ts";

const root = requirement(
  Deno.uid() === 0 ? undefined : "the disk tests mount a tmpfs, which needs root (CI runs as root)",
);

async function sh(...argv: string[]): Promise<void> {
  const out = await new Deno.Command(argv[0], { args: argv.slice(1), stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

async function mountTmpfs(dir: string, size: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await sh("mount", "-t", "tmpfs", "-o", `size=${size},mode=0700`, "tmpfs", dir);
}

async function unmount(dir: string): Promise<void> {
  await sh("umount", "-l", dir).catch(() => {});
}

/** Writes zeros into `file` until the file system is full; returns its size. */
function fill(file: string): number {
  const f = Deno.openSync(file, { write: true, create: true });
  let total = 0;
  try {
    for (const size of [1 << 16, 1 << 12, 1]) {
      const chunk = new Uint8Array(size);
      for (;;) {
        try {
          total += f.writeSync(chunk);
        } catch {
          break;
        }
      }
    }
  } finally {
    f.close();
  }
  return total;
}

async function status(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url);
  return { status: res.status, body: await res.text() };
}

Deno.test({
  name: "a full disk: reads and new dials work, writes fail as relay_unavailable, /readyz says so",
  ignore: root.ignore,
  async fn() {
    root.check();
    let mounted = "";
    await using w = await World.create({
      prepare: async (w) => {
        mounted = w.relayDir;
        await mountTmpfs(w.relayDir, "4m");
      },
    });
    try {
      await w.startAgent("box");
      const http = w.url.replace("ws://", "http://");
      assert.equal((await w.tether(["exec", "box", "--", "true"])).code, 0);
      assert.equal((await status(`${http}/readyz`)).status, 200);

      const filler = join(w.relayDir, "filler");
      assert.ok(fill(filler) > 0);
      // /readyz answers are reused for a second.
      const ready = await eventually(async () => {
        const r = await status(`${http}/readyz`);
        return r.status === 503 ? r : undefined;
      }, "/readyz to say not ready");
      assert.match(ready.body, /not ready: .*No space left on device/);
      assert.equal((await status(`${http}/healthz`)).status, 200, "liveness is not readiness");

      // Reading, and dialing with a key (no write per key check), keep working.
      const ms = await w.tether(["machines", "--json"]);
      assert.equal(ms.code, 0, ms.stdout + ms.stderr);
      assert.equal(JSON.parse(ms.stdout)[0].online, true);
      // What must be written first (the audit row of a command) fails with its own code.
      const x = await w.tether(["exec", "box", "--json", "--", "true"]);
      assert.equal(x.code, 255);
      const err = JSON.parse(x.stdout).error;
      assert.equal(err.code, "relay_unavailable");
      assert.match(err.message, /audit log/);
      const human = await w.tether(["exec", "box", "--", "true"]);
      assert.match(human.stderr, /cannot record this in its audit log/);
      assert.doesNotMatch(human.stderr, /bug/);
      // Admin writes say what failed, too.
      const key = await run([
        "relay",
        "keys",
        "create",
        "--data-dir",
        w.relayDir,
        "--workspace",
        w.keys.workspace,
        "--role",
        "client",
        "--json",
      ], { env: w.env() });
      assert.equal(key.code, 1, key.stdout);
      assert.equal(JSON.parse(key.stdout).error.code, "relay_unavailable");

      // Free the space: the relay recovers by itself.
      await Deno.remove(filler);
      await eventually(
        async () => (await status(`${http}/readyz`)).status === 200,
        "/readyz to say ready again",
      );
      const again = await w.tether(["exec", "box", "--", "echo", "back"]);
      assert.equal(again.stdout, "back\n", again.stderr);
    } finally {
      await w.stopRelay();
      await unmount(mounted);
    }
  },
});

Deno.test({
  name: "a read-only or unusable data dir is a plain error naming the path and the reason",
  ignore: root.ignore,
  async fn() {
    root.check();
    const home = await Deno.makeTempDir({ prefix: "tether-ro-" });
    const dir = join(home, "relay");
    try {
      await mountTmpfs(dir, "4m");
      const env = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", HOME: home, NO_COLOR: "1" };
      const init = await run(["relay", "init", "--data-dir", dir], { env });
      assert.equal(init.code, 0, init.stderr);
      await sh("mount", "-o", "remount,ro", dir);
      for (
        const args of [
          ["relay", "init", "--data-dir", dir],
          ["relay", "serve", "--listen", "127.0.0.1:0", "--data-dir", dir],
          ["relay", "init", "--data-dir", join(dir, "sub")],
        ]
      ) {
        const r = await run(args, { env, timeoutMs: 15_000 });
        assert.equal(r.code, 1, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, new RegExp(`tether: cannot use the relay's data dir ${dir}`));
        assert.match(r.stderr, /[Rr]ead-only|readonly/);
        assert.doesNotMatch(r.stderr, /bug/);
        const j = await run([...args, "--json"], { env, timeoutMs: 15_000 });
        assert.equal(JSON.parse(j.stdout).error.code, "relay_unavailable");
      }
    } finally {
      await unmount(dir);
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "an agent whose audit log's disk is full runs nothing, says why, and runs again once there is room",
  ignore: root.ignore,
  async fn() {
    root.check();
    await using w = await World.create();
    const dir = join(w.home, "auditdisk");
    await mountTmpfs(dir, "1m");
    try {
      const log = join(dir, "audit.jsonl");
      await w.startAgent("box", { args: ["--audit-log", log] });
      // (A log with a line already may still take more within its last page: start empty.)
      const filler = join(dir, "filler");
      assert.ok(fill(filler) > 0);
      const marker = join(w.home, "ran");
      const x = await w.tether(["exec", "box", "--json", "--", "touch", marker]);
      assert.equal(x.code, 255, x.stdout + x.stderr);
      const err = JSON.parse(x.stdout).error;
      assert.equal(err.code, "internal");
      assert.match(err.message, /cannot write its audit log/);
      assert.throws(() => Deno.statSync(marker), "nothing ran unrecorded");
      await Deno.remove(filler);
      const again = await w.tether(["exec", "box", "--", "touch", marker]);
      assert.equal(again.code, 0, again.stderr);
      const lines = Deno.readTextFileSync(log).trim().split("\n").map((l) => JSON.parse(l));
      assert.deepEqual(lines.at(-1).argv, ["touch", marker]);
    } finally {
      await w.stopRelay();
      await unmount(dir);
    }
  },
});
