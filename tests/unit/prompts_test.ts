/**
 * Prompts without a TTY: the picker's pure state machine and renderer, and
 * the real prompt drivers fed keys through in-memory streams (PassThrough)
 * with their rendered text read back. The gate is checked both with an
 * injected terminal flag and with a real process whose stdin is /dev/null.
 */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { stripVTControlCharacters } from "node:util";
import { TetherError } from "../../src/common/errors.ts";
import type { MachineView } from "../../src/client/relay_client.ts";
import {
  canPrompt,
  confirm,
  filterItems,
  interactiveRequired,
  isCancelled,
  keyToPickerEvent,
  machineItems,
  machineLabel,
  pick,
  type PickItem,
  pickMachine,
  PromptCancelled,
  type PromptIO,
  promptPassword,
  promptText,
  reducePicker,
  renderPicker,
  requirePrompt,
  selectorAmbiguous,
} from "../../src/client/prompts.ts";
import { ansiStyle, initialPickerState, pageStart } from "../../src/client/prompt_picker.ts";

// ---- fixtures -------------------------------------------------------------------

function machine(
  id: string,
  name: string,
  hostname: string,
  online: boolean,
  ageMs: number,
  labels: Record<string, string> = {},
): MachineView {
  return {
    id,
    name,
    hostname,
    online,
    last_seen: new Date(0).toISOString(),
    heartbeat_age_ms: ageMs,
    labels,
    sessions: 0,
    os: "linux",
    arch: "x86_64",
    version: "0.1.0",
  };
}

const API1 = machine("8f23a4b0c1d2e3f4", "prod-api-1", "ip-10-0-1-5", true, 3_000, { env: "prod" });
const API2 = machine("1c2d3e4f5a6b7c8d", "prod-api-2", "ip-10-0-1-6", true, 12_000, {
  env: "prod",
});
const DB = machine("77aa00bb11cc22dd", "prod-db", "db-primary", false, 7_200_000);
const WEB = machine("0badc0de0badc0de", "staging-web", "stg-web-1", true, 1_000, {
  env: "staging",
});
const MACHINES = [API1, API2, DB, WEB];

const ENV = { json: false, interactive: true };

const KEY = {
  up: "\x1b[A",
  down: "\x1b[B",
  enter: "\r",
  backspace: "\x7f",
  ctrlC: "\x03",
  ctrlD: "\x04",
  tab: "\t",
};

/** An in-memory terminal: keys in, rendered text out, no TTY anywhere. */
function fakeTerminal(extra: Partial<PromptIO> = {}) {
  const input = new PassThrough();
  const output = new PassThrough();
  const chunks: string[] = [];
  output.on("data", (c: Uint8Array | string) => chunks.push(String(c)));
  const io: PromptIO = {
    input,
    output,
    terminal: true,
    columns: 100,
    rows: 30,
    color: false,
    ...extra,
  };
  return {
    io,
    input,
    send(keys: string) {
      input.write(keys);
    },
    /** Everything written so far, escape sequences included. */
    raw: () => chunks.join(""),
    /** Everything written so far as text. */
    text: () => stripVTControlCharacters(chunks.join("")),
    /** The last screen drawn that contains `marker` (each render is one write). */
    frame(marker: string): string {
      for (let i = chunks.length - 1; i >= 0; i--) {
        const t = stripVTControlCharacters(chunks[i]);
        if (t.includes(marker)) return t;
      }
      return "";
    },
  };
}

type Term = ReturnType<typeof fakeTerminal>;

/** Waits until `check` passes (it throws until then); fails after 3 s with its last error. */
async function eventually(check: () => void, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      check();
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/** The picker frame's rows (between header and help line), trimmed. */
async function pickerRows(t: Term, expectCount: string): Promise<string[]> {
  let rows: string[] = [];
  await eventually(() => {
    const f = t.frame("type to filter");
    assert.match(f, new RegExp(`^${expectCount} · `, "m"));
    rows = f.split("\n").filter((l) => /^(❯| ) \S/.test(l) && !l.includes("NAME"));
  });
  return rows;
}

/** Resolves to the outcome of `p` without letting a rejection go unhandled. */
function settle<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error) => ({ ok: false as const, error }),
  );
}

