/**
 * `deno task compile [TARGET…]`: single-file binaries with `deno compile`.
 *
 * Permissions come from the `default` permission set in deno.json (`-P`), the
 * one place they are written. `deno compile` needs a `denort` runtime for each
 * target, which it downloads; where that is impossible, set DENORT_BIN to a
 * denort binary for the target (it is honoured by deno itself), or use the
 * bundle (`deno task bundle` → dist/tether.js) with `deno run`.
 */
const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
];

const requested = Deno.args.length > 0 ? Deno.args : TARGETS;
const denort = Deno.env.get("DENORT_BIN");
if (denort && requested.length > 1) {
  console.error(
    "DENORT_BIN names one runtime, so only one target can be built; pass it, e.g.\n" +
      "  deno task compile x86_64-unknown-linux-gnu",
  );
  Deno.exit(2);
}

let failed = 0;
for (const target of requested) {
  if (!TARGETS.includes(target)) {
    console.error(`unknown target '${target}'; known: ${TARGETS.join(", ")}`);
    Deno.exit(2);
  }
  const out = `dist/tether-${target}`;
  const args = ["compile", "-q", "-P", "--no-check", "--target", target, "-o", out, "main.ts"];
  console.error(`compiling ${out}${denort ? ` with DENORT_BIN=${denort}` : ""} …`);
  const res = await new Deno.Command(Deno.execPath(), { args, stderr: "piped" }).output();
  const err = new TextDecoder().decode(res.stderr);
  if (res.success) {
    console.error(`  ok: ${out}`);
    continue;
  }
  failed++;
  console.error(err.trim().split("\n").map((l) => `  ${l}`).join("\n"));
  if (/download|denort|dl\.deno\.land|network|dns|connect/i.test(err)) {
    console.error(
      "  deno compile could not fetch the denort runtime for this target (no network?).\n" +
        "  Either set DENORT_BIN to a denort binary for the target (from a machine that can\n" +
        "  download it: the denort-<target>.zip of Deno " + Deno.version.deno + "), or ship\n" +
        "  the bundle instead: `deno task bundle` writes dist/tether.js, run it with\n" +
        "  `deno run -P` (or the permissions listed in README.md).",
    );
  }
}
Deno.exit(failed ? 1 : 0);
