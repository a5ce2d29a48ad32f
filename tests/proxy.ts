/** A TCP forwarder on 127.0.0.1 whose connections a test can cut, to simulate a dropped network. */
export class TcpProxy {
  private readonly listener: Deno.TcpListener;
  private readonly pairs = new Set<[Deno.TcpConn, Deno.TcpConn]>();
  readonly port: number;
  /** While set, the network is down: open connections were cut, new ones are dropped. */
  private down = false;

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
      if (this.down) {
        inbound.close();
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
      inbound.readable.pipeTo(outbound.writable, { preventClose: true }).catch(() => {}).finally(
        end,
      );
      outbound.readable.pipeTo(inbound.writable, { preventClose: true }).catch(() => {}).finally(
        end,
      );
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

  /** Takes the network down (cutting what is open) or brings it back. */
  setDown(down: boolean): void {
    this.down = down;
    if (down) this.cut();
  }

  get connections(): number {
    return this.pairs.size;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  close(): void {
    this.cut();
    try {
      this.listener.close();
    } catch { /* closed */ }
  }
}
