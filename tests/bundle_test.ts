/**
 * Smoke test of the artifact as README.md tells people to run it: the
 * single file dist/tether.js under `deno run` with the listed permissions,
 * from a directory with no deno.json.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { baseEnv, BUNDLE, Proc, ROOT } from "./helpers.ts";

/** The flags README.md gives for running the bundle, read from README.md itself. */
function readmeFlags(): string[] {
  const readme = Deno.readTextFileSync(join(ROOT, "README.md"));
  const m = /deno run ((?:--allow-\w+ ?\\?\s*)+)/.exec(readme);
  assert.ok(m, "README.md shows the deno run command for the bundle");
  return m[1].split(/[\s\\]+/).filter((f) => f.startsWith("--allow-"));
}

Deno.test("the bundle runs with README's permissions: --version, up, exec", async () => {
  const flags = readmeFlags();
  assert.ok(flags.includes("--allow-ffi"), "the PTY needs FFI");
  const home = await Deno.makeTempDir({ prefix: "tether-bundle-" });
  const bin = join(home, "tether.js");
  Deno.copyFileSync(BUNDLE, bin);
  const argv = (
    args: string[],
  ) => [Deno.execPath(), "run", "-q", "--no-config", ...flags, bin, ...args];
  const env = baseEnv(home);
  try {
    const v = await new Deno.Command(argv(["--version"])[0], {
      args: argv(["--version"]).slice(1),
      env,
      clearEnv: true,
      cwd: home,
    }).output();
    assert.equal(new TextDecoder().decode(v.stdout).trim(), "0.1.0");

    const up = new Proc(argv(["up", "--listen", "127.0.0.1:0", "--name", "bundled"]), { env });
    try {
      await up.waitFor(/tether is up/, "stdout");
      const x = await new Deno.Command(Deno.execPath(), {
        args: argv(["exec", "bundled", "--", "sh", "-c", "echo from-bundle; exit 5"]).slice(1),
        env,
        clearEnv: true,
        cwd: home,
        stdin: "null",
      }).output();
      assert.equal(new TextDecoder().decode(x.stdout), "from-bundle\n");
      assert.equal(x.code, 5);
    } finally {
      await up.stop("SIGINT");
    }
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});
