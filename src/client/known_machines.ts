/**
 * The machines a client has pinned, like ssh's known_hosts: `<config-dir>/known_machines`,
 * a line per machine, `WORKSPACE NAME SHA256:…` (names URI-encoded, so a line is three words). The first stream to a machine records its
 * key's fingerprint (trust on first use), `tether machines trust` sets one ahead of time,
 * and a machine whose key is not the pinned one is refused (machine_key_changed).
 */
import { join } from "node:path";
import { writePrivate } from "../common/files.ts";

export const KNOWN_MACHINES_FILE = "known_machines";

export type PinCheck =
  | { status: "new" }
  | { status: "ok" }
  | { status: "changed"; pinned: string };

export class KnownMachines {
  readonly path: string;

  constructor(configDir: string) {
    this.path = join(configDir, KNOWN_MACHINES_FILE);
  }

  private read(): string[][] {
    let text = "";
    try {
      text = Deno.readTextFileSync(this.path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"))
      .map((l) => l.split(/\s+/)).filter((w) => w.length >= 3)
      .map(([w, n, fp]) => [safeDecode(w), safeDecode(n), fp]);
  }

  /** The fingerprint pinned for the machine, if any. */
  pinned(workspace: string, name: string): string | undefined {
    return this.read().find(([w, n]) => w === workspace && n === name)?.[2];
  }

  check(workspace: string, name: string, fp: string): PinCheck {
    const pinned = this.pinned(workspace, name);
    if (pinned === undefined) return { status: "new" };
    return pinned === fp ? { status: "ok" } : { status: "changed", pinned };
  }

  /** Pins `fp` for the machine, replacing what was pinned. */
  pin(workspace: string, name: string, fp: string): void {
    const lines = this.read().filter(([w, n]) => !(w === workspace && n === name));
    lines.push([workspace, name, fp]);
    Deno.mkdirSync(join(this.path, ".."), { recursive: true, mode: 0o700 });
    const text = lines.map(([w, n, f]) => `${encodeURIComponent(w)} ${encodeURIComponent(n)} ${f}`);
    writePrivate(this.path, text.join("\n") + "\n");
  }
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
