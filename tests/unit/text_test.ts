import assert from "node:assert/strict";
import { visible } from "../../src/common/text.ts";
import { table } from "../../src/cli/output.ts";

Deno.test("visible: control characters become escapes; printable text is untouched", () => {
  assert.equal(visible("web-1 ünïcode ✓"), "web-1 ünïcode ✓");
  assert.equal(visible("\x1b[2J\x1b]0;pwned\x07"), "\\e[2J\\e]0;pwned\\x07");
  assert.equal(visible("a\nb\rc\td"), "a\\nb\\rc\\td");
  assert.equal(visible("\x00\x7f\u009b"), "\\x00\\x7f\\x9b");
  assert.equal(visible("evil\u202etxt.exe"), "evil\\u202etxt.exe");
});

Deno.test("table: a cell cannot add a row or move the cursor", () => {
  const t = table(["NAME", "COMMAND"], [["box", "rm -rf /\n2026-01-01  forged row"], [
    "\x1b[Hx",
    "y",
  ]]);
  assert.equal(t.split("\n").length, 3);
  // deno-lint-ignore no-control-regex
  assert.doesNotMatch(t, /[\x00-\x08\x0b-\x1f\x7f]/);
  assert.ok(t.includes("rm -rf /\\n2026-01-01  forged row"));
});
