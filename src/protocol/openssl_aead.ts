/**
 * The two AEADs of the sealed streams (ChaCha20-Poly1305, AES-256-GCM) run by the system's
 * OpenSSL through Deno's FFI, when there is one: the same library OpenSSH uses, and the
 * fastest cipher this runtime can reach. Measured with Deno 2.9 on the 2-core bench machine
 * (AMD EPYC, AES-NI, AVX-512), sealing 64 KiB: OpenSSL 3.0 ChaCha20-Poly1305 ~15 µs and
 * AES-256-GCM ~14 µs; node:crypto's (RustCrypto) ~48 µs and ~300 µs; WebCrypto's AES-GCM
 * ~250 µs. The bulk of a sealed stream's cost is this one call, on both ends.
 *
 * Optional by design: without FFI permission, without libcrypto (OpenSSL 1.1 or 3), on a
 * system whose library fails the self-test below, or with TETHER_NATIVE_CRYPTO=off in the
 * environment, `nativeAead()` is undefined and e2e.ts uses node:crypto. The bytes are the
 * same either way (RFC 8439 and NIST SP 800-38D; checked in tests/unit/openssl_aead_test.ts),
 * so each end chooses for itself.
 *
 * Sealing and opening are synchronous calls on one context per direction that is set up
 * again for every message (key and nonce: ChaCha20 has no key schedule, and AES-NI's takes
 * tens of nanoseconds). Opening decrypts in place; OpenSSL writes plaintext before it checks
 * the tag, so a caller must drop the buffer when `open` says false.
 */

const SYMBOLS = {
  OpenSSL_version_num: { parameters: [], result: "u64" },
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  EVP_chacha20_poly1305: { parameters: [], result: "pointer" },
  EVP_aes_256_gcm: { parameters: [], result: "pointer" },
  EVP_EncryptInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer"],
    result: "i32",
  },
  EVP_DecryptInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer"],
    result: "i32",
  },
  EVP_EncryptUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  EVP_DecryptUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  EVP_EncryptFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_DecryptFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_CIPHER_CTX_ctrl: { parameters: ["pointer", "i32", "i32", "buffer"], result: "i32" },
} as const;

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const EVP_CTRL_AEAD_GET_TAG = 0x10;
const EVP_CTRL_AEAD_SET_TAG = 0x11;
const TAG = 16;

export type NativeCipher = "chacha20-poly1305" | "aes-256-gcm";

/** OpenSSL's AEADs, as e2e.ts calls them. */
export interface NativeAead {
  /** Seals `plain` into `out` at `at`: ciphertext, then the 16-byte tag. */
  sealInto(
    cipher: NativeCipher,
    key: Uint8Array,
    nonce: Uint8Array,
    ad: Uint8Array,
    plain: Uint8Array,
    out: Uint8Array,
    at: number,
  ): void;
  /**
   * Opens `sealed` (ciphertext, then tag) in place: true when the tag verifies, and then
   * the first sealed.length - 16 bytes of `sealed` are the plaintext.
   */
  openInPlace(
    cipher: NativeCipher,
    key: Uint8Array,
    nonce: Uint8Array,
    ad: Uint8Array,
    sealed: Uint8Array,
  ): boolean;
  /** The library's version, as OpenSSL_version_num() gives it. */
  readonly version: string;
}

/** Library names tried in order, by operating system. */
const NAMES: Partial<Record<typeof Deno.build.os, string[]>> = {
  linux: ["libcrypto.so.3", "libcrypto.so.1.1"],
  // macOS's own /usr/lib/libcrypto.dylib aborts the process when loaded this way.
  darwin: [
    "/opt/homebrew/opt/openssl@3/lib/libcrypto.3.dylib",
    "/usr/local/opt/openssl@3/lib/libcrypto.3.dylib",
  ],
};

let loaded: NativeAead | undefined | null = null;

/** OpenSSL's AEADs, or undefined when they cannot be had (see the module's comment). */
export function nativeAead(): NativeAead | undefined {
  if (loaded === null) loaded = load();
  return loaded;
}

function load(): NativeAead | undefined {
  try {
    if (Deno.env.get("TETHER_NATIVE_CRYPTO") === "off") return undefined;
    // Never a permission prompt: the program runs unattended.
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return undefined;
  } catch {
    return undefined;
  }
  for (const name of NAMES[Deno.build.os] ?? []) {
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      lib = Deno.dlopen(name, SYMBOLS);
    } catch {
      continue;
    }
    try {
      const aead = wrap(lib.symbols);
      if (aead && selfTest(aead)) return aead;
    } catch {
      // A library without these symbols, or one that fails them: not ours to use.
    }
    lib.close();
  }
  return undefined;
}