// ---- the pure picker model --------------------------------------------------------

Deno.test("filter: case-insensitive over name, hostname, id and labels; all terms must match", () => {
  const items = machineItems(MACHINES);
  const names = (q: string) => filterItems(items, q).map((it) => it.value.name);
  assert.deepEqual(names(""), ["prod-api-1", "prod-api-2", "staging-web", "prod-db"]);
  assert.deepEqual(names("API"), ["prod-api-1", "prod-api-2"]);
  assert.deepEqual(names("ip-10-0-1-6"), ["prod-api-2"]);
  assert.deepEqual(names("8f23"), ["prod-api-1"]);
  assert.deepEqual(names("env=staging"), ["staging-web"]);
  assert.deepEqual(names("prod 1-5"), ["prod-api-1"]);
  assert.deepEqual(names("nothing-like-this"), []);
});

Deno.test("machineItems: online first by name, offline shown but not pickable", () => {
  const items = machineItems(MACHINES);
  assert.deepEqual(items.map((it) => it.value.name), [
    "prod-api-1",
    "prod-api-2",
    "staging-web",
    "prod-db",
  ]);
  const db = items.find((it) => it.value === DB)!;
  assert.equal(db.disabled, "offline");
  assert.deepEqual(db.cells, ["prod-db", "77aa00bb", "db-primary", "offline", "2h"]);
  assert.equal(items[0].short, "prod-api-1 (8f23a4b0)");
  assert.equal(machineLabel(API1), "prod-api-1 (8f23a4b0)");
});

Deno.test("reducePicker: moves skip disabled items and stop at the ends; a new query resets", () => {
  const items = machineItems(MACHINES);
  let s = initialPickerState(items);
  assert.equal(s.active, 0);
  s = reducePicker(items, s, { type: "move", by: -1 });
  assert.equal(s.active, 0, "stops at the top");
  s = reducePicker(items, s, { type: "move", by: 1 });
  s = reducePicker(items, s, { type: "move", by: 1 });
  assert.equal(s.active, 2);
  s = reducePicker(items, s, { type: "move", by: 1 });
  assert.equal(s.active, 2, "the offline machine below cannot be reached");
  s = reducePicker(items, s, { type: "last" });
  assert.equal(s.active, 2);
  s = reducePicker(items, s, { type: "query", text: "api" });
  assert.deepEqual(s, { query: "api", active: 0 });
  s = reducePicker(items, s, { type: "move", by: 10 });
  assert.equal(s.active, 1);
  s = reducePicker(items, s, { type: "query", text: "db" });
  assert.deepEqual(s, { query: "db", active: -1 }, "only an offline match: nothing pickable");
  s = reducePicker(items, s, { type: "move", by: 1 });
  assert.equal(s.active, -1);
});

Deno.test("keyToPickerEvent: arrows, tab, ctrl-p/n and paging; letters are typing", () => {
  assert.deepEqual(keyToPickerEvent({ name: "up" }, 10), { type: "move", by: -1 });
  assert.deepEqual(keyToPickerEvent({ name: "down" }, 10), { type: "move", by: 1 });
  assert.deepEqual(keyToPickerEvent({ name: "tab", shift: true }, 10), { type: "move", by: -1 });
  assert.deepEqual(keyToPickerEvent({ name: "n", ctrl: true }, 10), { type: "move", by: 1 });
  assert.deepEqual(keyToPickerEvent({ name: "pagedown" }, 7), { type: "move", by: 7 });
  assert.equal(keyToPickerEvent({ name: "n" }, 10), undefined);
  assert.equal(keyToPickerEvent({ name: "a" }, 10), undefined);
});

