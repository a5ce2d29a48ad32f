/**
 * The runtime's floor for a turn (issue 18): the naive three-process Deno chain tether is
 * held against. No protocol, no framing, no flow control: a client copies its stdin to a TCP
 * socket and the socket to its stdout; a relay copies bytes between the two sockets it
 * accepts (the agent's first, then the client's); an agent connects, spawns the command and
 * copies the socket to its stdin and its stdout to the socket. Plain read/write loops with
 * reused buffers, TCP_NODELAY everywhere, synchronous writes to the client's stdout.
 *
 *   deno run -A scripts/bench/chain.ts relay            prints "listening PORT"
 *   deno run -A scripts/bench/chain.ts agent PORT -- CMD [ARG…]
 *   deno run -A scripts/bench/chain.ts client PORT
 */

const BUF = 64 * 1024;

async function copy(
  from: { read(b: Uint8Array): Promise<number | null> },
  to: (b: Uint8Array) => Promise<unknown> | unknown,
): Promise<void> {
  const buf = new Uint8Array(BUF);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) return;
    await to(buf.subarray(0, n));
  }
}

async function writeAll(w: { write(b: Uint8Array): Promise<number> }, b: Uint8Array) {
  for (let off = 0; off < b.length;) off += await w.write(b.subarray(off));
}

async function relay(): Promise<void> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(`listening ${(l.addr as Deno.NetAddr).port}`);
  const agent = await l.accept();
  agent.setNoDelay(true);
  // One client at a time; the agent's stream carries on between them.
  let current: Deno.Conn | undefined;
  copy(agent, async (b) => {
    if (current) await writeAll(current, b).catch(() => {});
  }).catch(() => {});
  for (;;) {
    const c = await l.accept();
    c.setNoDelay(true);
    current = c;
    await copy(c, (b) => writeAll(agent, b)).catch(() => {});
    current = undefined;
    c.close();
  }
}

async function agent(port: number, cmd: string[]): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const stdin = child.stdin.getWriter();
  const out = child.stdout.getReader({ mode: "byob" });
  let buf = new ArrayBuffer(BUF);
  await Promise.all([
    copy(conn, (b) => stdin.write(b.slice())),
    (async () => {
      for (;;) {
        const r = await out.read(new Uint8Array(buf));
        if (r.done) return;
        await writeAll(conn, r.value);
        buf = r.value.buffer as ArrayBuffer;
      }
    })(),
  ]);
}

async function client(port: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const toStdout = (b: Uint8Array) => {
    for (let off = 0; off < b.length;) off += Deno.stdout.writeSync(b.subarray(off));
  };
  await Promise.race([
    copy(Deno.stdin, (b) => writeAll(conn, b)).then(() => conn.closeWrite()),
    copy(conn, toStdout),
  ]);
}

const [role, port, ...rest] = Deno.args;
if (role === "relay") await relay();
else if (role === "agent") await agent(Number(port), rest[0] === "--" ? rest.slice(1) : rest);
else if (role === "client") await client(Number(port));
else {
  console.error("usage: chain.ts relay | agent PORT -- CMD… | client PORT");
  Deno.exit(2);
}
