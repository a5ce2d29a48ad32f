/**
 * Prompts (gated by prompt_gate.ts: only on a terminal): the machine picker, confirm,
 * password and text input. They render on stderr (stdout stays clean for
 * data) and read stdin, through @inquirer/core and @inquirer/{confirm,input,password}.
 *
 * Every prompt passes the gate in prompt_gate.ts first (re-exported here): it
 * runs only when stdin and stderr are terminals and neither `--no-interactive`
 * nor `--json` is given; otherwise it throws, at once, the TetherError naming
 * what was missing (`interactive_required`, `ambiguous_machine`,
 * `password_required`). Nothing here can wait on a stdin that is not a terminal.
 *
 * Ctrl-C, Ctrl-D, Esc, the end of input, or SIGINT/SIGTERM/SIGHUP during a
 * prompt throw `PromptCancelled` (message "cancelled", `exitCode` 130, or
 * 128 + the signal) after the terminal is restored: cursor shown, raw mode
 * off, stdin paused so a later `Deno.stdin` reader gets every byte.
 */
import process from "node:process";
import { Writable } from "node:stream";
import { createPrompt, type KeypressEvent, useKeypress, useState } from "@inquirer/core";
// The three prompts by their own packages: @inquirer/prompts also brings the editor prompt,
// whose encoding tables tripled the size of the bundle every command loads.
import inquirerConfirm from "@inquirer/confirm";
import inquirerInput from "@inquirer/input";
import inquirerPassword from "@inquirer/password";
import { TetherError } from "../common/errors.ts";
import { candidates } from "./resolve.ts";
import type { MachineView } from "./relay_client.ts";
import {
  interactiveRequired,
  noMachineGiven,
  passwordRequired,
  PromptCancelled,
  type PromptIO,
  type PromptOptions,
  requirePrompt,
} from "./prompt_gate.ts";
import {
  ansiStyle,
  initialPickerState,
  machineItems,
  type PickerEvent,
  type PickerState,
  type PickerView,
  type PickItem,
  plainStyle,
  reducePicker,
  renderPicker,
  selectedItem,
} from "./prompt_picker.ts";

export * from "./prompt_gate.ts";
export {
  filterItems,
  machineItems,
  machineLabel,
  type PickerState,
  type PickItem,
  reducePicker,
  renderPicker,
} from "./prompt_picker.ts";

// ---- the terminal driver -------------------------------------------------------

interface InquirerContext {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
  signal: AbortSignal;
  clearPromptOnDone?: boolean;
}

interface Key {
  name?: string;
  ctrl?: boolean;
  shift?: boolean;
  sequence?: string;
}

/**
 * A writable that forwards to `target` but is never ended with it: inquirer
 * ends its output stream after each prompt, which must not close stderr (or a
 * test's stream shared by several prompts).
 */
function forwardTo(target: NodeJS.WritableStream): Writable {
  const w = new Writable({
    write(chunk, _enc, cb) {
      target.write(chunk as Uint8Array);
      cb();
    },
  });
  const t = target as unknown as { columns?: number; rows?: number; isTTY?: boolean };
  Object.defineProperties(w, {
    columns: { get: () => t.columns },
    rows: { get: () => t.rows },
    isTTY: { get: () => t.isTTY },
  });
  return w;
}

/** Puts stdin back after a prompt: cooked mode, paused, so `Deno.stdin` readers get every byte. */
function releaseInput(input: NodeJS.ReadableStream): void {
  if (input !== process.stdin) return;
  try {
    if (process.stdin.isTTY && process.stdin.isRaw) process.stdin.setRawMode(false);
  } catch { /* not a terminal any more */ }
  process.stdin.pause();
}

const SIGNALS: [Deno.Signal, number][] = [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]];

/**
 * While a prompt holds the real terminal in raw mode, a signal (kill, a
 * closed terminal) must not end the process before the terminal is restored:
 * it cancels the prompt instead. Returns the undo.
 */
function trapSignals(onSignal: (exitCode: number) => void): () => void {
  if (Deno.build.os === "windows") return () => {};
  const undo: (() => void)[] = [];
  for (const [sig, code] of SIGNALS) {
    const l = () => onSignal(code);
    try {
      Deno.addSignalListener(sig, l);
      undo.push(() => Deno.removeSignalListener(sig, l));
    } catch { /* not supported here */ }
  }
  return () => undo.forEach((f) => f());
}

function isInquirerExit(e: unknown): boolean {
  const name = (e as Error | undefined)?.name;
  return name === "ExitPromptError" || name === "AbortPromptError" ||
    name === "CancelPromptError";
}

/**
 * Runs one inquirer prompt behind the gate, with cancellation and cleanup.
 * Ctrl-C is turned into ExitPromptError by inquirer itself; Ctrl-D and Esc
 * (which readline would otherwise swallow, leaving the prompt pending for
 * ever) and the end of input abort it here.
 */
