/**
 * Replayed output (a session's earlier output, shown again on join or
 * resume) can hold terminal queries that a full-screen program sent long ago:
 * "where is the cursor?", "what terminal are you?", "what colour is the
 * background?". Shown again, they would make our own terminal answer on
 * stdin — and the answers would be typed into the remote shell. So queries
 * are removed from replayed bytes; live output is never touched.
 */
const QUERIES = new RegExp(
  [
    "\\x1b\\[[>=]?[0-9;]*c", // device attributes (DA1/DA2/DA3)
    "\\x1b\\[\\??[0-9;]*n", // device status / cursor position report
    "\\x1b\\[(?:11|13|14|15|16|18|19|20|21)(?:;[0-9]*)*t", // window state/size reports
    "\\x1b\\[\\??[0-9;]*\\$p", // DECRQM mode queries
    "\\x1b\\[>[0-9]*q", // XTVERSION
    "\\x1b\\[\\?u", // kitty keyboard protocol query
    "\\x1b\\](?:4|10|11|12|17|19|104)(?:;[^\\x07\\x1b]*)?;\\?(?:\\x07|\\x1b\\\\)", // OSC colour queries
    "\\x1bP(?:\\+q|\\$q)[^\\x1b]*\\x1b\\\\", // DCS XTGETTCAP / DECRQSS
  ].join("|"),
  "g",
);

/** `bytes` with terminal queries removed (bytes are treated as Latin-1, so UTF-8 passes through). */
export function stripTerminalQueries(bytes: Uint8Array): Uint8Array {
  if (bytes.indexOf(0x1b) < 0) return bytes;
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  const out = s.replace(QUERIES, "");
  if (out.length === s.length) return bytes;
  const res = new Uint8Array(out.length);
  for (let i = 0; i < out.length; i++) res[i] = out.charCodeAt(i);
  return res;
}
