/** The rooms of docs/ARCHITECTURE.md, and who may import whom, checked on the source. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ROOT, walkFiles } from "../helpers.ts";

const MAY_IMPORT: Record<string, string[]> = {
  common: ["common"],
  protocol: ["protocol", "common"],
  relay: ["relay", "protocol", "common"],
  agent: ["agent", "protocol", "common"],
  client: ["client", "protocol", "common"],
  ci: ["ci", "agent", "client", "protocol", "common"],
  cli: ["cli", "ci", "relay", "agent", "client", "protocol", "common"],
};

Deno.test("architecture: each room imports only the rooms below it; agent and client never each other", () => {
  const src = join(ROOT, "src");
  const wrong: string[] = [];
  for (const file of walkFiles(src)) {
    if (!file.endsWith(".ts")) continue;
    const room = file.slice(src.length + 1).split("/")[0];
    const text = Deno.readTextFileSync(file);
    for (const m of text.matchAll(/(?:import|export)[^"';]*?from\s+"(\.{1,2}\/[^"]+)"/g)) {
      const target = join(file, "..", m[1]).slice(src.length + 1).split("/")[0];
      if (!(MAY_IMPORT[room] ?? []).includes(target)) {
        wrong.push(`${file.slice(ROOT.length + 1)} imports ${m[1]}`);
      }
    }
    // Dynamic imports count too.
    for (const m of text.matchAll(/import\("(\.{1,2}\/[^"]+)"\)/g)) {
      const target = join(file, "..", m[1]).slice(src.length + 1).split("/")[0];
      if (!(MAY_IMPORT[room] ?? []).includes(target)) {
        wrong.push(`${file.slice(ROOT.length + 1)} imports ${m[1]}`);
      }
    }
  }
  assert.deepEqual(wrong, []);
});
