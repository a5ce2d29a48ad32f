/** `tether exec MACHINE [options] -- CMD [ARG…]`: run one command, no PTY. */
import { openBulkStdin, openStreamStdin } from "../client/stdin.ts";
import { lazyOutput, type Output } from "../client/stdout.ts";
import type { Command } from "@commander-js/extra-typings";
import { attach, processTerminal } from "../client/attach.ts";
import { runExec } from "../client/exec.ts";
import { type MachineView, RelayClient } from "../client/relay_client.ts";
import { authFor, chooseMachine } from "./target.ts";
import { parseDuration } from "../common/duration.ts";
import { machineOffline, TetherError, usage } from "../common/errors.ts";
import { CH_STDERR, CH_STDOUT } from "../protocol/frames.ts";
import { type Act, clientConfig, collect, globals, parsePairs, rawArgs } from "./context.ts";
import { asTetherError, printJson, say, wroteStdout } from "./output.ts";
import { writeAll } from "../common/bytes.ts";
import { signalStatus } from "../common/signals.ts";
import { visible } from "../common/text.ts";
import { concatBytes } from "../common/bytes.ts";

const EXEC_HELP = `
Every exec runs on when its client goes away (a dropped network is resumed by itself,
byte-exact, within 60 s or TETHER_RECONNECT_WINDOW); the agent keeps its output (the
last 1 MiB of each stream) and its exit status for an hour. A second Ctrl-C ends the
command; SIGTERM or SIGHUP to this client leave it running and say how to reattach.
  tether exec --detach box -- ./long-job      prints the exec id, exits 0
  tether exec --attach ID [--offset N]        its output from the start (or byte N of
                                              stdout), then its exit code
  tether sessions box                         lists execs: running, exited N, lost`;

