import assert from "node:assert/strict";
import { join } from "node:path";
import { ExecManager } from "../../src/agent/exec.ts";
import type { Open } from "../../src/protocol/messages.ts";
import { fakeConn } from "./fakes.ts";

function open(o: Partial<Open>): Open {
  return { t: "open", sid: 1, kind: "exec", argv: [], stdin: false, window: 1 << 20, ...o };
}

Deno.test("exec records: after a restart, what ran is lost (never 0) and what ended keeps its status", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const execs = join(dir, "execs");
    Deno.mkdirSync(execs);
    const now = Date.now();
    const rec = (id: string, o: Record<string, unknown>) =>
      Deno.writeTextFileSync(
        join(execs, `${id}.json`),
        JSON.stringify({ id, argv: ["x"], created: now, ...o }),
      );
    rec("aaaaaaaaaaaa", { pid: 123 });
    rec("bbbbbbbbbbbb", {
      end: { state: "exited", code: 4, signal: null },
      ended_at: now,
      totals: [10, 2],
    });
    rec("cccccccccccc", {
      end: { state: "exited", code: 0, signal: null },
      ended_at: now - 7_200_000,
    });
    Deno.writeTextFileSync(join(execs, "garbage.json"), "{not json");
    const m = new ExecManager({ ringBytes: 1024, stateDir: dir, log: () => {} });
    m.restore();
    const list = Object.fromEntries(m.list().map((s) => [s.id, s]));
    assert.deepEqual(Object.keys(list).sort(), ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]);
    assert.equal(list.aaaaaaaaaaaa.state, "lost");
    assert.equal(list.bbbbbbbbbbbb.state, "exited");
    assert.equal(list.bbbbbbbbbbbb.exit_code, 4);
    assert.deepEqual([...Deno.readDirSync(execs)].map((e) => e.name).sort(), [
      "aaaaaaaaaaaa.json",
      "bbbbbbbbbbbb.json",
    ], "old and malformed records are removed");
    assert.equal(
      JSON.parse(Deno.readTextFileSync(join(execs, "aaaaaaaaaaaa.json"))).end.state,
      "lost",
    );

    const lost = fakeConn();
    m.find("aaaa")!.watch(lost.conn, open({ session: "aaaa" }));
    await Promise.resolve(); // the first pump runs once the stream is registered
    assert.equal(lost.sent.controls[0].t, "started");
    assert.deepEqual(
      (({ t, code }) => ({ t, code }))(lost.sent.controls[1] as { t: string; code: string }),
      { t: "error", code: "session_lost" },
    );
    const kept = fakeConn();
    m.find("bbbbbbbbbbbb")!.watch(kept.conn, open({ session: "bbbbbbbbbbbb", sid: 2 }));
    await Promise.resolve();
    const started = kept.sent.controls[0] as { offset: number; err_offset: number };
    assert.deepEqual([started.offset, started.err_offset], [10, 2], "the output was not kept");
    assert.deepEqual(kept.sent.controls[1], { t: "exit", sid: 2, code: 4, signal: null });
    m.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("exec: a command runs, is recorded, and is kept with its output once it ended", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = new ExecManager({ ringBytes: 1024, stateDir: dir, log: () => {} });
    const e = m.start(open({ argv: ["sh", "-c", "echo out; echo err >&2; exit 3"] }));
    assert.ok(!("code" in e));
    await e.ended;
    const [info] = m.list();
    assert.deepEqual([info.state, info.exit_code], ["exited", 3]);
    const { conn, sent } = fakeConn();
    e.watch(conn, open({ session: e.id }));
    await Promise.resolve();
    assert.deepEqual(sent.data.map(([ch, , t]) => [ch, t]), [[1, "out\n"], [2, "err\n"]]);
    assert.deepEqual(sent.controls.at(-1), { t: "exit", sid: 1, code: 3, signal: null });
    const rec = JSON.parse(Deno.readTextFileSync(join(dir, "execs", `${e.id}.json`)));
    assert.deepEqual(rec.end, { state: "exited", code: 3, signal: null });
    assert.deepEqual(rec.totals, [4, 4]);
    // A command that cannot start answers like a shell: 127 and a line on stderr.
    const bad = m.start(open({ argv: ["/no/such/program"] }));
    assert.ok(!("code" in bad));
    await bad.ended;
    const b = fakeConn();
    bad.watch(b.conn, open({ session: bad.id }));
    await Promise.resolve();
    assert.match(b.sent.data[0][2], /^tether: \/no\/such\/program: /);
    assert.deepEqual(b.sent.controls.at(-1), { t: "exit", sid: 1, code: 127, signal: null });
    m.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
