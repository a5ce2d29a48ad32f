import assert from "node:assert/strict";
import { executableByMode, resolveCommand } from "../../src/agent/command_path.ts";

Deno.test("resolveCommand: as execvp with the child's PATH and cwd, failures in a shell's words", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/bin`);
    await Deno.mkdir(`${dir}/bin/adir`);
    await Deno.writeTextFile(`${dir}/bin/tool`, "#!/bin/sh\n", { mode: 0o755 });
    await Deno.writeTextFile(`${dir}/plain`, "not a program\n", { mode: 0o644 });
    const find = (name: string, path = `/nonexistent:${dir}/bin`) =>
      resolveCommand(name, path, dir, executableByMode);
    assert.equal(find("tool"), `${dir}/bin/tool`);
    assert.equal(find("./bin/tool"), `${dir}/./bin/tool`);
    // An empty PATH entry is the working directory.
    assert.equal(find("tool", `:${dir}/bin`), `${dir}/bin/tool`);
    assert.throws(() => find("nope"), new Deno.errors.NotFound("nope: command not found"));
    assert.throws(
      () => find("./nope"),
      new Deno.errors.NotFound("./nope: No such file or directory"),
    );
    assert.throws(
      () => find("./plain"),
      new Deno.errors.PermissionDenied("./plain: Permission denied"),
    );
    // A directory of that name on PATH is not a program: denied, unless a later entry has one.
    assert.throws(() => find("adir"), new Deno.errors.PermissionDenied("adir: Permission denied"));
    assert.throws(() => find(""), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
