/** The share page's files in the bundle (src/relay/page/assets.gen.ts) are those of today. */
import assert from "node:assert/strict";
import { generate, OUT } from "../../scripts/page_assets.ts";

Deno.test("page assets: assets.gen.ts matches src/relay/page/ and the npm packages", async () => {
  assert.ok(
    (await Deno.readTextFile(OUT)) === generate(),
    "src/relay/page/assets.gen.ts is out of date: run ./scripts/deno run -P scripts/page_assets.ts",
  );
});
