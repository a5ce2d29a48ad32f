/**
 * `relay serve --tls-self-signed`: a private CA and a server certificate made
 * here, with WebCrypto (ECDSA P-256) and a small DER writer, so the relay
 * needs no openssl. Kept in `<data-dir>/tls/` (keys 0600) and reused: the CA
 * lives ten years and its SHA-256 fingerprint is what clients pin
 * (`tether login --fingerprint SHA256:…`); the server certificate is made
 * anew, under the same CA, when it nears its end or the names it must carry
 * change. The relay serves the server certificate followed by the CA, so a
 * client that pins the CA finds it in the chain.
 */
import { hostname } from "node:os";
import { isIP } from "node:net";
import { join } from "node:path";
import { concatBytes } from "../common/bytes.ts";
import { writePrivate } from "../common/files.ts";
import { certFingerprint, derToPem, pemToDer } from "../protocol/tls_pin.ts";

const DAY = 86_400_000;
const CA_DAYS = 3650;
const LEAF_DAYS = 397;
/** A server certificate this close to its end is made anew at start. */
const RENEW_BEFORE_DAYS = 30;

export interface SelfSigned {
  /** PEM chain to serve: the server certificate, then the CA. */
  cert: string;
  /** PEM (PKCS#8) key of the server certificate. */
  key: string;
  /** `SHA256:…` of the CA certificate: what clients pin. */
  fingerprint: string;
  /** Where the CA certificate is, for clients and agents that take --ca-file. */
  caFile: string;
  /** The names and addresses the server certificate is valid for. */
  names: string[];
}

interface Stored {
  caCert: string;
  caKey: string;
  cert: string;
  key: string;
  names: string[];
  leafNotAfter: number;
}

/**
 * Loads or makes the CA and a server certificate for `names` (DNS names or
 * IP addresses; localhost, 127.0.0.1, ::1 and this host's name are always in).
 */
export async function selfSignedTls(dataDir: string, extraNames: string[]): Promise<SelfSigned> {
  const dir = join(dataDir, "tls");
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const names = [
    ...new Set(["localhost", hostname(), "127.0.0.1", "::1", ...extraNames].filter(Boolean)),
  ];
  const meta = join(dir, "self-signed.json");
  let stored: Stored | undefined;
  try {
    stored = JSON.parse(Deno.readTextFileSync(meta));
  } catch { /* none yet */ }
  if (!stored) {
    const ca = await makeCa();
    stored = { caCert: ca.cert, caKey: ca.key, cert: "", key: "", names: [], leafNotAfter: 0 };
  }
  const sameNames = names.length === stored.names.length &&
    names.every((n) => stored!.names.includes(n));
  if (!sameNames || stored.leafNotAfter - Date.now() < RENEW_BEFORE_DAYS * DAY) {
    const leaf = await makeLeaf(stored.caCert, stored.caKey, names);
    stored = { ...stored, ...leaf, names };
    writePrivate(meta, JSON.stringify(stored, null, 2) + "\n");
  }
  const caFile = join(dir, "ca.pem");
  Deno.writeTextFileSync(caFile, stored.caCert);
  return {
    cert: stored.cert + stored.caCert,
    key: stored.key,
    fingerprint: await certFingerprint(pemToDer(stored.caCert)),
    caFile,
    names,
  };
}

// ---- certificates ----

const ALG: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
const SIGN: EcdsaParams = { name: "ECDSA", hash: "SHA-256" };

const OID = {
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  subjectAltName: "2.5.29.17",
  subjectKeyId: "2.5.29.14",
  authorityKeyId: "2.5.29.35",
  serverAuth: "1.3.6.1.5.5.7.3.1",
};

async function makeCa(): Promise<{ cert: string; key: string }> {
  const pair = await crypto.subtle.generateKey(ALG, true, ["sign", "verify"]) as CryptoKeyPair;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const name = dn(`tether relay CA ${hex(crypto.getRandomValues(new Uint8Array(4)))}`);
  const ski = await keyId(spki);
  const der = await certificate({
    issuer: name,
    subject: name,
    spki,
    days: CA_DAYS,
    signer: pair.privateKey,
    extensions: [
      ext(OID.basicConstraints, true, seq(bool(true))),
      ext(OID.keyUsage, true, bitString(new Uint8Array([0x06]), 1)), // keyCertSign, cRLSign
      ext(OID.subjectKeyId, false, octets(ski)),
    ],
  });
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  return { cert: derToPem(der, "CERTIFICATE"), key: derToPem(pkcs8, "PRIVATE KEY") };
}

async function makeLeaf(
  caCertPem: string,
  caKeyPem: string,
  names: string[],
): Promise<{ cert: string; key: string; leafNotAfter: number }> {
  const caKey = await crypto.subtle.importKey("pkcs8", pemToDer(caKeyPem), ALG, false, ["sign"]);
  const caCert = pemToDer(caCertPem);
  const pair = await crypto.subtle.generateKey(ALG, true, ["sign", "verify"]) as CryptoKeyPair;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const alt = names.map((n) =>
    isIP(n) ? tagged(0x87, ipBytes(n)) : tagged(0x82, new TextEncoder().encode(n))
  );
  const der = await certificate({
    issuer: subjectOf(caCert),
    subject: dn("tether relay"),
    spki,
    days: LEAF_DAYS,
    signer: caKey,
    extensions: [
      ext(OID.basicConstraints, true, seq()),
      ext(OID.keyUsage, true, bitString(new Uint8Array([0x80]), 7)), // digitalSignature
      ext(OID.extKeyUsage, false, seq(oid(OID.serverAuth))),
      ext(OID.subjectAltName, false, seq(...alt)),
      ext(OID.subjectKeyId, false, octets(await keyId(spki))),
      ext(OID.authorityKeyId, false, seq(tagged(0x80, await keyId(spkiOf(caCert))))),
    ],
  });
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  return {
    cert: derToPem(der, "CERTIFICATE"),
    key: derToPem(pkcs8, "PRIVATE KEY"),
    leafNotAfter: Date.now() + LEAF_DAYS * DAY,
  };
}

