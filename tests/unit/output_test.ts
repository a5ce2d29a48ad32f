/** cli/output.ts: tether's own lines reach a non-blocking descriptor whole. */
import assert from "node:assert/strict";
import { writeAllSync } from "../../src/cli/output.ts";

Deno.test("writeAllSync waits out a full non-blocking pipe (WouldBlock) and writes every byte once", () => {
  const got: number[] = [];
  let refusals = 0;
  // Takes at most 3 bytes a call, and refuses every other call as a full pipe does.
  const file = {
    writeSync(p: Uint8Array): number {
      if ((got.length + refusals) % 2 === 0 && refusals < 4) {
        refusals++;
        throw new Deno.errors.WouldBlock("Resource temporarily unavailable (os error 11)");
      }
      const n = Math.min(3, p.length);
      got.push(...p.subarray(0, n));
      return n;
    },
  };
  const data = new TextEncoder().encode("tether: a line that needs several writes\n");
  writeAllSync(file, data);
  assert.equal(refusals, 4);
  assert.deepEqual(new Uint8Array(got), data);
});

Deno.test("writeAllSync passes on any other error (a closed pipe is not waited for)", () => {
  const file = {
    writeSync(): number {
      throw new Deno.errors.BrokenPipe("Broken pipe (os error 32)");
    },
  };
  assert.throws(() => writeAllSync(file, new Uint8Array(4)), Deno.errors.BrokenPipe);
});