Deno.test("renderPicker: name, id, hostname, online flag and heartbeat age in columns", () => {
  const items = machineItems(MACHINES);
  const [line, body] = renderPicker(items, initialPickerState(items), {
    message: "Pick a machine",
    headers: ["NAME", "ID", "HOSTNAME", "STATUS", "HEARTBEAT"],
    action: "attach",
    width: 100,
  });
  assert.equal(line, "? Pick a machine: ");
  assert.deepEqual(body.split("\n"), [
    "  NAME         ID        HOSTNAME     STATUS   HEARTBEAT",
    "❯ prod-api-1   8f23a4b0  ip-10-0-1-5  online   3s",
    "  prod-api-2   1c2d3e4f  ip-10-0-1-6  online   12s",
    "  staging-web  0badc0de  stg-web-1    online   1s",
    "  prod-db      77aa00bb  db-primary   offline  2h",
    "4/4 · type to filter · ↑↓ move · ⏎ attach · ctrl-c cancel",
  ]);
});

Deno.test("renderPicker: offline rows are dimmed, the cursor row highlighted, in colour", () => {
  const items = machineItems(MACHINES);
  const [, body] = renderPicker(items, initialPickerState(items), {
    message: "Pick a machine",
    style: ansiStyle,
  });
  const lines = body.split("\n");
  const db = lines.find((l) => l.includes("prod-db"))!;
  assert.ok(db.startsWith("\x1b[2m"), `offline row dimmed: ${JSON.stringify(db)}`);
  const active = lines.find((l) => l.includes("❯"))!;
  assert.ok(active.startsWith("\x1b[36m") && active.includes("prod-api-1"));
});

Deno.test("renderPicker: no match, nothing pickable, paging and narrow terminals", () => {
  const items = machineItems(MACHINES);
  const view = { message: "Pick a machine", noun: "machines", width: 100 };
  assert.match(
    renderPicker(items, initialPickerState(items, "zzz"), view)[1],
    /no machines match 'zzz'/,
  );
  assert.match(
    renderPicker(items, initialPickerState(items, "db"), view)[1],
    /nothing here can be picked \(offline\)/,
  );
  const many: PickItem<number>[] = Array.from({ length: 30 }, (_, i) => ({
    value: i,
    cells: [`item-${i}`],
  }));
  const body = renderPicker(many, { query: "", active: 15 }, { ...view, pageSize: 5 })[1];
  assert.deepEqual(body.split("\n").slice(0, 7), [
    "  ↑ 13 more",
    "  item-13",
    "  item-14",
    "❯ item-15",
    "  item-16",
    "  item-17",
    "  ↓ 12 more",
  ]);
  assert.equal(pageStart(30, 0, 5), 0);
  assert.equal(pageStart(30, 29, 5), 25);
  const narrow = renderPicker(machineItems(MACHINES), initialPickerState(items), {
    ...view,
    width: 30,
  })[1];
  for (const l of narrow.split("\n")) assert.ok([...l].length < 30, `fits: ${l}`);
  const done = renderPicker(items, initialPickerState(items), view, true);
  assert.deepEqual(done, ["✔ Pick a machine: prod-api-1 (8f23a4b0)", ""]);
});

// ---- the picker driven by keys ------------------------------------------------------

Deno.test("pickMachine: typing filters, Down moves, Enter returns that machine", async () => {
  const t = fakeTerminal();
  const result = pickMachine(MACHINES, { env: ENV, io: t.io });
  assert.equal((await pickerRows(t, "4/4")).length, 4);
  t.send("api");
  assert.deepEqual(await pickerRows(t, "2/4"), [
    "❯ prod-api-1   8f23a4b0  ip-10-0-1-5  online   3s",
    "  prod-api-2   1c2d3e4f  ip-10-0-1-6  online   12s",
  ]);
  assert.match(t.frame("type to filter"), /^\? Pick a machine: api$/m);
  t.send(KEY.down);
  await eventually(() => assert.match(t.frame("type to filter"), /^❯ prod-api-2/m));
  t.send(KEY.enter);
  assert.equal(await result, API2);
  assert.match(t.text(), /✔ Pick a machine: prod-api-2 \(1c2d3e4f\)\n$/);
});