async function runPrompt<T>(
  opts: PromptOptions,
  refusal: TetherError,
  start: (ctx: InquirerContext, out: NodeJS.WritableStream) => Promise<T>,
  clearPromptOnDone = false,
): Promise<T> {
  const io = opts.io ?? {};
  requirePrompt(opts.env, refusal, io);
  const input = io.input ?? process.stdin;
  const target = io.output ?? process.stderr;
  const cancel = new AbortController();
  const signal = io.signal ? AbortSignal.any([cancel.signal, io.signal]) : cancel.signal;
  // Registered before readline's own listener, so it sees Ctrl-D first.
  const onKey = (_s: unknown, key?: Key) => {
    if ((key?.ctrl && key.name === "d") || key?.name === "escape") cancel.abort();
  };
  const onEnd = () => cancel.abort();
  input.on("keypress", onKey);
  input.on("end", onEnd);
  const untrap = input === process.stdin
    ? trapSignals((code) => cancel.abort(new PromptCancelled(code)))
    : () => {};
  try {
    return await start({ input, output: forwardTo(target), signal, clearPromptOnDone }, target);
  } catch (e) {
    if (isInquirerExit(e)) {
      if (cancel.signal.reason instanceof PromptCancelled) throw cancel.signal.reason;
      if (!cancel.signal.aborted && io.signal?.aborted && io.signal.reason instanceof Error) {
        throw io.signal.reason;
      }
      throw new PromptCancelled();
    }
    throw e;
  } finally {
    untrap();
    input.removeListener("keypress", onKey);
    input.removeListener("end", onEnd);
    releaseInput(input);
  }
}

function layout(io: PromptIO): { width: () => number; rows: () => number; color: boolean } {
  const target = (io.output ?? process.stderr) as unknown as {
    columns?: number;
    rows?: number;
    isTTY?: boolean;
  };
  let noColor = false;
  try {
    noColor = !!Deno.env.get("NO_COLOR");
  } catch { /* no env permission: keep colours */ }
  return {
    width: () => io.columns ?? target.columns ?? 80,
    rows: () => io.rows ?? target.rows ?? 24,
    color: io.color ?? (!!target.isTTY && !noColor),
  };
}

/** Maps a keypress to a picker move; typing is left to readline (it edits the query line). */
export function keyToPickerEvent(key: Key, pageSize: number): PickerEvent | undefined {
  switch (key.name) {
    case "up":
      return { type: "move", by: -1 };
    case "down":
      return { type: "move", by: 1 };
    case "tab":
      return { type: "move", by: key.shift ? -1 : 1 };
    case "pageup":
      return { type: "move", by: -pageSize };
    case "pagedown":
      return { type: "move", by: pageSize };
    case "p":
      return key.ctrl ? { type: "move", by: -1 } : undefined;
    case "n":
      return key.ctrl ? { type: "move", by: 1 } : undefined;
  }
  return undefined;
}

interface PickerConfig {
  items: PickItem<unknown>[];
  view: PickerView;
  width: () => number;
}

const pickerPrompt = createPrompt<unknown, PickerConfig>((config, done) => {
  const { items } = config;
  const [state, setState] = useState<PickerState>(() => initialPickerState(items));
  const [finished, setFinished] = useState(false);
  const pageSize = config.view.pageSize ?? 10;
  useKeypress((event: KeypressEvent, rl) => {
    if (finished) return;
    const key = event as Key;
    if (key.name === "enter" || key.name === "return") {
      const it = selectedItem(items, state);
      if (it) {
        setFinished(true);
        done(it.value);
      } else {
        rl.write(state.query); // readline emptied its line on Enter; put the query back
      }
      return;
    }
    const move = keyToPickerEvent(key, pageSize);
    if (move) {
      // Tab inserted itself into readline's line; keep the line equal to the query.
      if (rl.line !== state.query) {
        rl.clearLine(0);
        rl.write(state.query);
      }
      setState(reducePicker(items, state, move));
      return;
    }
    setState(reducePicker(items, state, { type: "query", text: rl.line }));
  });
  return renderPicker(items, state, { ...config.view, width: config.width() }, finished);
});

export interface PickOptions extends PromptOptions {
  message: string;
  /** Column headers aligned with the items' cells. */
  headers?: string[];
  /** Thrown when no prompt can be shown. */
  refusal: TetherError;
  /** Verb for Enter in the help line, e.g. "attach". */
  action?: string;
  noun?: string;
  pageSize?: number;
}

/**
 * The generic picker: type to filter, ↑/↓ (also Tab, Ctrl-P/N, PgUp/PgDn) to
 * move, Enter to pick. Disabled items are shown dimmed and cannot be picked.
 * Leaves one line (`✔ message: short`) on the terminal. An empty list is
 * the caller's to refuse first (nothing could be picked).
 */
