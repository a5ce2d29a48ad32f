import assert from "node:assert/strict";
import { selfSignedTls } from "../../src/relay/tls_self_signed.ts";
import {
  certFingerprint,
  normalizeFingerprint,
  pemToDer,
  tlsProblem,
} from "../../src/protocol/tls_pin.ts";

Deno.test("self-signed TLS: a CA kept across runs, a leaf renewed when its names change", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const a = await selfSignedTls(dir, []);
    const b = await selfSignedTls(dir, []);
    assert.equal(a.fingerprint, b.fingerprint);
    assert.equal(a.cert, b.cert, "same names: the same server certificate");
    const c = await selfSignedTls(dir, ["relay.example.com", "10.0.0.7"]);
    assert.equal(c.fingerprint, a.fingerprint, "the CA stays");
    assert.notEqual(c.cert, a.cert, "new names: a new server certificate");
    assert.ok(c.names.includes("relay.example.com"));
    const ca = Deno.readTextFileSync(c.caFile);
    assert.equal(await certFingerprint(pemToDer(ca)), c.fingerprint);
    // rustls (through Deno) accepts the chain for a name it carries.
    const l = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: c.cert, key: c.key });
    const served = (async () => {
      const conn = await l.accept();
      await conn.handshake();
      await conn.write(new Uint8Array([42]));
      conn.close();
    })();
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: (l.addr as Deno.NetAddr).port,
      caCerts: [ca],
    });
    const buf = new Uint8Array(1);
    assert.equal(await conn.read(buf), 1);
    assert.equal(buf[0], 42);
    conn.close();
    await served;
    l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fingerprints: as printed, or as openssl prints them", () => {
  const hex =
    "DB:11:74:6D:95:C7:08:88:1F:3C:24:86:B5:9B:35:2C:C8:70:9C:56:3C:00:8F:27:C6:04:46:D5:E0:9D:5E:A7";
  const b64 = "SHA256:2xF0bZXHCIgfPCSGtZs1LMhwnFY8AI8nxgRG1eCdXqc";
  assert.equal(normalizeFingerprint(hex), b64);
  assert.equal(normalizeFingerprint(hex.replaceAll(":", "").toLowerCase()), b64);
  assert.equal(normalizeFingerprint(b64), b64);
  assert.equal(normalizeFingerprint(b64 + "="), b64);
  for (const bad of ["", "SHA256:abc", "MD5:" + b64.slice(7), "zz".repeat(32)]) {
    assert.equal(normalizeFingerprint(bad), undefined, bad);
  }
});

Deno.test("TLS failures say what to do; other failures are left alone", () => {
  const untrusted = tlsProblem(
    new Error("invalid peer certificate: UnknownIssuer"),
    "wss://r:1",
    "r",
  );
  assert.equal(untrusted?.code, "relay_unreachable");
  assert.match(untrusted!.hint!, /--ca-file[\s\S]*--fingerprint/);
  const name = tlsProblem(new Error("invalid peer certificate: NotValidForName"), "wss://x:1", "x");
  assert.match(name!.message, /does not name x/);
  assert.match(name!.hint!, /--tls-name x/);
  assert.equal(
    tlsProblem(new Error("Connection refused (os error 111)"), "wss://r", "r"),
    undefined,
  );
});
