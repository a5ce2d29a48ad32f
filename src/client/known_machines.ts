/**
 * The machines a client has pinned, like ssh's known_hosts: `<config-dir>/known_machines`,
 * a line per machine, `NAME SHA256:…` (the name URI-encoded, so a line is two words). The
 * first stream to a machine records its key's fingerprint (trust on first use), `tether
 * machines trust` sets one ahead of time, and a machine whose key is not the pinned one is
 * refused (machine_key_changed).
 *
 * Names are compared as a person reads them (NFKC, case, invisible characters and spaces
 * aside), so a relay cannot pass a look-alike `prod\u200b` off as a machine never seen.
 */
import { join } from "node:path";
import { writePrivate } from "../common/files.ts";
import { HOLD_LABEL, HOLD_LABEL_VALUE, type MachineView } from "../protocol/messages.ts";

export const KNOWN_MACHINES_FILE = "known_machines";

export type PinCheck =
  | { status: "new" }
  | { status: "ok" }
  /** `as`: the name the other key is pinned under (the machine's, or its hostname). */
  | { status: "changed"; pinned: string; as: string };

/** A name as pins compare it. */
export function pinKey(name: string): string {
  return name.normalize("NFKC").replace(/[\p{Cf}\p{Z}\s]/gu, "").toLowerCase();
}

/**
 * What a machine's key is pinned as: its name, as ssh pins host names; a CI hold (which
 * lives as long as its job, under a name the next run reuses with a new key) by its id.
 */
export function pinName(m: Pick<MachineView, "id" | "name" | "labels">): string {
  return m.labels?.[HOLD_LABEL] === HOLD_LABEL_VALUE ? `id:${m.id}` : m.name;
}

export class KnownMachines {
  readonly path: string;

  constructor(configDir: string) {
    this.path = join(configDir, KNOWN_MACHINES_FILE);
  }

  private read(): [string, string][] {
    let text = "";
    try {
      text = Deno.readTextFileSync(this.path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"))
      .map((l) => l.split(/\s+/)).filter((w) => w.length >= 2)
      .map(([n, fp]) => [safeDecode(n), fp]);
  }

  /** The fingerprint pinned under this name, if any. */
  pinned(name: string): string | undefined {
    const key = pinKey(name);
    return this.read().find(([n]) => pinKey(n) === key)?.[1];
  }

  /**
   * Checks a machine's key against the pins: the one for what it is pinned as (its name, or
   * a CI hold's id); if that is new, any other key pinned under its name or its hostname
   * makes it a change too (a relay that relabels or renames a machine gets no fresh start).
   */
  check(m: Pick<MachineView, "id" | "name" | "hostname" | "labels">, fp: string): PinCheck {
    const own = this.pinned(pinName(m));
    if (own !== undefined) {
      return own === fp ? { status: "ok" } : { status: "changed", pinned: own, as: pinName(m) };
    }
    for (const other of [m.name, m.hostname]) {
      const pinned = this.pinned(other);
      if (pinned !== undefined && pinned !== fp) return { status: "changed", pinned, as: other };
    }
    return { status: "new" };
  }

  /** Pins `fp` under `name`, replacing what was pinned under it. */
  pin(name: string, fp: string): void {
    const key = pinKey(name);
    const lines = this.read().filter(([n]) => pinKey(n) !== key);
    lines.push([name, fp]);
    Deno.mkdirSync(join(this.path, ".."), { recursive: true, mode: 0o700 });
    const text = lines.map(([n, f]) => `${encodeURIComponent(n)} ${f}`);
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
