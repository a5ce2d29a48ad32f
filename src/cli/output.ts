/**
 * Everything the CLI prints goes through here: JSON documents on stdout,
 * human tables on stdout, and errors as one JSON object (with --json) or as
 * two human lines on stderr (what happened, what to do).
 */
import { TetherError } from "../common/errors.ts";
import { visible } from "../common/text.ts";

const enc = new TextEncoder();

/**
 * A human status line on stderr (`end` "" leaves the line open, as for `resolving … `).
 * Each line is passed through visible(): status lines quote names others chose.
 */
export function say(text: string, end = "\n"): void {
  writeAllSync(Deno.stderr, enc.encode(text.split("\n").map(visible).join("\n") + end));
}

/** Something to wait on for a millisecond, synchronously. */
const nap = new Int32Array(new SharedArrayBuffer(4));

/**
 * Writes all of `bytes` to stderr (or an unbuffered file like it) now. A descriptor may be
 * non-blocking (made so by whoever gave it to us, or by our own writer of a command's output,
 * client/stdout.ts): a full pipe then refuses the write (WouldBlock) where a blocking one
 * would wait, so wait here, a millisecond at a time, as a blocking write would. Not for
 * stdout: Deno writes it through a line buffer whose flush can refuse after part of the
 * write went out, and a retry would repeat that part (stdout is back in blocking mode
 * before anything is printed there after a command's output: exec's release()).
 */
export function writeAllSync(file: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.length;) {
    try {
      off += file.writeSync(bytes.subarray(off));
    } catch (e) {
      if (!(e instanceof Deno.errors.WouldBlock)) throw e;
      Atomics.wait(nap, 0, 0, 1);
    }
  }
}

/**
 * Whether the last byte a command's output put on our stdout was not a newline: a JSON
 * error that follows it then starts a line of its own, so that a reader taking the last
 * line of stdout finds the object whole.
 */
let stdoutMidLine = false;

/** Notes a chunk of a remote command's output written to stdout. */
export function wroteStdout(chunk: Uint8Array): void {
  if (chunk.length) stdoutMidLine = chunk[chunk.length - 1] !== 0x0a;
}

export function printJson(value: unknown): void {
  console.log(JSON.stringify(value));
}

/** Renders rows as aligned columns with a header line. */
export function table(headers: string[], rows: string[][]): string {
  // Cells hold what others chose (names, labels, command lines): never raw control bytes.
  rows = rows.map((r) => r.map(visible));
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join("  ").trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** Normalizes anything thrown into a TetherError. */
export function asTetherError(e: unknown): TetherError {
  if (e instanceof TetherError) return e;
  if (e instanceof Deno.errors.PermissionDenied) {
    return new TetherError("internal", e.message, { hint: "check file permissions", cause: e });
  }
  // An operating system error (a missing path, a read-only or full disk) names the path and
  // the reason; it is the environment, not a bug.
  const osCode = (e as { code?: unknown })?.code;
  if (e instanceof Error && typeof osCode === "string" && /^E[A-Z]+$/.test(osCode)) {
    return new TetherError("internal", e.message, {
      hint: "the operating system refused: check the path, its permissions and free space",
      cause: e,
    });
  }
  const err = e as Error;
  return new TetherError("internal", err?.message ?? String(e), {
    hint: "this is a bug in tether; please report it with the command you ran",
    cause: e,
  });
}

export function printError(err: TetherError, json: boolean): void {
  if (json) {
    console.log((stdoutMidLine ? "\n" : "") + JSON.stringify({ error: err.toJSON() }));
    return;
  }
  // Messages may quote what others chose (a machine's name, an agent's words).
  const lines = [`tether: ${visible(err.message)}`];
  if (err.candidates?.length && !err.hint?.includes(err.candidates[0].id.slice(0, 8))) {
    for (const c of err.candidates) {
      lines.push(`  ${visible(c.name)}  ${visible(c.id)}  ${c.online ? "online" : "offline"}`);
    }
  }
  if (err.hint) lines.push(`  hint: ${visible(err.hint)}`);
  writeAllSync(Deno.stderr, enc.encode(lines.join("\n") + "\n"));
  if (Deno.env.get("TETHER_DEBUG") && err.cause) console.error(err.cause);
}
