/** pipe_size.ts: a child's output pipe enlarged through /proc, at most MAX_ENLARGED at once. */
import assert from "node:assert/strict";
import { BULK_PIPE, enlargePipe, MAX_ENLARGED } from "../../src/agent/pipe_size.ts";

/** The size of the pipe on `fd` of `pid`, read as the test's own check (F_GETPIPE_SZ). */
function pipeSize(pid: number, fd: number): number {
  const lib = Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
  });
  try {
    const f = lib.symbols.open(new TextEncoder().encode(`/proc/${pid}/fd/${fd}\0`), 0o4000);
    assert.ok(f >= 0, "the test opens the pipe");
    const size = lib.symbols.fcntl(f, 1032, 0);
    lib.symbols.close(f);
    return size;
  } finally {
    lib.close();
  }
}

function sleeper(stdout: "piped" | "null"): Deno.ChildProcess {
  return new Deno.Command("sleep", { args: ["60"], stdout, stderr: "null", stdin: "null" })
    .spawn();
}

Deno.test({
  name: "enlargePipe: a pipe we read grows to BULK_PIPE; MAX_ENLARGED at once; others left alone",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const kids = Array.from({ length: MAX_ENLARGED + 1 }, () => sleeper("piped"));
    const other = sleeper("null");
    // A command that pointed its stdout at a pipe of its own: not ours to resize. (`env
    // echo`, not bash's builtin: for a builtin's `>&2` bash points its own fd 1 at stderr,
    // our pipe, until the builtin returns, and the test could look at fd 1 meanwhile.)
    const own = new Deno.Command("bash", {
      args: ["-c", "exec > >(cat >/dev/null); env echo ready >&2; exec sleep 60"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const releases: (() => void)[] = [];
    try {
      const initial = pipeSize(kids[0].pid, 1);
      if (initial >= BULK_PIPE) {
        // A kernel whose pipes start this large (64 KiB pages): nothing to do.
        assert.equal(enlargePipe(kids[0].pid, 1), undefined);
        return;
      }
      assert.equal(enlargePipe(other.pid, 1), undefined, "/dev/null is not resized");
      const said = own.stderr.pipeThrough(new TextDecoderStream()).getReader();
      assert.equal((await said.read()).value, "ready\n");
      said.releaseLock();
      assert.equal(enlargePipe(own.pid, 1), undefined, "a pipe we hold no end of");
      assert.equal(pipeSize(own.pid, 1), initial);
      for (const k of kids.slice(0, MAX_ENLARGED)) {
        const r = enlargePipe(k.pid, 1);
        assert.ok(r, "enlarged");
        releases.push(r);
        assert.equal(pipeSize(k.pid, 1), BULK_PIPE);
      }
      const last = kids[MAX_ENLARGED];
      assert.equal(enlargePipe(last.pid, 1), undefined, "one more than MAX_ENLARGED waits");
      assert.equal(pipeSize(last.pid, 1), initial);
      releases[0]();
      releases[0](); // given back twice: counted once
      const r = enlargePipe(last.pid, 1);
      assert.ok(r, "a place was given back");
      releases.push(r);
      assert.equal(enlargePipe(last.pid, 1), undefined, "already large: no second place taken");
      assert.equal(enlargePipe(999_999_999, 1), undefined, "no such process");
    } finally {
      for (const r of releases) r();
      for (const k of [...kids, other, own]) {
        k.kill("SIGKILL");
        await k.status;
      }
      for (const k of [...kids, own]) await k.stdout.cancel();
      await own.stderr.cancel().catch(() => {});
    }
  },
});
