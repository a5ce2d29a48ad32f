import assert from "node:assert/strict";
import { Throttle } from "../../src/common/throttle.ts";

Deno.test("throttle: locks out after N failures in the window; cool-down doubles; success forgets", () => {
  const t = new Throttle(3, 60_000, 1_000);
  t.fail("a");
  t.fail("a");
  assert.equal(t.blockedFor("a"), 0);
  t.fail("a");
  assert.equal(t.blockedFor("a"), 1);
  assert.equal(t.blockedFor("b"), 0, "other keys are not affected");
  t.succeed("a"); // ignored while locked out
  assert.equal(t.blockedFor("a"), 1);
  for (let i = 0; i < 3; i++) t.fail("a");
  assert.equal(t.blockedFor("a"), 2, "the second lock-out is twice as long");
  t.succeed("b");
  t.fail("c");
  t.succeed("c");
  t.fail("c");
  t.fail("c");
  assert.equal(t.blockedFor("c"), 0, "a success resets the count");
});