async function certificate(o: {
  issuer: Uint8Array;
  subject: Uint8Array;
  spki: Uint8Array;
  days: number;
  signer: CryptoKey;
  extensions: Uint8Array[];
}): Promise<Uint8Array> {
  const serial = crypto.getRandomValues(new Uint8Array(16));
  serial[0] &= 0x7f; // positive
  serial[0] |= 0x01; // and without a leading zero byte
  const now = Date.now();
  const alg = seq(oid(OID.ecdsaWithSha256));
  const tbs = seq(
    tagged(0xa0, int(new Uint8Array([2]))), // v3
    int(serial),
    alg,
    o.issuer,
    seq(time(now - DAY), time(now + o.days * DAY)),
    o.subject,
    o.spki,
    tagged(0xa3, seq(...o.extensions)),
  );
  const raw = new Uint8Array(await crypto.subtle.sign(SIGN, o.signer, tbs as BufferSource));
  const sig = seq(int(raw.subarray(0, 32)), int(raw.subarray(32)));
  return seq(tbs, alg, bitString(sig, 0));
}

/** Subject key identifier: the first 20 bytes of SHA-256 of the public key info. */
async function keyId(spki: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", spki as BufferSource)).subarray(
    0,
    20,
  );
}

function dn(cn: string): Uint8Array {
  return seq(
    set(seq(oid(OID.organization), utf8("tether"))),
    set(seq(oid(OID.commonName), utf8(cn))),
  );
}

function ext(id: string, critical: boolean, value: Uint8Array): Uint8Array {
  return critical ? seq(oid(id), bool(true), octets(value)) : seq(oid(id), octets(value));
}

// ---- reading back the CA certificate: its subject and public key ----

/** The elements of a DER SEQUENCE (or SET) `der` starting at 0. */
function children(der: Uint8Array): Uint8Array[] {
  const { start, end } = header(der, 0);
  const out: Uint8Array[] = [];
  for (let at = start; at < end;) {
    const h = header(der, at);
    out.push(der.subarray(at, h.end));
    at = h.end;
  }
  return out;
}

function header(der: Uint8Array, at: number): { start: number; end: number } {
  let len = der[at + 1];
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[start + i];
    start += n;
  }
  return { start, end: start + len };
}

function tbsFields(cert: Uint8Array): Uint8Array[] {
  return children(children(cert)[0]);
}

function subjectOf(cert: Uint8Array): Uint8Array {
  return tbsFields(cert)[5]; // [0] version, serial, alg, issuer, validity, subject
}

function spkiOf(cert: Uint8Array): Uint8Array {
  return tbsFields(cert)[6];
}

// ---- DER ----

function tlv(tag: number, body: Uint8Array): Uint8Array {
  const n = body.length;
  const len = n < 0x80
    ? [n]
    : n < 0x100
    ? [0x81, n]
    : n < 0x10000
    ? [0x82, n >> 8, n & 0xff]
    : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  const out = new Uint8Array(1 + len.length + n);
  out[0] = tag;
  out.set(len, 1);
  out.set(body, 1 + len.length);
  return out;
}

const seq = (...parts: Uint8Array[]) => tlv(0x30, concatBytes(parts));
const set = (...parts: Uint8Array[]) => tlv(0x31, concatBytes(parts));
const tagged = (tag: number, body: Uint8Array) => tlv(tag, body);
const octets = (b: Uint8Array) => tlv(0x04, b);
const utf8 = (s: string) => tlv(0x0c, new TextEncoder().encode(s));
const bool = (v: boolean) => tlv(0x01, new Uint8Array([v ? 0xff : 0]));

function bitString(b: Uint8Array, unusedBits: number): Uint8Array {
  return tlv(0x03, concatBytes([new Uint8Array([unusedBits]), b]));
}

/** A non-negative INTEGER from big-endian bytes. */
function int(b: Uint8Array): Uint8Array {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  const v = b.subarray(i);
  return tlv(0x02, v[0] & 0x80 ? concatBytes([new Uint8Array([0]), v]) : v);
}

function oid(text: string): Uint8Array {
  const arcs = text.split(".").map(Number);
  const bytes = [arcs[0] * 40 + arcs[1]];
  for (const arc of arcs.slice(2)) {
    const groups = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) {
      groups.unshift((v & 0x7f) | 0x80);
    }
    bytes.push(...groups);
  }
  return tlv(0x06, new Uint8Array(bytes));
}

/** UTCTime before 2050, GeneralizedTime from then on (RFC 5280 §4.1.2.5). */
function time(ms: number): Uint8Array {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, "0");
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}` +
    `${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  const y = d.getUTCFullYear();
  return y < 2050
    ? tlv(0x17, new TextEncoder().encode(`${p(y % 100)}${rest}`))
    : tlv(0x18, new TextEncoder().encode(`${y}${rest}`));
}

function ipBytes(ip: string): Uint8Array {
  if (isIP(ip) === 4) return new Uint8Array(ip.split(".").map(Number));
  const [head, tail] = ip.split("::");
  const parts = (s: string | undefined) => s ? s.split(":").filter(Boolean) : [];
  const h = parts(head), t = parts(tail);
  const words = [...h, ...Array(8 - h.length - t.length).fill("0"), ...t].map((w) =>
    parseInt(w, 16)
  );
  return new Uint8Array(words.flatMap((w) => [w >> 8, w & 0xff]));
}

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}
