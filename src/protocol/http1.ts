/**
 * The little HTTP/1.1 both ends of a WebSocket upgrade need: reading a
 * message head (start line and headers) off a raw connection, writing all
 * of a buffer, and the Sec-WebSocket-Accept hash.
 */

/** Largest head accepted: a start line and headers, like most servers' 16 KiB. */
export const MAX_HEAD = 16 * 1024;

export class HeadError extends Error {}

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Reads up to the blank line that ends a head. `rest` is whatever followed
 * it in the same reads (the first WebSocket bytes, or a body). Throws
 * HeadError for a closed connection, an oversized head, or garbage.
 */
export async function readHead(
  conn: Pick<Deno.Conn, "read">,
): Promise<{ line: string; headers: Headers; rest: Uint8Array }> {
  const buf = new Uint8Array(MAX_HEAD);
  let len = 0;
  for (;;) {
    const n = await conn.read(buf.subarray(len));
    if (n === null) throw new HeadError("connection closed before the end of the HTTP head");
    const from = Math.max(0, len - 3);
    len += n;
    // Look for the blank line in the bytes: decoding first would shift offsets at invalid UTF-8.
    const at = headEnd(buf, from, len);
    if (at >= 0) {
      const [line, ...lines] = dec.decode(buf.subarray(0, at)).split("\r\n");
      const headers = new Headers();
      for (const l of lines) {
        const i = l.indexOf(":");
        if (i <= 0) throw new HeadError(`malformed header line: ${l.slice(0, 80)}`);
        try {
          headers.append(l.slice(0, i).trim(), l.slice(i + 1).trim());
        } catch {
          throw new HeadError(`malformed header line: ${l.slice(0, 80)}`);
        }
      }
      return { line, headers, rest: buf.slice(at + 4, len) };
    }
    if (len === buf.length) throw new HeadError("HTTP head too large");
  }
}

/** Index of the first CR LF CR LF in buf[from, end), or -1. */
function headEnd(buf: Uint8Array, from: number, end: number): number {
  for (let i = from; i + 3 < end; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 §4.2.2). */
export async function acceptKey(key: string): Promise<string> {
  return new Uint8Array(await crypto.subtle.digest("SHA-1", enc.encode(key + GUID))).toBase64();
}
