import assert from "node:assert/strict";
import { SqliteStore } from "../../src/relay/store_sqlite.ts";
import { storeCases } from "../store_suite.ts";

const cases = storeCases(async () => {
  const dir = await Deno.makeTempDir();
  return {
    store: new SqliteStore(dir),
    dispose: () => Deno.remove(dir, { recursive: true }),
  };
});
for (const c of cases) Deno.test(`store (sqlite): ${c.name}`, c.fn);

Deno.test("store (sqlite): a data dir that cannot be used says where and why", async () => {
  const file = await Deno.makeTempFile();
  try {
    assert.throws(() => new SqliteStore(`${file}/relay`), (e: Error & { code?: string }) => {
      assert.equal(e.code, "relay_unavailable");
      assert.match(e.message, new RegExp(`cannot use the relay's data dir ${file}/relay: `));
      return true;
    });
  } finally {
    await Deno.remove(file);
  }
});
