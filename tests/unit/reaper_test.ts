import assert from "node:assert/strict";
import { CONFIG, eventually, pgrep, Proc, ROOT } from "../helpers.ts";

function demo(tag: number, mode = "") {
  return new Proc([
    Deno.execPath(),
    "run",
    "-q",
    "-P",
    "--config",
    CONFIG,
    `${ROOT}/tests/fixtures/reaper_demo.ts`,
    String(tag),
    ...(mode ? [mode] : []),
  ]);
}

const gone = async (tag: number) =>
  (await pgrep(`sleep ${tag}`)) === "" && (await pgrep(`sleep ${tag + 1}`)) === "";

Deno.test("reaper: what the agent ran dies with it (kill -9), background jobs included", async () => {
  const tag = 3000 + Math.floor(Math.random() * 5000);
  const p = demo(tag);
  await p.waitFor(/ready/, "stdout");
  await eventually(() => pgrep(`sleep ${tag}`), "the command to run");
  p.kill("SIGKILL");
  await p.status;
  await eventually(() => gone(tag), "the command to be ended by the reaper", 10_000);
});

Deno.test("reaper: a clean stop leaves nothing behind, and ends what is still running", async () => {
  const tag = 3000 + Math.floor(Math.random() * 5000);
  const clean = demo(tag, "close");
  await clean.waitFor(/closed/, "stdout");
  assert.equal((await clean.status).code, 0);
  assert.ok(await gone(tag));
  const tag2 = tag + 10;
  const leave = demo(tag2, "leave");
  await leave.waitFor(/closed/, "stdout");
  await leave.status;
  await eventually(() => gone(tag2), "what still ran to be ended", 10_000);
});
