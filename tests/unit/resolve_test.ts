import assert from "node:assert/strict";
import { resolveMachine } from "../../src/client/resolve.ts";
import { selectMachine } from "../../src/client/select.ts";
import type { MachineView } from "../../src/client/relay_client.ts";
import type { TetherError } from "../../src/common/errors.ts";

function m(
  id: string,
  name: string,
  hostname: string,
  extra: Partial<MachineView> = {},
): MachineView {
  return {
    id,
    name,
    hostname,
    online: true,
    last_seen: "",
    heartbeat_age_ms: 0,
    labels: {},
    sessions: 0,
    os: "linux",
    arch: "x86_64",
    version: "0",
    ...extra,
  };
}

const fleet = [
  m("8f23a4b0-0000-4000-8000-000000000001", "prod-api-1", "ip-10-0-0-1"),
  m("8f23a4b0-0000-4000-8000-000000000002", "prod-api-2", "ip-10-0-0-2"),
  m("1c2d3e4f-0000-4000-8000-000000000003", "ci.yml:build", "runner-7"),
  m("abcd0000-0000-4000-8000-000000000004", "prod", "prod-db"), // a name that is a prefix of others
  m("55550000-0000-4000-8000-000000000005", "web", "web"),
  m("66660000-0000-4000-8000-000000000006", "deploy.yml:web", "runner-9"),
];

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as TetherError).code;
  }
  return "ok";
}

Deno.test("resolver precedence: id, name, hostname, job key, unique prefix", () => {
  const table: [string, string][] = [
    ["8f23a4b0-0000-4000-8000-000000000002", "prod-api-2"], // exact id
    ["prod", "prod"], // exact name wins over the prefix of prod-api-*
    ["ip-10-0-0-1", "prod-api-1"], // exact hostname
    ["build", "ci.yml:build"], // part after the last ':'
    ["web", "web"], // exact name wins over the job key deploy.yml:web
    ["runner-9", "deploy.yml:web"], // hostname
    ["1c2d", "ci.yml:build"], // id prefix
    ["prod-api-1", "prod-api-1"],
    ["prod-d", "prod"], // hostname prefix prod-db
  ];
  for (const [q, want] of table) assert.equal(resolveMachine(fleet, q).name, want, q);
});

Deno.test("resolver: ambiguity lists candidates; short prefixes and unknowns are not found", () => {
  try {
    resolveMachine(fleet, "8f23");
    assert.fail("should be ambiguous");
  } catch (e) {
    const err = e as TetherError;
    assert.equal(err.code, "ambiguous_machine");
    assert.deepEqual(err.candidates?.map((c) => c.name).sort(), ["prod-api-1", "prod-api-2"]);
    assert.equal(typeof err.candidates?.[0].online, "boolean");
  }
  assert.equal(code(() => resolveMachine(fleet, "prod-api")), "ambiguous_machine");
  assert.equal(code(() => resolveMachine(fleet, "8f2")), "machine_not_found"); // < 4 chars
  assert.equal(code(() => resolveMachine(fleet, "nothing")), "machine_not_found");
});

Deno.test("selector: one match, --first, ambiguity without a terminal", async () => {
  const ms = [
    m("a1a1a1a1-0", "zeta", "z", { labels: { env: "prod" } }),
    m("b2b2b2b2-0", "alpha", "a", { labels: { env: "prod" }, online: false }),
    m("c3c3c3c3-0", "beta", "b", { labels: { env: "prod" } }),
    m("d4d4d4d4-0", "gamma", "g", { labels: { env: "dev" } }),
  ];
  const env = { interactive: false };
  assert.equal((await selectMachine(ms, { selector: { env: "dev" }, env })).name, "gamma");
  // --first: the first *online* match by name.
  assert.equal(
    (await selectMachine(ms, { selector: { env: "prod" }, first: true, env })).name,
    "beta",
  );
  await assert.rejects(
    selectMachine(ms, { selector: { env: "prod" }, env }),
    (e: TetherError) => e.code === "ambiguous_machine" && /--first/.test(e.hint ?? ""),
  );
  await assert.rejects(
    selectMachine(ms, { selector: { env: "qa" }, env }),
    (e: TetherError) => e.code === "machine_not_found",
  );
  await assert.rejects(
    selectMachine(ms, { env }),
    (e: TetherError) => e.code === "interactive_required",
  );
  // A name and a selector together: the name is resolved among the selector's matches.
  await assert.rejects(
    selectMachine(ms, { query: "gamma", selector: { env: "prod" }, env }),
    (e: TetherError) => e.code === "machine_not_found",
  );
});

Deno.test("resolver: an ambiguity between online and offline machines says so, and offers --online", () => {
  const twins = [
    m("aaaa0000-0000-4000-8000-000000000001", "twin", "h1"),
    m("bbbb0000-0000-4000-8000-000000000002", "twin", "h2", { online: false }),
    m("cccc0000-0000-4000-8000-000000000003", "twin", "h3", { online: false }),
  ];
  for (const onlineFlag of [true, false]) {
    try {
      resolveMachine(twins, "twin", { onlineFlag });
      assert.fail("ambiguous");
    } catch (e) {
      const err = e as TetherError;
      assert.equal(err.message, "'twin' matches 3 machines by name (1 online, 2 offline)");
      assert.equal(/--online/.test(err.hint ?? ""), onlineFlag);
    }
  }
  try {
    resolveMachine(twins.slice(1), "twin", { onlineFlag: true });
  } catch (e) {
    assert.equal((e as TetherError).message, "'twin' matches 2 machines by name");
    assert.doesNotMatch((e as TetherError).hint ?? "", /--online/);
  }
});
