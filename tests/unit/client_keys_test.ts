import assert from "node:assert/strict";
import { incompleteTail } from "../../src/cli/exec.ts";
import { detachKeyName, parseDetachKey } from "../../src/client/attach.ts";

Deno.test("incompleteTail: only a real lead byte waits for the rest of its character", () => {
  const t = (...b: number[]) => incompleteTail(new Uint8Array(b));
  assert.equal(t(0x61), 0);
  assert.equal(t(0x61, 0xc3), 1, "é's lead");
  assert.equal(t(0xe2, 0x82), 2, "€ without its last byte");
  assert.equal(t(0xf0, 0x9f, 0x98), 3, "an emoji without its last byte");
  assert.equal(t(0xf0, 0x9f, 0x98, 0x80), 0, "a whole emoji");
  for (const bad of [0xc0, 0xc1, 0xf5, 0xf7, 0xf8, 0xfe, 0xff]) assert.equal(t(0x61, bad), 0);
  assert.equal(t(0x80, 0x80, 0x80), 0, "continuation bytes alone");
});

Deno.test("--detach-key: ctrl-X, ^X and none", () => {
  assert.equal(parseDetachKey("ctrl-d"), 0x04);
  assert.equal(parseDetachKey("Ctrl-]"), 0x1d);
  assert.equal(parseDetachKey("^P"), 0x10);
  assert.equal(parseDetachKey("ctrl-@"), 0x00);
  assert.equal(parseDetachKey("none"), null);
  for (const bad of ["d", "ctrl-", "ctrl-dd", "ctrl-1", "alt-d", ""]) {
    assert.equal(parseDetachKey(bad), undefined, bad);
  }
  assert.equal(detachKeyName(0x1d), "Ctrl-]");
});
