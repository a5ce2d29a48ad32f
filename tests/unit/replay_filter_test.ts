import assert from "node:assert/strict";
import { stripTerminalQueries } from "../../src/client/replay_filter.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("replay filter removes terminal queries and keeps everything else", () => {
  const cases: [string, string][] = [
    ["plain text\r\n", "plain text\r\n"],
    ["a\x1b[6nb", "ab"],
    ["\x1b[c\x1b[>c\x1b[>0c\x1b[=c", ""],
    ["\x1b[?6n\x1b[5n", ""],
    ["\x1b[14t\x1b[18;1t", ""],
    ["\x1b]11;?\x07x", "x"],
    ["\x1b]10;?\x1b\\", ""],
    ["\x1bP+q544e\x1b\\", ""],
    ["\x1b[?2004$p", ""],
    ["\x1b[>q\x1b[?u", ""],
    // Not queries: colours, cursor moves, titles, alternate screen.
    [
      "\x1b[31mred\x1b[0m\x1b[2J\x1b[H\x1b[?1049h\x1b]0;title\x07",
      "\x1b[31mred\x1b[0m\x1b[2J\x1b[H\x1b[?1049h\x1b]0;title\x07",
    ],
    ["héllo \x1b[6n wörld ✓", "héllo  wörld ✓"],
  ];
  for (const [input, want] of cases) {
    assert.equal(dec(stripTerminalQueries(enc(input))), want, JSON.stringify(input));
  }
});

Deno.test("replay filter returns the same array when there is nothing to strip", () => {
  const b = enc("\x1b[1mbold\x1b[0m");
  assert.equal(stripTerminalQueries(b), b);
});
