/**
 * Text that someone else chose (a machine's name, labels and hostname, a command line in
 * the audit log, a session's command, a message from the relay or an agent) is shown on a
 * person's terminal only through `visible()`: control characters would otherwise let that
 * someone clear the screen, set the window title, write the clipboard (OSC 52), or forge a
 * whole line of a table. JSON output is never escaped; it stays exact.
 */

// C0 controls, DEL, C1 controls, and the bidirectional overrides that reorder what is shown.
// deno-lint-ignore no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

const NAMED: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e" };

/** `s` with every control character shown as an escape (`\e`, `\n`, `\x07`, `\u202e`). */
export function visible(s: string): string {
  return s.replace(UNSAFE, (c) => {
    const named = NAMED[c];
    if (named) return named;
    const code = c.charCodeAt(0);
    return code < 0x100
      ? `\\x${code.toString(16).padStart(2, "0")}`
      : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}
