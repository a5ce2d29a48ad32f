/** A TCP forwarder on 127.0.0.1 whose connections a test can cut, to simulate a dropped network. */
export class TcpProxy {
  private readonly listener: Deno.TcpListener;
  private readonly pairs = new Set<[Deno.TcpConn, Deno.TcpConn]>();
  readonly port: number;
  /**
   * While set, the network is silent, as a real outage is: nothing crosses, nothing is
   * closed; new connections are held unanswered.
   */
  private silent = false;
  private readonly held = new Set<Deno.TcpConn>();

  /**
   * `answers`: the first connections get these raw HTTP answers instead of being forwarded
   * (a relay restarting, throttling, failing), one each, in order.
   */
  constructor(
    private readonly target: { hostname: string; port: number },
    private readonly answers: string[] = [],
  ) {
    this.listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.listener.addr as Deno.NetAddr).port;
    this.accept();
  }

  private async accept(): Promise<void> {
    for await (const inbound of this.listener) {
      if (this.silent) {
        this.held.add(inbound);
        continue;
      }
      const canned = this.answers.shift();
      if (canned !== undefined) {
        this.answer(inbound, canned);
        continue;
      }
      let outbound: Deno.TcpConn;
      try {
        outbound = await Deno.connect(this.target);
      } catch {
        inbound.close();
        continue;
      }
      inbound.setNoDelay(true);
      outbound.setNoDelay(true);
      const pair: [Deno.TcpConn, Deno.TcpConn] = [inbound, outbound];
      this.pairs.add(pair);
      const end = () => {
        if (!this.pairs.delete(pair)) return;
        for (const c of pair) {
          try {
            c.close();
          } catch { /* closed */ }
        }
      };
      // Bytes are dropped while the network is silent.
      const gate = () =>
        new TransformStream<Uint8Array, Uint8Array>({
          transform: (chunk, out) => {
            if (!this.silent) out.enqueue(chunk);
          },
        });
      inbound.readable.pipeThrough(gate()).pipeTo(outbound.writable, { preventClose: true })
        .catch(() => {}).finally(end);
      outbound.readable.pipeThrough(gate()).pipeTo(inbound.writable, { preventClose: true })
        .catch(() => {}).finally(end);
    }
  }

  private async answer(conn: Deno.TcpConn, text: string): Promise<void> {
    try {
      await conn.read(new Uint8Array(16 * 1024)); // the request head
      const bytes = new TextEncoder().encode(text);
      for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
    } catch { /* the peer went away */ }
    try {
      conn.close();
    } catch { /* closed */ }
  }

  /** Drops every open connection (new ones are still accepted). */
  cut(): number {
    const n = this.pairs.size;
    for (const pair of [...this.pairs]) {
      this.pairs.delete(pair);
      for (const c of pair) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    }
    return n;
  }

  /**
   * Silences the network (nothing crosses, nothing closes: only heartbeats can tell), or
   * ends the silence: what was open or held through it is dropped, as both ends would have
   * given it up, and new connections go through again.
   */
  setSilent(silent: boolean): void {
    this.silent = silent;
    if (silent) return;
    this.cut();
    for (const c of this.held) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    this.held.clear();
  }

  get connections(): number {
    return this.pairs.size;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  close(): void {
    this.setSilent(false);
    try {
      this.listener.close();
    } catch { /* closed */ }
  }
}