Deno.test("pickMachine: backspace widens the filter, Up/Tab move, the filter matches hostnames", async () => {
  const t = fakeTerminal();
  const result = pickMachine(MACHINES, { env: ENV, io: t.io });
  t.send("stg");
  assert.deepEqual(await pickerRows(t, "1/4"), [
    "❯ staging-web  0badc0de  stg-web-1    online   1s",
  ]);
  t.send(KEY.backspace + KEY.backspace + KEY.backspace);
  await pickerRows(t, "4/4");
  t.send(KEY.tab + KEY.tab + KEY.up);
  await eventually(() => assert.match(t.frame("type to filter"), /^❯ prod-api-2/m));
  assert.match(t.frame("type to filter"), /^\? Pick a machine:$/m, "Tab did not type itself");
  t.send(KEY.enter);
  assert.equal(await result, API2);
});

Deno.test("pickMachine: Enter with no match or only offline matches picks nothing", async () => {
  const t = fakeTerminal();
  const result = settle(pickMachine(MACHINES, { env: ENV, io: t.io }));
  t.send("zzz" + KEY.enter);
  await eventually(() => assert.match(t.frame("type to filter"), /no machines match 'zzz'/));
  t.send(KEY.backspace.repeat(3) + "db" + KEY.enter);
  await eventually(() => assert.match(t.frame("type to filter"), /nothing here can be picked/));
  assert.match(t.frame("type to filter"), /^\? Pick a machine: db$/m, "query kept after Enter");
  t.send(KEY.backspace.repeat(2) + "web" + KEY.enter);
  const r = await result;
  assert.ok(r.ok && r.value === WEB);
});

Deno.test("pickMachine: Ctrl-C cancels with PromptCancelled (130), erases the list, shows the cursor", async () => {
  const t = fakeTerminal();
  const result = settle(pickMachine(MACHINES, { env: ENV, io: t.io }));
  t.send("pro");
  await pickerRows(t, "3/4");
  t.send(KEY.ctrlC);
  const r = await result;
  assert.ok(!r.ok);
  assert.ok(r.error instanceof PromptCancelled);
  assert.ok(isCancelled(r.error));
  assert.ok(r.error instanceof TetherError, "a CLI that knows only TetherError still prints it");
  assert.equal(r.error.exitCode, 130);
  assert.equal(r.error.message, "cancelled");
  assert.ok(t.raw().endsWith("\x1b[?25h"), "ends by showing the cursor");
  assert.ok(!t.text().includes("✔"), "no pick line");
});

for (
  const [name, keys] of [
    ["Ctrl-D", KEY.ctrlD],
    ["Esc", "\x1b"],
  ] as const
) {
  Deno.test(`pickMachine: ${name} cancels too`, async () => {
    const t = fakeTerminal();
    const result = settle(pickMachine(MACHINES, { env: ENV, io: t.io }));
    await pickerRows(t, "4/4");
    t.send(keys);
    const r = await result;
    assert.ok(!r.ok && isCancelled(r.error));
  });
}

Deno.test("pickMachine: the end of input cancels instead of waiting for ever", async () => {
  const t = fakeTerminal();
  const result = settle(pickMachine(MACHINES, { env: ENV, io: t.io }));
  await pickerRows(t, "4/4");
  t.input.end();
  const r = await result;
  assert.ok(!r.ok && isCancelled(r.error));
});

Deno.test("pickMachine: an aborted io.signal throws its reason", async () => {
  const t = fakeTerminal();
  const ac = new AbortController();
  const result = settle(pickMachine(MACHINES, { env: ENV, io: { ...t.io, signal: ac.signal } }));
  await pickerRows(t, "4/4");
  const reason = new TetherError("timeout", "gave up");
  ac.abort(reason);
  const r = await result;
  assert.ok(!r.ok && r.error === reason);
});

Deno.test("pickMachine: nothing to pick fails without prompting", async () => {
  const t = fakeTerminal();
  await assert.rejects(pickMachine([], { env: ENV, io: t.io }), { code: "machine_not_found" });
  await assert.rejects(pickMachine([DB], { env: ENV, io: t.io }), {
    code: "machine_offline",
    message: "all 1 machine is offline",
  });
  assert.equal(t.raw(), "");
});

