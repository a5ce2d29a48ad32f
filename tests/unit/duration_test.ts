import assert from "node:assert/strict";
import { formatAge, parseDuration } from "../../src/common/duration.ts";
import type { TetherError } from "../../src/common/errors.ts";

Deno.test("parseDuration: units, sums, bare seconds; anything else is a usage error naming the flag", () => {
  const cases: [string, number][] = [
    ["500ms", 500],
    ["2s", 2000],
    ["1.5s", 1500],
    ["5m", 300_000],
    ["1h30m", 5_400_000],
    ["7d", 604_800_000],
    ["30", 30_000],
    [" 10s ", 10_000],
  ];
  for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text);
  for (const bad of ["", "10x", "s", "1h 30m", "-5s", "5s5"]) {
    assert.throws(() => parseDuration(bad, "--wait"), (e) => {
      const err = e as TetherError;
      return err.code === "usage" && err.message === `invalid --wait '${bad}'`;
    }, bad);
  }
});

Deno.test("formatAge: the largest whole unit", () => {
  assert.deepEqual(
    [0, 999, 59_999, 60_000, 3_599_999, 3_600_000, 86_400_000 * 3, -5].map(formatAge),
    ["0s", "0s", "59s", "1m", "59m", "1h", "3d", "0s"],
  );
});
