/**
 * Pinning a relay's TLS certificate by fingerprint, for relays with a private
 * CA (`relay serve --tls-self-signed`). `tether login --fingerprint SHA256:…`
 * fetches the chain the relay presents without trusting it, keeps the
 * certificate whose SHA-256 matches (the CA), and from then on the client
 * verifies the relay against that CA like any other (`--ca-file`): a relay
 * that presents anything else is refused.
 */
import tls from "node:tls";
import { TetherError } from "../common/errors.ts";

/** `SHA256:` and the unpadded base64 of the SHA-256 of a DER certificate, as ssh shows keys. */
export async function certFingerprint(der: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", der as BufferSource));
  return `SHA256:${digest.toBase64().replace(/=+$/, "")}`;
}

/**
 * A fingerprint as given: `SHA256:base64` (as printed), or 32 hex bytes with or
 * without colons (as openssl prints them). Returns the `SHA256:` form, or undefined.
 */
export function normalizeFingerprint(text: string): string | undefined {
  const t = text.trim();
  const hex = t.replace(/^sha256:/i, "").replaceAll(":", "");
  if (/^[0-9a-f]{64}$/i.test(hex)) {
    const bytes = new Uint8Array(hex.match(/../g)!.map((h) => parseInt(h, 16)));
    return `SHA256:${bytes.toBase64().replace(/=+$/, "")}`;
  }
  const m = /^SHA256:([A-Za-z0-9+/]{43})=?$/i.exec(t);
  return m ? `SHA256:${m[1]}` : undefined;
}

export function derToPem(der: Uint8Array, label: string): string {
  const b64 = der.toBase64().match(/.{1,64}/g)!.join("\n");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** The DER bytes of the first PEM block in `pem`. */
export function pemToDer(pem: string): Uint8Array<ArrayBuffer> {
  const m = /-----BEGIN [^-]+-----([\s\S]*?)-----END [^-]+-----/.exec(pem);
  if (!m) throw new Error("not a PEM block");
  return Uint8Array.fromBase64(m[1].replace(/\s+/g, "")) as Uint8Array<ArrayBuffer>;
}

/**
 * Connects to `host:port` without trusting what it presents, and returns the
 * certificate of the presented chain whose fingerprint is `want`, as PEM.
 */
export function fetchPinned(
  host: string,
  port: number,
  want: string,
  timeoutMs: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const fail = (message: string, hint?: string) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new TetherError("relay_unreachable", message, { hint }));
    };
    const socket = tls.connect({
      host,
      port,
      servername: /^[\d.]+$|:/.test(host) ? undefined : host,
      rejectUnauthorized: false,
    }, async () => {
      const chain: Uint8Array[] = [];
      const seen = new Set<unknown>();
      for (
        let c: tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
        c && c.raw && !seen.has(c);
        c = c.issuerCertificate
      ) {
        seen.add(c);
        chain.push(new Uint8Array(c.raw));
      }
      const prints = await Promise.all(chain.map(certFingerprint));
      const at = prints.indexOf(want);
      clearTimeout(timer);
      socket.destroy();
      if (at < 0) {
        reject(
          new TetherError(
            "unauthenticated",
            `the relay at ${host}:${port} presents no certificate with fingerprint ${want}`,
            {
              hint: `it presents ${
                prints.join(", ") || "no certificate"
              }; check the fingerprint the relay printed (relay serve --tls-self-signed)`,
            },
          ),
        );
        return;
      }
      resolve(derToPem(chain[at], "CERTIFICATE"));
    });
    socket.on(
      "error",
      (e: Error) =>
        fail(
          `cannot reach the relay at ${host}:${port} over TLS: ${e.message}`,
          "is it a wss:// relay?",
        ),
    );
    const timer = setTimeout(
      () => fail(`the relay at ${host}:${port} did not complete TLS within ${timeoutMs / 1000}s`),
      timeoutMs,
    );
  });
}

/** What to tell a user whose TLS handshake with the relay failed, or undefined if it is not that. */
export function tlsProblem(e: unknown, relay: string, host: string): TetherError | undefined {
  const msg = (e as Error)?.message ?? "";
  if (
    !/certificate|UnknownIssuer|CaUsedAsEndEntity|NotValidForName|BadSignature|tls|handshake/i.test(
      msg,
    )
  ) {
    return undefined;
  }
  const first = msg.split("\n")[0];
  if (/NotValidForName|not valid for/i.test(msg)) {
    return new TetherError(
      "relay_unreachable",
      `the relay's TLS certificate does not name ${host} (${first})`,
      {
        hint: `dial it by a name its certificate carries, or add this one on the relay: ` +
          `relay serve --tls-self-signed --tls-name ${host}`,
        cause: e,
      },
    );
  }
  return new TetherError(
    "relay_unreachable",
    `the relay at ${relay} presented a TLS certificate this machine does not trust (${first})`,
    {
      hint: "pass --ca-file FILE (or TETHER_CA_FILE) with the relay's CA certificate, or pin a " +
        "relay with a private CA: tether login --relay URL --fingerprint SHA256:… " +
        "(relay serve --tls-self-signed prints it)",
      cause: e,
    },
  );
}
