/**
 * Issue 16: `tether forward` (ssh -L through the relay) and `tether proxy` (ssh's
 * ProxyCommand), through a real relay and agent: a real HTTP server (python3 -m
 * http.server) on the agent's side, half-close both ways, failures that leave the other
 * connections alone, and OpenSSH's ssh logging in to a test sshd through `tether proxy`.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { Sshd } from "../scripts/bench/openssh.ts";
import {
  eventually,
  freePort,
  hasCommand,
  type Proc,
  requirement,
  tetherArgv,
  World,
} from "./helpers.ts";

const needPython = requirement(
  hasCommand("python3") ? undefined : "forward tests need python3 (Debian package `python3`)",
);
const needSshd = requirement(
  ["/usr/sbin/sshd", "/usr/local/sbin/sshd"].some((p) => {
      try {
        return Deno.statSync(p).isFile;
      } catch {
        return false;
      }
    }) && hasCommand("ssh", ["-V"])
    ? undefined
    : "the ProxyCommand test needs sshd and ssh (Debian packages `openssh-server`, `openssh-client`)",
);

async function waitListening(port: number): Promise<void> {
  await eventually(async () => {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return true;
    } catch {
      return false;
    }
  }, `something listening on ${port}`);
}

/** `tether forward box SPEC… --json`, once it listens: the local ports, in order. */
async function forward(w: World, specs: string[]): Promise<{ proc: Proc; ports: number[] }> {
  const proc = w.spawn(["forward", "box", ...specs, "--json"]);
  const m = await proc.waitFor(/^\{.*"forwards".*\}$/m, "stdout");
  const ports = (JSON.parse(m[0]) as { forwards: { port: number }[] }).forwards.map((f) => f.port);
  return { proc, ports };
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

Deno.test({
  name: "forward: python's http.server: 100 MB sha256-exact, then 20 connections at once",
  ignore: needPython.ignore,
  async fn() {
    needPython.check();
    await using w = await World.create();
    await w.startAgent("box");
    const root = join(w.home, "www");
    await Deno.mkdir(root);
    const big = new Uint8Array(100 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
    await Deno.writeFile(join(root, "big.bin"), big);
    const small = big.subarray(0, 1024 * 1024);
    await Deno.writeFile(join(root, "small.bin"), small);
    const httpPort = freePort();
    const http = new Deno.Command("python3", {
      args: ["-m", "http.server", String(httpPort), "--bind", "127.0.0.1"],
      cwd: root,
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      await waitListening(httpPort);
      const { ports: [port] } = await forward(w, [`0:127.0.0.1:${httpPort}`]);
      const got = new Uint8Array(
        await (await fetch(`http://127.0.0.1:${port}/big.bin`)).arrayBuffer(),
      );
      assert.equal(got.length, big.length);
      assert.equal(sha(got), sha(big));
      const many = await Promise.all(Array.from({ length: 20 }, async () => {
        const r = await fetch(`http://127.0.0.1:${port}/small.bin`);
        return sha(new Uint8Array(await r.arrayBuffer()));
      }));
      assert.deepEqual(new Set(many), new Set([sha(small)]));
    } finally {
      http.kill();
      await http.status;
    }
  },
});

Deno.test("forward: half-close both ways, several forwards, a refused connection leaves the rest", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  // A server on the agent's side that reads to the end, then answers with the count.
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serverPort = (server.addr as Deno.NetAddr).port;
  const serving = (async () => {
    for await (const c of server) {
      (async () => {
        let n = 0;
        const buf = new Uint8Array(65536);
        for (;;) {
          const r = await c.read(buf);
          if (r === null) break;
          n += r;
        }
        await c.write(new TextEncoder().encode(`got ${n}\n`));
        c.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  const closed = freePort();
  const { proc, ports } = await forward(w, [
    `0:127.0.0.1:${serverPort}`,
    `127.0.0.1:0:127.0.0.1:${closed}`,
  ]);
  try {
    const talk = async (port: number, bytes: number) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await c.write(new Uint8Array(bytes));
      await c.closeWrite();
      let text = "";
      const buf = new Uint8Array(1024);
      for (;;) {
        const r = await c.read(buf).catch(() => null);
        if (r === null) break;
        text += new TextDecoder().decode(buf.subarray(0, r));
      }
      c.close();
      return text;
    };
    // Refused on the machine's side: that connection is closed, with a line saying why.
    assert.equal(await talk(ports[1], 10), "");
    await proc.waitFor(new RegExp(`cannot connect to 127\\.0\\.0\\.1:${closed}`));
    // The other forward works, several at once, each with its own half-close.
    const answers = await Promise.all([1, 3_000_000, 0].map((n) => talk(ports[0], n)));
    assert.deepEqual(answers, ["got 1\n", "got 3000000\n", "got 0\n"]);
    // More connections at once than one relay connection carries streams (256): the rest
    // wait for a place, and every one is served.
    const pool = await Promise.all(Array.from({ length: 300 }, () => talk(ports[0], 2)));
    assert.deepEqual(new Set(pool), new Set(["got 2\n"]));
    assert.equal(pool.length, 300);
  } finally {
    server.close();
    await serving;
  }
});

Deno.test("forward and proxy: bad specs, an agent that refuses, an unreachable target", async () => {
  await using w = await World.create();
  await w.startAgent("box", { args: ["--no-forward"] });
  let r = await w.tether(["forward", "box", "8080:localhost"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /not a forward: '8080:localhost'/);
  r = await w.tether(["proxy", "box", "nohost"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /not a HOST:PORT/);
  r = await w.tether(["proxy", "box", `127.0.0.1:${freePort()}`], { stdin: "x" });
  assert.equal(r.code, 255);
  assert.match(r.stderr, /does not forward connections.*--no-forward/);
  await using w2 = await World.create();
  await w2.startAgent("box");
  r = await w2.tether(["proxy", "box", `127.0.0.1:${freePort()}`], { stdin: "x" });
  assert.equal(r.code, 255);
  assert.match(r.stderr, /the machine cannot connect to 127\.0\.0\.1:\d+/);
  r = await w2.tether(["proxy", "box", `127.0.0.1:1`, "--json"], { stdin: "x" });
  assert.equal(JSON.parse(r.stdout).error.code, "forward_failed");
});

Deno.test({
  name: "proxy: OpenSSH's ssh logs in to an sshd on the agent's side through ProxyCommand",
  ignore: needSshd.ignore,
  async fn() {
    needSshd.check();
    await using w = await World.create();
    await w.startAgent("box");
    const sshd = await Sshd.start(w.home);
    if (!(sshd instanceof Sshd)) throw new Error(sshd.skipped);
    try {
      const proxy = tetherArgv(["proxy", "box", "%h:%p"]).map((a) => `'${a}'`).join(" ");
      const argv = sshd.argv("echo proxied-$((6*7)); exit 3", {
        extra: ["-o", `ProxyCommand=${proxy}`],
      });
      const out = await new Deno.Command(argv[0], {
        args: argv.slice(1),
        env: w.env(),
        clearEnv: true,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const d = new TextDecoder();
      assert.equal(out.code, 3, d.decode(out.stderr));
      assert.equal(d.decode(out.stdout), "proxied-42\n");
    } finally {
      await sshd.stop();
    }
  },
});

Deno.test("proxy: the far end closing ends proxy once all it sent is out, though stdin is open", async () => {
  await using w = await World.create();
  await w.startAgent("box");
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (server.addr as Deno.NetAddr).port;
  const served = (async () => {
    const c = await server.accept();
    await c.write(new Uint8Array(300_000).fill(120));
    await c.write(new TextEncoder().encode("\nthe end\n"));
    await c.closeWrite();
    const n = await c.read(new Uint8Array(64));
    c.close();
    return n;
  })();
  const p = w.spawn(["proxy", "box", `127.0.0.1:${port}`], { stdin: true });
  // stdin stays open, as ssh keeps it: the far end's close is what ends the proxy.
  assert.equal((await p.ended()).code, 0, p.stderr);
  assert.equal(p.stdout, "x".repeat(300_000) + "\nthe end\n");
  assert.equal(await served, null);
  server.close();
});