Deno.test("pick: generic items (e.g. sessions) return their value", async () => {
  const t = fakeTerminal();
  const items: PickItem<{ sid: string }>[] = [
    { value: { sid: "s1" }, cells: ["s1", "bash", "2 clients"] },
    { value: { sid: "s2" }, cells: ["s2", "vim", "1 client"], short: "session s2" },
  ];
  const result = pick(items, {
    env: ENV,
    io: t.io,
    message: "Pick a session",
    headers: ["ID", "COMMAND", "CLIENTS"],
    refusal: interactiveRequired("no session given", "pass --session ID or --new"),
  });
  t.send("vim" + KEY.enter);
  assert.deepEqual(await result, { sid: "s2" });
  assert.match(t.text(), /✔ Pick a session: session s2\n$/);
});

// ---- confirm, password, text -----------------------------------------------------

Deno.test("confirm: Enter takes the default (yes), 'n' says no, and (y/N) defaults to no", async () => {
  let t = fakeTerminal();
  let answer = confirm("Attach to prod-api-1 (8f23a4b0)?", { env: ENV, io: t.io });
  await eventually(() => assert.match(t.text(), /\? Attach to prod-api-1 \(8f23a4b0\)\? \(Y\/n\)/));
  t.send(KEY.enter);
  assert.equal(await answer, true);
  assert.match(t.frame("Attach"), /✔ Attach to prod-api-1 \(8f23a4b0\)\? Yes/);

  t = fakeTerminal();
  answer = confirm("Attach?", { env: ENV, io: t.io });
  t.send("n" + KEY.enter);
  assert.equal(await answer, false);

  t = fakeTerminal();
  answer = confirm("Delete?", { env: ENV, io: t.io, default: false });
  await eventually(() => assert.match(t.text(), /\(y\/N\)/));
  t.send(KEY.enter);
  assert.equal(await answer, false);
});

Deno.test("confirm: Ctrl-C cancels", async () => {
  const t = fakeTerminal();
  const r = await settle((() => {
    const p = confirm("Attach?", { env: ENV, io: t.io });
    t.send(KEY.ctrlC);
    return p;
  })());
  assert.ok(!r.ok && isCancelled(r.error));
});

Deno.test("picker then confirm on the same streams (the output is never ended)", async () => {
  const t = fakeTerminal();
  const m = pickMachine(MACHINES, { env: ENV, io: t.io });
  t.send("web" + KEY.enter);
  const picked = await m;
  const ok = confirm(`Attach to ${machineLabel(picked)}?`, { env: ENV, io: t.io });
  t.send(KEY.enter);
  assert.equal(await ok, true);
  assert.match(
    t.text(),
    /✔ Pick a machine: staging-web \(0badc0de\)\n[^]*✔ Attach to staging-web \(0badc0de\)\? Yes/,
  );
});

Deno.test("promptPassword: returns what was typed, never echoes it, refuses empty", async () => {
  const t = fakeTerminal();
  const pw = promptPassword("Password for prod-api-1:", { env: ENV, io: t.io });
  t.send(KEY.enter);
  await eventually(() => assert.match(t.text(), /type the password/));
  t.send("s3cr3t!" + KEY.enter);
  assert.equal(await pw, "s3cr3t!");
  assert.ok(!t.text().includes("s3cr3t"), "the password never reaches the screen");
});

Deno.test("promptPassword: mask shows one * per character", async () => {
  const t = fakeTerminal();
  const pw = promptPassword("Password:", { env: ENV, io: t.io, mask: true });
  t.send("abcd");
  await eventually(() => assert.match(t.text(), /Password: \*\*\*\*/));
  t.send(KEY.enter);
  assert.equal(await pw, "abcd");
});

