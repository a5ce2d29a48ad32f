/**
 * ChaCha20-Poly1305 (RFC 8439) for small messages: a keystroke, a line of output, a sealed
 * control message. A call into OpenSSL or node:crypto costs 1–8 µs whatever the size (and
 * loading OpenSSL ~10 ms); this costs ~1 µs for a line from the first call on, since the
 * cipher is WebAssembly (chacha_poly.wat, compiled into chacha_poly.gen.ts by
 * scripts/wasm.ts), compiled before it first runs. The same code in TypeScript ran as fast
 * once V8 had optimised it, but at 20–40 µs a message in a new process's first few hundred
 * (measured on the bench machine). e2e.ts picks by size. Checked against RFC 8439's test
 * vectors and against node:crypto on random input (tests/unit/chacha_poly_test.ts).
 */
import { CHACHA_POLY_WASM } from "./chacha_poly.gen.ts";

interface Exports {
  memory: WebAssembly.Memory;
  seal(ad: number, adLen: number, m: number, mLen: number): void;
  open(ad: number, adLen: number, c: number, cLen: number): number;
}

/** Where the module's layout (chacha_poly.wat) puts its inputs. */
const KEY = 0, NONCE = 32, DATA = 1024;
const PAGE = 65_536;

let wasm: Exports | undefined;
let mem: Uint8Array = new Uint8Array(0);

/** The module's memory with room for `n` bytes of data (everything here is synchronous). */
function memory(n: number): Uint8Array {
  if (!wasm) {
    const bytes = Uint8Array.from(atob(CHACHA_POLY_WASM), (c) => c.charCodeAt(0));
    wasm = new WebAssembly.Instance(new WebAssembly.Module(bytes)).exports as unknown as Exports;
    mem = new Uint8Array(wasm.memory.buffer);
  }
  const need = DATA + n + 32;
  if (need > mem.length) {
    wasm.memory.grow(Math.ceil((need - mem.length) / PAGE));
    mem = new Uint8Array(wasm.memory.buffer);
  }
  return mem;
}

/** Puts key, nonce, AD and the message in place; the message's address. */
function load(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, msg: Uint8Array): number {
  const m = memory(ad.length + msg.length + 16);
  m.set(key, KEY);
  m.set(nonce, NONCE);
  m.set(ad, DATA);
  const at = DATA + ad.length;
  m.set(msg, at);
  return at;
}

/** Seals `plain` into `out` at `at`: ciphertext, then the 16-byte tag. */
export function chachaSealInto(
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  plain: Uint8Array,
  out: Uint8Array,
  at: number,
): void {
  const p = load(key, nonce, ad, plain);
  wasm!.seal(DATA, ad.length, p, plain.length);
  out.set(mem.subarray(p, p + plain.length + 16), at);
}

/**
 * Opens `sealed` (ciphertext, then tag) in place: true when the tag matches, and then the
 * first sealed.length - 16 bytes are the plaintext (untouched when it does not).
 */
export function chachaOpenInPlace(
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  sealed: Uint8Array,
): boolean {
  const n = sealed.length - 16;
  if (n < 0) return false;
  const p = load(key, nonce, ad, sealed);
  if (wasm!.open(DATA, ad.length, p, n) !== 1) return false;
  sealed.set(mem.subarray(p, p + n));
  return true;
}
