import assert from "node:assert/strict";
import { FailurePacer, Throttle } from "../../src/common/throttle.ts";

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

Deno.test("failure pacer: a burst at once, then spaced answers; too long a wait is -1", () => {
  const p = new FailurePacer(10, 3, 1_000);
  assert.deepEqual([p.fail("a"), p.fail("a"), p.fail("a")], [0, 0, 0], "the burst");
  const waits = [p.fail("a"), p.fail("a"), p.fail("a")];
  for (let i = 1; i < waits.length; i++) assert.ok(waits[i] > waits[i - 1], String(waits));
  assert.ok(waits[0] > 0 && waits[0] <= 100, String(waits));
  assert.equal(p.fail("b"), 0, "other addresses are not affected");
  let last = 0;
  for (let i = 0; i < 20 && last >= 0; i++) last = p.fail("a");
  assert.equal(last, -1, "beyond the longest wait: answer at once with a slow-down");
});