Deno.test("promptText: default on Enter, typed text otherwise, validation message", async () => {
  const refusal = interactiveRequired("no relay URL", "pass --relay URL");
  let t = fakeTerminal();
  let v = promptText("Relay URL", {
    env: ENV,
    io: t.io,
    refusal,
    default: "http://127.0.0.1:7420",
  });
  t.send(KEY.enter);
  assert.equal(await v, "http://127.0.0.1:7420");

  t = fakeTerminal();
  v = promptText("Relay URL", {
    env: ENV,
    io: t.io,
    refusal,
    validate: (s) => /^(http|ws)s?:\/\//.test(s) || "use http(s):// or ws(s)://",
  });
  t.send("relay.example" + KEY.enter);
  await eventually(() => assert.match(t.text(), /use http\(s\):\/\//));
  t.send("\x15https://relay.example " + KEY.enter); // Ctrl-U clears the line first
  assert.equal(await v, "https://relay.example");
});

// ---- the gate ----------------------------------------------------------------------

Deno.test("canPrompt: a terminal, no --json, no --no-interactive", () => {
  assert.equal(canPrompt({ json: false, interactive: true }, { terminal: true }), true);
  assert.equal(canPrompt({ json: true, interactive: true }, { terminal: true }), false);
  assert.equal(canPrompt({ json: false, interactive: false }, { terminal: true }), false);
  assert.equal(canPrompt({ json: false, interactive: true }, { terminal: false }), false);
  assert.throws(
    () => requirePrompt({ interactive: false }, interactiveRequired("x", "y"), { terminal: true }),
    { code: "interactive_required", message: "x", hint: "y" },
  );
  requirePrompt({ interactive: true }, interactiveRequired("x", "y"), { terminal: true });
});

Deno.test("gate: every prompt refuses at once with the code naming what was missing", async () => {
  for (
    const [env, io] of [
      [{ json: true, interactive: false }, { terminal: true }],
      [{ json: false, interactive: false }, { terminal: true }],
      [{ json: false, interactive: true }, { terminal: false }],
    ] as const
  ) {
    const t = fakeTerminal(io); // input never ends: a prompt that waited would hang the test
    const o = { env, io: t.io };
    await assert.rejects(pickMachine(MACHINES, o), (e: TetherError) => {
      assert.equal(e.code, "interactive_required");
      assert.match(e.hint ?? "", /--list/);
      return true;
    });
    await assert.rejects(
      pickMachine([API1, API2], { ...o, refusal: selectorAmbiguous([API1, API2], "env=prod") }),
      (e: TetherError) => {
        assert.equal(e.code, "ambiguous_machine");
        assert.deepEqual(e.candidates?.map((c) => c.name), ["prod-api-1", "prod-api-2"]);
        assert.match(e.hint ?? "", /--first/);
        return true;
      },
    );
    await assert.rejects(promptPassword("Password:", { ...o, machine: "prod-api-1" }), {
      code: "password_required",
      message: "machine prod-api-1 needs a password",
    });
    await assert.rejects(confirm("Attach?", o), { code: "interactive_required" });
    await assert.rejects(
      promptText("Relay URL", { ...o, refusal: interactiveRequired("no relay", "pass --relay") }),
      { code: "interactive_required", hint: "pass --relay" },
    );
    // The empty and all-offline checks come after the gate: the refusal names the missing input.
    await assert.rejects(pickMachine([], o), { code: "interactive_required" });
    assert.equal(t.raw(), "", "nothing drawn");
  }
});

Deno.test("gate: with stdin from /dev/null a real process fails at once, even if told it may prompt", async () => {
  const demo = new URL("../fixtures/prompt_demo.ts", import.meta.url);
  const started = Date.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-q", "-A", demo.pathname],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 1, new TextDecoder().decode(out.stderr));
  assert.deepEqual(JSON.parse(stdout), {
    error: {
      code: "interactive_required",
      message: "no machine given and no terminal to pick one",
      hint: "pass a machine name or id, or list them with `tether connect --list`",
    },
  });
  assert.equal(new TextDecoder().decode(out.stderr), "", "no prompt drawn");
  assert.ok(Date.now() - started < 20_000);
});
