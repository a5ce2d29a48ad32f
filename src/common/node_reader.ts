/**
 * A node stream read the way a Deno.Conn is read: `read(buf)` copies out of what has
 * arrived, null at the end. The stream is paused while more than `highWater` bytes wait
 * for the reader, and resumed once half of that is left. Used where node's sockets do what
 * Deno's cannot: stdin read on the event loop (client/stdin.ts) and TLS with TCP_NODELAY
 * (relay/tls_listener.ts).
 */

/** What NodeReader needs of a node Readable (net.Socket, tls.TLSSocket). */
export interface NodeReadable {
  on(event: "data", fn: (chunk: Uint8Array) => void): unknown;
  on(event: "end" | "close", fn: () => void): unknown;
  on(event: "error", fn: (e: Error) => void): unknown;
  pause(): unknown;
  resume(): unknown;
}

export class NodeReader {
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #paused = false;
  #error?: Error;
  #wake?: () => void;

  /** `onEnd` runs once, at the stream's end, close or error. */
  constructor(
    private readonly stream: NodeReadable,
    private readonly highWater: number,
    private readonly onEnd?: () => void,
  ) {
    stream.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      if (this.#buffered > highWater && !this.#paused) {
        this.#paused = true;
        stream.pause();
      }
      this.#poke();
    });
    stream.on("end", () => this.stop());
    stream.on("close", () => this.stop());
    stream.on("error", (e: Error) => {
      this.#error ??= e;
      this.stop();
    });
  }

  /** The error the stream ended with, if any. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Ends reading: what was received is still read, then null. */
  stop(): void {
    if (!this.#ended) {
      this.#ended = true;
      this.onEnd?.();
    }
    this.#poke();
  }

  #poke(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Reads into `buf`; null at the end; throws the stream's error once nothing is left. */
  async read(buf: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => (this.#wake = r));
    }
    let n = 0;
    while (n < buf.length && this.#chunks.length > 0) {
      const c = this.#chunks[0];
      const take = Math.min(c.length, buf.length - n);
      buf.set(c.subarray(0, take), n);
      n += take;
      if (take === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(take);
    }
    this.#buffered -= n;
    if (this.#paused && this.#buffered <= this.highWater / 2) {
      this.#paused = false;
      this.stream.resume();
    }
    return n;
  }
}
