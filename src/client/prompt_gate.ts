/**
 * The prompt gate (README "Usage": no prompt ever blocks a script), apart from the prompts
 * themselves so a command can check it, and fail at once, without loading
 * @inquirer (about 60 ms of start-up). A prompt is allowed only when stdin and
 * stderr are terminals and neither `--no-interactive` nor `--json` is given;
 * otherwise the refusal names what was missing: `interactive_required`,
 * `ambiguous_machine` or `password_required`.
 */
import { TetherError } from "../common/errors.ts";
import { candidates } from "./resolve.ts";
import type { MachineView } from "./relay_client.ts";

/** What the gate looks at; the CLI's `Globals` fits. `--json` implies `--no-interactive`. */
export interface PromptEnv {
  json?: boolean;
  /** False with `--no-interactive`. */
  interactive: boolean;
}

/** Where a prompt reads and draws; every field has a real-terminal default. */
export interface PromptIO {
  /** Default `process.stdin`. */
  input?: NodeJS.ReadableStream;
  /** Default `process.stderr`. Never ended by a prompt. */
  output?: NodeJS.WritableStream;
  /** Replaces the check that stdin and stderr are terminals (tests). */
  terminal?: boolean;
  /** Width and height used for layout; default the output's, else 80×24. */
  columns?: number;
  rows?: number;
  /** ANSI colours in the picker; default: output is a TTY and NO_COLOR is unset. */
  color?: boolean;
  /** Aborting it ends the prompt; the signal's reason is thrown (PromptCancelled if none). */
  signal?: AbortSignal;
}

export interface PromptOptions {
  env: PromptEnv;
  io?: PromptIO;
}

function stdioAreTerminals(): boolean {
  try {
    return Deno.stdin.isTerminal() && Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}

/** True when a prompt may be shown: a terminal on stdin and stderr, no `--json`, no `--no-interactive`. */
export function canPrompt(env: PromptEnv, io: PromptIO = {}): boolean {
  if (env.json || !env.interactive) return false;
  return io.terminal ?? stdioAreTerminals();
}

/** Throws `refusal` unless `canPrompt`. Call it early to fail before any network work. */
export function requirePrompt(env: PromptEnv, refusal: TetherError, io: PromptIO = {}): void {
  if (!canPrompt(env, io)) throw refusal;
}

/** `interactive_required`, with a hint saying what to pass instead. */
export function interactiveRequired(message: string, hint: string): TetherError {
  return new TetherError("interactive_required", message, { hint });
}

/** The refusal for `tether connect` without MACHINE when no picker can be shown. */
export function noMachineGiven(): TetherError {
  return interactiveRequired(
    "no machine given and no terminal to pick one",
    "pass a machine name or id, or list them with `tether connect --list`",
  );
}

/** The refusal when a label selector matches several machines and no picker can be shown. */
export function selectorAmbiguous(hits: MachineView[], selector: string): TetherError {
  return new TetherError(
    "ambiguous_machine",
    `selector '${selector}' matches ${hits.length} machines`,
    {
      hint: "add --first to take the first, narrow the selector, or name one machine",
      candidates: candidates(hits),
    },
  );
}

/** The refusal when a machine password is needed and cannot be asked for. */
export function passwordRequired(machine?: string): TetherError {
  return new TetherError(
    "password_required",
    machine ? `machine ${machine} needs a password` : "a password is needed",
    {
      hint: `pass --password, set TETHER_PASSWORD, or store it with \`tether password save ${
        machine ?? "MACHINE"
      }\``,
    },
  );
}

/**
 * The user ended a prompt (Ctrl-C, Ctrl-D, Esc, end of input), or a signal
 * did. Exit with `exitCode`, printing only its message.
 */
export class PromptCancelled extends TetherError {
  /** 128 + the signal, as a shell reports it: 130 for Ctrl-C and the keys, 143 for SIGTERM, 129 for SIGHUP. */
  readonly exitCode: number;
  constructor(exitCode = 130) {
    super("interactive_required", "cancelled");
    this.name = "PromptCancelled";
    this.exitCode = exitCode;
  }
}

export function isCancelled(e: unknown): e is PromptCancelled {
  return e instanceof PromptCancelled;
}