export function registerExec(program: Command, act: Act) {
  program.command("exec")
    .description("run one command on a machine (argv as given, no shell); exits with its code")
    .argument("[machine]", "machine id, name, hostname or unique prefix (or use -l)")
    .argument("[command...]", "the command and its arguments, after --")
    .option("-t, --tty", "run on a pseudo-terminal")
    .option("-n, --no-stdin", "give the command /dev/null as stdin")
    .option("--stream", "for programs driving a process turn by turn: no PTY, no buffering")
    .option(
      "--events",
      "print JSON lines (started, stdout, stderr, exit|error) instead of raw output",
    )
    .option("--timeout <dur>", "end the command (SIGTERM, then SIGKILL) after this long")
    .option("--cwd <dir>", "remote working directory")
    .option("--env <k=v>", "remote environment variable; repeatable", collect, [] as string[])
    .option("--detach", "start the command, print its exec id, and leave it running")
    .option("--attach <id>", "watch an exec started earlier: its output, then its exit code")
    .option("--offset <n>", "with --attach: start at this byte of its stdout")
    .option("--stderr-offset <n>", "with --attach: start at this byte of its stderr")
    .option(
      "-l, --selector <k=v>",
      "pick the machine by label; repeatable",
      collect,
      [] as string[],
    )
    .option("--first", "with -l: take the first online match")
    .option("--online", "consider online machines only when resolving the name")
    .option("--password <password>", "the machine's password (also: stored, TETHER_PASSWORD)")
    .addHelpText("after", EXEC_HELP)
    .action(act(async (machineArg, commandArgs, opts, cmd) => {
      const g = globals(cmd);
      const { machine, command } = splitAtDashes(machineArg, commandArgs, rawArgs(cmd));
      const attachId = opts.attach;
      if (attachId !== undefined) {
        if (command.length > 0) throw usage("--attach watches a command; give none after --");
        if (opts.detach || opts.tty) throw usage("--attach goes with neither --detach nor -t");
      } else if (command.length === 0) {
        throw usage(
          "no command given",
          "put the command after --: tether exec MACHINE -- CMD [ARG…]",
        );
      }
      if ((opts.offset || opts.stderrOffset) && attachId === undefined) {
        throw usage("--offset and --stderr-offset go with --attach");
      }
      if (opts.stream && opts.tty) throw usage("--stream never uses a PTY; drop -t");
      if (opts.detach && opts.tty) throw usage("--detach runs without a PTY; drop -t");
      const timeoutMs = opts.timeout ? parseDuration(opts.timeout, "--timeout") : undefined;
      const env = parsePairs(opts.env, "--env");
      const cfg = clientConfig(g);
      const client = await RelayClient.connect(cfg);
      const target = attachId !== undefined && !machine && opts.selector.length === 0
        ? await machineOfExec(client, attachId)
        : (await chooseMachine(client, g, machine, opts)).machine;
      if (!target.online) throw machineOffline(target);

      const auth = authFor(cfg, client, target, opts.password, g);
      if (opts.tty) {
        if (opts.events) throw usage("--events needs plain pipes; drop -t");
        const outcome = await attach(cfg, client, {
          machineId: target.id,
          machineName: target.name,
          argv: command,
          oneShot: true,
          auth,
          cwd: opts.cwd,
          env: Object.keys(env).length ? env : undefined,
          timeoutMs,
        }, processTerminal());
        client.close();
        return outcome.code;
      }
      const events = opts.events ? new EventPrinter() : undefined;
      // The command's output through the event loop where that is a pipe or socket, as
      // tether ssh and OpenSSH write it (client/stdout.ts).
      const out: Record<number, Output> = events || opts.detach
        ? { [CH_STDOUT]: Deno.stdout, [CH_STDERR]: Deno.stderr }
        : { [CH_STDOUT]: lazyOutput(1), [CH_STDERR]: lazyOutput(2) };
      let brokenPipe = false;
      const run = runExec(client, () => RelayClient.connect(cfg), {
        machineId: target.id,
        machineName: target.name,
        argv: command,
        cwd: opts.cwd,
        env: Object.keys(env).length ? env : undefined,
        stdin: opts.stdin !== false,
        timeoutMs,
        stream: !!opts.stream,
        auth,
        detach: !!opts.detach,
        attach: attachId === undefined ? undefined : {
          id: attachId,
          offset: opts.offset ? parseCount(opts.offset, "--offset") : undefined,
          errOffset: opts.stderrOffset
            ? parseCount(opts.stderrOffset, "--stderr-offset")
            : undefined,
        },
      }, {
        stdin: opts.stream && opts.stdin !== false ? openStreamStdin() : openBulkStdin(),
        warn: (line) => say(`tether: ${line}`),
        started: ({ pid, id }) => events?.emit({ type: "started", pid: pid ?? null, exec: id }),
        dropped(ch, bytes) {
          const stream = ch === CH_STDOUT ? "stdout" : "stderr";
          if (events) events.emit({ type: "dropped", stream, bytes });
          else {
            say(
              `tether: ${bytes} bytes of ${stream} are no longer kept on the machine ` +
                "(it keeps the last 1 MiB of each stream)",
            );
          }
        },
        async output(ch, chunk) {
          if (brokenPipe) return;
          try {
            if (events) events.data(ch, chunk);
            else if (ch === CH_STDERR) await writeAll(out[CH_STDERR], chunk);
            else {
              await writeAll(out[CH_STDOUT], chunk);
              wroteStdout(chunk);
            }
          } catch (e) {
            if (!(e instanceof Deno.errors.BrokenPipe)) throw e;
            // Nobody reads our output any more: end the command, as ssh's SIGPIPE would.
            brokenPipe = true;
            run.kill();
          }
        },
      });
      // Ctrl-C goes to the command (a second one ends it); SIGTERM and SIGHUP (a closed
      // terminal, a cancelled CI step) leave it running. Watching with --attach, any of
      // them only stops the watching.
      let interrupts = 0;
      let leftBy: Deno.Signal | undefined;
      const onSignal = (sig: Deno.Signal) => () => {
        if (sig === "SIGINT" && attachId === undefined && ++interrupts === 1) {
          run.signal("SIGINT");
        } else if (sig === "SIGINT" && attachId === undefined) {
          run.kill();
        } else {
          leftBy = sig;
          run.detach();
        }
      };
      const handlers = (["SIGINT", "SIGTERM", "SIGHUP"] as const).map((sig) => {
        const h = onSignal(sig);
        Deno.addSignalListener(sig, h);
        return () => Deno.removeSignalListener(sig, h);
      });
      try {
        const result = await run.done;
        events?.flush();
        if (result.detached) {
          const how = `follow it: tether exec --attach ${result.id}`;
          if (leftBy) {
            say(`tether: ${leftBy}: left exec ${result.id} running on ${target.name}; ${how}`);
            events?.emit({ type: "detached", exec: result.id, signal: leftBy });
            return signalStatus(leftBy);
          } else if (g.json || events) {
            const o = { exec: result.id, machine: target.name, machine_id: target.id };
            if (events) events.emit({ type: "detached", ...o });
            else printJson(o);
          } else {
            console.log(visible(result.id));
            say(`tether: exec ${result.id} runs on ${target.name}; ${how}`);
          }
          return 0;
        }
        events?.emit({ type: "exit", code: result.code, signal: result.signal ?? null });
        return result.code;
      } catch (e) {
        if (brokenPipe) return 141; // as a process killed by SIGPIPE
        if (!events) throw e;
        const err = asTetherError(e);
        events.flush();
        events.emit({ type: "error", error: err.toJSON() });
        return 255;
      } finally {
        for (const off of handlers) off();
        client.close();
        for (const o of Object.values(out)) o.release?.();
      }
    }, { failure: 255 }));
}

