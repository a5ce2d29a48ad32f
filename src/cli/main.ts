/**
 * The command line. Commands parse and print and return their exit status;
 * the work lives in the role folders; every failure is thrown to this one
 * place, which prints it (two human lines, or one JSON object) and exits with
 * the status it carries (README "Configuration": 2 for usage, 255 from exec
 * and connect, else 1).
 */
import { Command, CommanderError } from "@commander-js/extra-typings";
import { usage } from "../common/errors.ts";
import { isCancelled } from "../client/prompt_gate.ts";
import { VERSION } from "../protocol/version.ts";
import { registerAgent } from "./agent.ts";
import { type Act, collect } from "./context.ts";
import { registerCi } from "./ci.ts";
import { registerConnect } from "./connect.ts";
import { registerExec } from "./exec.ts";
import { registerLogin } from "./login.ts";
import { registerMachines } from "./machines.ts";
import { registerPassword } from "./password.ts";
import { asTetherError, printError } from "./output.ts";
import { registerRelay } from "./relay.ts";
import { registerSessions } from "./sessions.ts";
import { registerShare } from "./share.ts";
import { registerSsh } from "./ssh.ts";
import { registerForward } from "./forward.ts";
import { registerUp } from "./up.ts";
import { registerWhoami } from "./whoami.ts";

/** The program, and the exit status of the command that ran (once it ran). */
export function buildProgram(
  sshArgv: string[] = [],
): { program: Command; status(): number } {
  let status = 0;
  const act: Act = (fn, opts = {}) => async (...args) => {
    try {
      status = (await fn(...args)) ?? 0;
    } catch (e) {
      if (opts.failure === undefined || e instanceof CommanderError || isCancelled(e)) throw e;
      throw asTetherError(e).withStatus(opts.failure);
    }
  };
  const program = new Command("tether")
    .description("a remote shell through a relay: no open port, no SSH key, no IP to remember")
    .version(VERSION, "-V, --version", "print the version")
    .helpOption("-h, --help", "show help")
    .option(
      "--relay <url>",
      "relay URL; repeat it (or separate by commas) for a fleet: the first that answers is " +
        "used (env TETHER_RELAY)",
      collect,
      [] as string[],
    )
    .option("--api-key <key>", "client API key (env TETHER_API_KEY)")
    .option("--ca-file <file>", "extra CA certificate for a private TLS relay (env TETHER_CA_FILE)")
    .option("--config-dir <dir>", "config directory (env TETHER_CONFIG_DIR)")
    .option("--json", "machine-readable output; implies --no-interactive")
    .option("--no-interactive", "never prompt; fail with a structured error instead")
    .option("--insecure", "allow plain ws:// to a relay that is not on loopback (warns)")
    .option(
      "--dial-timeout <dur>",
      "give up reaching the relay after this long (env TETHER_DIAL_TIMEOUT; default 10s)",
    )
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ outputError: () => {} });
  registerUp(program, act);
  registerRelay(program, act);
  registerAgent(program, act);
  registerLogin(program, act);
  registerMachines(program, act);
  registerConnect(program, act);
  registerExec(program, act);
  registerSessions(program, act);
  registerShare(program, act);
  registerWhoami(program, act);
  registerPassword(program, act);
  registerCi(program, act);
  registerSsh(program, act, () => sshArgv);
  registerForward(program, act);
  program.command("version").description("print the version (same as -V)").action(
    act(() => console.log(VERSION)),
  );
  // Subcommands inherit exitOverride and the quiet error output.
  const quiet = (c: Command) => {
    c.exitOverride().configureOutput({ outputError: () => {} });
    for (const s of c.commands) quiet(s as Command);
  };
  quiet(program);
  return { program, status: () => status };
}

const SUCCESS_CODES = new Set(["commander.helpDisplayed", "commander.version", "commander.help"]);

/** Commands whose trailing words are a remote command. */
const REMOTE_COMMANDS = new Set(["exec"]);

/** Global options that take a value (`--relay URL`). */
const GLOBAL_VALUES = new Set([
  "--relay",
  "--api-key",
  "--ca-file",
  "--config-dir",
  "--dial-timeout",
]);

/** The subcommand named in argv: the first word that is neither an option nor its value. */
function commandName(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    if (GLOBAL_VALUES.has(argv[i])) i++;
    else if (!argv[i].startsWith("-")) return argv[i];
  }
  return undefined;
}

/**
 * What to do about a usage error. An option tether does not know, given to a command
 * that runs a remote command, most likely belongs to that command: say to put `--` first.
 */
function usageHint(e: CommanderError, argv: string[]): string {
  const cmd = commandName(argv);
  if (e.code === "commander.unknownOption" && cmd && REMOTE_COMMANDS.has(cmd)) {
    const opt = /'([^']+)'/.exec(e.message)?.[1] ?? "it";
    return `if ${opt} is meant for the remote command, put -- before the command: ` +
      `tether ${cmd} MACHINE [options] -- CMD ${opt}`;
  }
  return "see `tether --help`, or `tether COMMAND --help`";
}

/**
 * `tether [globals] ssh ARGS…`: ARGS are OpenSSH's, not ours (`-t`, `-p 22`, `-V`), so they
 * are kept from Commander and parsed by the ssh command itself.
 */
function splitSsh(argv: string[]): { argv: string[]; ssh: string[] } {
  for (let i = 0; i < argv.length; i++) {
    if (GLOBAL_VALUES.has(argv[i])) i++;
    else if (argv[i] === "ssh") return { argv: argv.slice(0, i + 1), ssh: argv.slice(i + 1) };
    else if (!argv[i].startsWith("-")) break;
  }
  return { argv, ssh: [] };
}

/** Runs the CLI; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const { argv, ssh } = splitSsh(args);
  const wantsJson = argv.slice(0, Math.max(0, argv.indexOf("--")) || argv.length).includes(
    "--json",
  );
  const { program, status } = buildProgram(ssh);
  try {
    await program.parseAsync(argv, { from: "user" });
    return status();
  } catch (e) {
    if (e instanceof CommanderError) {
      if (SUCCESS_CODES.has(e.code)) return 0;
      const message = e.message.replace(/^error: /, "").replaceAll("\\n", " ");
      printError(usage(message, usageHint(e, argv)), wantsJson);
      return 2;
    }
    if (isCancelled(e)) {
      console.error("tether: cancelled");
      return e.exitCode;
    }
    const err = asTetherError(e);
    printError(err, wantsJson);
    return err.exitStatus;
  }
}