function wrap(s: Lib): NativeAead | undefined {
  const version = s.OpenSSL_version_num();
  if (version < 0x1010000fn) return undefined;
  const ciphers: Record<NativeCipher, Deno.PointerValue> = {
    "chacha20-poly1305": s.EVP_chacha20_poly1305(),
    "aes-256-gcm": s.EVP_aes_256_gcm(),
  };
  const enc = s.EVP_CIPHER_CTX_new();
  const dec = s.EVP_CIPHER_CTX_new();
  if (!enc || !dec || !ciphers["chacha20-poly1305"] || !ciphers["aes-256-gcm"]) return undefined;
  const outl = new Int32Array(1);
  const scratch = new Uint8Array(TAG);
  return {
    version: `0x${version.toString(16)}`,
    sealInto(cipher, key, nonce, ad, plain, out, at) {
      const body = out.subarray(at, at + plain.length);
      const tag = out.subarray(at + plain.length, at + plain.length + TAG);
      if (tag.length !== TAG) throw new RangeError("no room for the sealed message");
      if (
        s.EVP_EncryptInit_ex(enc, ciphers[cipher], null, key, nonce) !== 1 ||
        s.EVP_EncryptUpdate(enc, null, outl, ad, ad.length) !== 1 ||
        s.EVP_EncryptUpdate(enc, body, outl, plain, plain.length) !== 1 ||
        outl[0] !== plain.length ||
        s.EVP_EncryptFinal_ex(enc, scratch, outl) !== 1 ||
        s.EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_AEAD_GET_TAG, TAG, tag) !== 1
      ) {
        throw new Error("OpenSSL failed to seal a message");
      }
    },
    openInPlace(cipher, key, nonce, ad, sealed) {
      const n = sealed.length - TAG;
      if (n < 0) return false;
      const body = sealed.subarray(0, n);
      if (
        s.EVP_DecryptInit_ex(dec, ciphers[cipher], null, key, nonce) !== 1 ||
        s.EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_AEAD_SET_TAG, TAG, sealed.subarray(n)) !== 1 ||
        s.EVP_DecryptUpdate(dec, null, outl, ad, ad.length) !== 1 ||
        s.EVP_DecryptUpdate(dec, body, outl, body, n) !== 1 ||
        outl[0] !== n
      ) {
        throw new Error("OpenSSL failed to open a message");
      }
      return s.EVP_DecryptFinal_ex(dec, scratch, outl) === 1;
    },
  };
}

/**
 * RFC 8439 §2.8.2's AEAD example (and a flipped tag refused), then a round trip through
 * AES-256-GCM: a library that gets either wrong is not used.
 */
function selfTest(a: NativeAead): boolean {
  const hex = (s: string) => Uint8Array.from(s.match(/../g)!, (h) => parseInt(h, 16));
  const key = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
  const nonce = hex("070000004041424344454647");
  const ad = hex("50515253c0c1c2c3c4c5c6c7");
  const plain = new TextEncoder().encode(
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the " +
      "future, sunscreen would be it.",
  );
  const out = new Uint8Array(plain.length + TAG);
  a.sealInto("chacha20-poly1305", key, nonce, ad, plain, out, 0);
  const tail = Array.from(out.subarray(plain.length), (b) => b.toString(16).padStart(2, "0"));
  if (tail.join("") !== "1ae10b594f09e26a7e902ecbd0600691") return false;
  if (out[0] !== 0xd3 || out[plain.length - 1] !== 0x16) return false;
  const flipped = out.slice();
  flipped[flipped.length - 1] ^= 1;
  if (a.openInPlace("chacha20-poly1305", key, nonce, ad, flipped)) return false;
  if (!a.openInPlace("chacha20-poly1305", key, nonce, ad, out)) return false;
  if (new TextDecoder().decode(out.subarray(0, plain.length)) !== new TextDecoder().decode(plain)) {
    return false;
  }
  const gcm = new Uint8Array(plain.length + TAG);
  a.sealInto("aes-256-gcm", key, nonce, ad, plain, gcm, 0);
  return a.openInPlace("aes-256-gcm", key, nonce, ad, gcm) &&
    gcm.subarray(0, plain.length).every((b, i) => b === plain[i]);
}