/** Which machine runs exec `id` (a unique prefix will do): asked of every machine's agent. */
async function machineOfExec(client: RelayClient, id: string): Promise<MachineView> {
  const hits = (await client.sessions(undefined, "exec")).filter((s) =>
    s.id === id || s.id.startsWith(id)
  );
  if (hits.length !== 1) {
    throw new TetherError(
      "session_not_found",
      hits.length ? `'${id}' matches ${hits.length} execs` : `no exec '${id}' on an online machine`,
      {
        hint: "`tether sessions` lists the execs machines keep (an hour after they end, by " +
          "default); name the machine too if it is offline: tether exec MACHINE --attach ID",
      },
    );
  }
  const m = (await client.machines()).find((x) => x.id === hits[0].machine_id);
  if (!m) throw new TetherError("machine_not_found", `machine ${hits[0].machine} is gone`);
  return m;
}

function parseCount(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw usage(`${flag} expects a byte offset, got '${text}'`);
  }
  return n;
}

/**
 * Commander puts every operand into [machine, ...command]; what follows `--`
 * is the command, and what precedes it names the machine (none with -l).
 */
function splitAtDashes(
  machine: string | undefined,
  command: string[],
  argv: string[],
): { machine: string | undefined; command: string[] } {
  const dd = argv.indexOf("--");
  if (dd < 0) return { machine, command };
  const after = argv.slice(dd + 1);
  const all = machine === undefined ? command : [machine, ...command];
  const before = all.slice(0, all.length - after.length);
  if (before.length > 1) {
    throw usage(
      `unexpected '${before[1]}' before --`,
      "tether exec MACHINE [options] -- CMD [ARG…]",
    );
  }
  return { machine: before[0], command: after };
}

/**
 * JSON-lines output for --events. Text is UTF-8 when it decodes; a multi-byte
 * character split across chunks is held until its end arrives; anything that
 * is not UTF-8 goes out as base64.
 */
class EventPrinter {
  private tails: Uint8Array[] = [new Uint8Array(), new Uint8Array(), new Uint8Array()];
  private readonly decoder = new TextDecoder("utf-8", { fatal: true });

  emit(ev: Record<string, unknown>): void {
    console.log(JSON.stringify(ev));
  }

  data(ch: number, chunk: Uint8Array): void {
    const type = ch === CH_STDOUT ? "stdout" : "stderr";
    const bytes = this.tails[ch].length ? concatBytes([this.tails[ch], chunk]) : chunk;
    const cut = incompleteTail(bytes);
    this.tails[ch] = bytes.slice(bytes.length - cut);
    this.write(type, bytes.subarray(0, bytes.length - cut));
  }

  flush(): void {
    for (const ch of [CH_STDOUT, CH_STDERR]) {
      const rest = this.tails[ch];
      this.tails[ch] = new Uint8Array();
      this.write(ch === CH_STDOUT ? "stdout" : "stderr", rest);
    }
  }

  private write(type: string, bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    try {
      this.emit({ type, data: this.decoder.decode(bytes) });
    } catch {
      this.emit({ type, data: bytes.toBase64(), encoding: "base64" });
    }
  }
}

/**
 * Length of an unfinished UTF-8 sequence at the end of `b`, which the next chunk may
 * complete (0 when it ends cleanly). Only a real lead byte (C2–DF, E0–EF, F0–F4) starts
 * one: a byte that can never begin a character (C0, C1, F5–FF) is sent at once.
 */
export function incompleteTail(b: Uint8Array): number {
  for (let i = 1; i <= Math.min(3, b.length); i++) {
    const c = b[b.length - i];
    if ((c & 0xc0) === 0x80) continue; // continuation byte: look further back
    const need = c >= 0xc2 && c <= 0xdf
      ? 2
      : c >= 0xe0 && c <= 0xef
      ? 3
      : c >= 0xf0 && c <= 0xf4
      ? 4
      : 1;
    return need > i ? i : 0;
  }
  return 0;
}