export async function pick<T>(items: PickItem<T>[], opts: PickOptions): Promise<T> {
  const io = opts.io ?? {};
  const lay = layout(io);
  const pageSize = opts.pageSize ?? Math.max(3, Math.min(10, lay.rows() - 6));
  const view: PickerView = {
    message: opts.message,
    headers: opts.headers,
    action: opts.action,
    noun: opts.noun,
    pageSize,
    style: lay.color ? ansiStyle : plainStyle,
  };
  const value = await runPrompt(opts, opts.refusal, async (ctx, out) => {
    const v = await pickerPrompt(
      { items: items as PickItem<unknown>[], view, width: lay.width },
      ctx,
    );
    // The prompt erased itself (so a cancel leaves no list behind); leave one line.
    const st = view.style ?? plainStyle;
    const it = items.find((i) => i.value === v);
    out.write(
      `${st.prefix(true)} ${st.message(opts.message + ":")} ${
        st.answer(it?.short ?? it?.cells[0] ?? "")
      }\n`,
    );
    return v;
  }, true);
  return value as T;
}

export interface PickMachineOptions extends PromptOptions {
  /** Default "Pick a machine". */
  message?: string;
  /** Thrown when no prompt can be shown; default `noMachineGiven()` (interactive_required). */
  refusal?: TetherError;
}

/**
 * The machine picker: name, short id, hostname, online/offline and heartbeat
 * age. Offline machines are listed but cannot be picked. Fails without
 * prompting when there is nothing to pick (`machine_not_found`) or every
 * machine is offline (`machine_offline`).
 */
export async function pickMachine(
  machines: MachineView[],
  opts: PickMachineOptions,
): Promise<MachineView> {
  const refusal = opts.refusal ?? noMachineGiven();
  requirePrompt(opts.env, refusal, opts.io);
  if (machines.length === 0) {
    throw new TetherError("machine_not_found", "this workspace has no machines", {
      hint: "start an agent with `tether agent run` (or `tether up`)",
    });
  }
  if (!machines.some((m) => m.online)) {
    const n = machines.length;
    throw new TetherError(
      "machine_offline",
      `all ${n} machine${n === 1 ? " is" : "s are"} offline`,
      {
        hint: "start the agent, or wait for it to reconnect; see `tether machines`",
        candidates: candidates(machines),
      },
    );
  }
  return await pick(machineItems(machines), {
    env: opts.env,
    io: opts.io,
    message: opts.message ?? "Pick a machine",
    headers: ["NAME", "ID", "HOSTNAME", "STATUS", "HEARTBEAT"],
    refusal,
    action: "attach",
    noun: "machines",
  });
}

export interface ConfirmOptions extends PromptOptions {
  /** Answer on a bare Enter; default true. */
  default?: boolean;
  /** Thrown when no prompt can be shown; default interactive_required (hint: --yes). */
  refusal?: TetherError;
}

/** A yes/no question, `(Y/n)` or `(y/N)`. Returns the answer. */
export function confirm(message: string, opts: ConfirmOptions): Promise<boolean> {
  const refusal = opts.refusal ??
    interactiveRequired(`cannot ask '${message}' without a terminal`, "pass --yes");
  return runPrompt(
    opts,
    refusal,
    (ctx) => inquirerConfirm({ message, default: opts.default ?? true }, ctx),
  );
}

export interface PasswordOptions extends PromptOptions {
  /** Named in the default refusal (`password_required`). */
  machine?: string;
  refusal?: TetherError;
  /** Echo `*` per character; default false (nothing echoed, like ssh). */
  mask?: boolean;
}

/** Reads a non-empty password without echoing it. */
export function promptPassword(message: string, opts: PasswordOptions): Promise<string> {
  const refusal = opts.refusal ?? passwordRequired(opts.machine);
  return runPrompt(opts, refusal, (ctx) =>
    inquirerPassword({
      message,
      mask: opts.mask ? "*" : undefined,
      validate: (v) => v.length > 0 || "type the password (Ctrl-C cancels)",
    }, ctx));
}

export interface TextOptions extends PromptOptions {
  /** Thrown when no prompt can be shown, e.g. interactiveRequired(…, "pass --relay URL"). */
  refusal: TetherError;
  default?: string;
  /** true, or a message saying what is wrong. */
  validate?: (value: string) => true | string;
}

/** Reads one line of text (e.g. the relay URL for `tether login`). Empty input is refused. */
export function promptText(message: string, opts: TextOptions): Promise<string> {
  return runPrompt(opts, opts.refusal, (ctx) =>
    inquirerInput({
      message,
      default: opts.default,
      required: true,
      validate: opts.validate,
    }, ctx)).then((s) => s.trim());
}
