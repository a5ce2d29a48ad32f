/**
 * `tether ssh [options] [user@]MACHINE [COMMAND…]`: OpenSSH's calling convention, so that
 * rsync -e, GIT_SSH_COMMAND, scp -S, sftp -S and Ansible can use tether as their transport.
 *
 * As ssh: the command's words are joined with single spaces and run by the remote user's
 * shell; stdin, stdout and stderr are separate raw streams (no PTY unless -t), each chunk
 * written at once; the end of stdin reaches the command; the exit status is the remote
 * one, 255 when tether fails. No command and a terminal: an interactive session (as
 * `connect --new`).
 */
import type { Command } from "@commander-js/extra-typings";
import { attach, processTerminal } from "../client/attach.ts";
import { runExec } from "../client/exec.ts";
import { RelayClient } from "../client/relay_client.ts";
import { parseSshArgs, sendEnv, type SshArgs } from "../client/ssh_args.ts";
import { writeAll } from "../common/bytes.ts";
import { machineOffline } from "../common/errors.ts";
import { CH_STDERR, CH_STDOUT } from "../protocol/frames.ts";
import { lazyOutput } from "../client/stdout.ts";
import { openBulkStdin } from "../client/stdin.ts";
import type { RemoteSpec } from "../protocol/messages.ts";
import { attachWithBanner } from "./attach_banner.ts";
import { type Act, clientConfig, type Globals, globals } from "./context.ts";
import { say } from "./output.ts";
import { authFor, chooseMachine } from "./target.ts";

export const SSH_HELP = `Usage: tether ssh [options] [user@]MACHINE [COMMAND…]

OpenSSH's command line, for the programs that start "ssh" (no sshd on the machine):
  rsync -az -e 'tether ssh' dir/ MACHINE:dst/
  GIT_SSH_COMMAND='tether ssh' git clone MACHINE:/srv/repo.git
  scp -S tether-ssh FILE MACHINE:      (a one-line script: exec tether ssh "$@")
  sftp -S tether-ssh MACHINE

COMMAND's words are joined with spaces and run by the remote user's shell, as ssh does.
Without one: an interactive session on a terminal (as connect --new), else the shell
reading stdin. Exit status: the remote command's, 255 when tether fails.

Options used: -t (PTY; -tt even without a terminal), -T (no PTY), -n (stdin from
/dev/null), -s (COMMAND names a subsystem: sftp), -l USER / USER@ (only an agent running
as root with --allow-user USER switches users), -q, -v, -G (print a configuration and
exit), -o User=, RequestTTY=, SendEnv=, SetEnv=, RemoteCommand=.
Accepted and ignored (they tune OpenSSH's own connection): -1 -2 -4 -6 -a -A -C -g -k
-K -x -X -Y -y, -b -B -c -e -E -F -i -I -m -p -P -S, and such -o options. The relay,
key and machine passwords come from the usual config (TETHER_RELAY, TETHER_API_KEY,
TETHER_PASSWORD, tether login).`;

/** The warning ssh prints for -t without a terminal (its callers expect the same words). */
const NO_PTY = "Pseudo-terminal will not be allocated because stdin is not a terminal.";

export function registerSsh(program: Command, act: Act, sshArgv: () => string[]) {
  program.command("ssh")
    .description("run a command or a shell the way OpenSSH's ssh does (for rsync, git, scp…)")
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .argument("[args...]", "OpenSSH's options, [user@]MACHINE and the command")
    .action(act(async (_args, _opts, cmd) => {
      const argv = sshArgv();
      if (argv[0] === "--help" || argv[0] === "-h") {
        console.log(SSH_HELP);
        return 0;
      }
      return await ssh(globals(cmd), parseSshArgs(argv));
    }, { failure: 255 }));
}

async function ssh(g: Globals, a: SshArgs): Promise<number> {
  if (a.printConfig) {
    // git's probe (`ssh -G host`) to learn that we take OpenSSH's options.
    console.log(`user ${a.user ?? Deno.env.get("USER") ?? "root"}\nhostname ${a.machine}\nport 22`);
    return 0;
  }
  const verbose = (line: string) => {
    if (a.verbose > 0) say(`tether ssh: ${line}`);
  };
  const line = a.command.length ? a.command.join(" ") : a.remoteCommand;
  const stdinTerminal = Deno.stdin.isTerminal();
  let pty = a.tty >= 2 || (a.tty === 1 && stdinTerminal) ||
    (a.tty === 0 && line === undefined && stdinTerminal);
  if (a.subsystem) pty = a.tty >= 2;
  if (a.tty === 1 && !stdinTerminal && !a.quiet) say(NO_PTY);

  const cfg = clientConfig(g);
  const client = await RelayClient.connect(cfg);
  try {
    const { machine: target } = await chooseMachine(client, g, a.machine, {});
    if (!target.online) throw machineOffline(target);
    verbose(`${target.name} (${target.id}), ${pty ? "with" : "without"} a PTY`);
    const auth = authFor(cfg, client, target, undefined, g);
    const env = { ...sendEnv(a.sendEnv, Deno.env.toObject()), ...a.setEnv };
    const remote: RemoteSpec = {
      shell: !a.subsystem,
      ...(a.subsystem ? { subsystem: line } : {}),
      ...(a.user !== undefined ? { user: a.user } : {}),
    };
    const argv = a.subsystem || line === undefined ? [] : [line];
    const hasEnv = Object.keys(env).length > 0;

    if (pty && line === undefined) {
      // An interactive login shell in a new session, as `connect --new`.
      const outcome = await attachWithBanner(cfg, client, target, { auth, remote });
      return outcome.code;
    }
    if (pty) {
      const outcome = await attach(cfg, client, {
        machineId: target.id,
        machineName: target.name,
        argv,
        oneShot: true,
        auth,
        env: hasEnv ? env : undefined,
        remote,
      }, processTerminal());
      return outcome.code;
    }
    let brokenPipe = false;
    const out = { [CH_STDOUT]: lazyOutput(1), [CH_STDERR]: lazyOutput(2) };
    const run = runExec(client, () => RelayClient.connect(cfg), {
      machineId: target.id,
      machineName: target.name,
      argv,
      env: hasEnv ? env : undefined,
      stdin: !a.nullStdin,
      stream: false,
      auth,
      remote,
    }, {
      // Not the event-loop reader of exec --stream: scp and sftp give one socket as stdin
      // and stdout, and that reader's O_NONBLOCK would be stdout's too. The bulk reader
      // leaves the flags alone.
      stdin: openBulkStdin(),
      warn: (w) => {
        if (!a.quiet) say(`tether ssh: ${w}`);
      },
      async output(ch, chunk) {
        if (brokenPipe) return;
        try {
          await writeAll(out[ch === CH_STDERR ? CH_STDERR : CH_STDOUT], chunk);
        } catch (e) {
          if (!(e instanceof Deno.errors.BrokenPipe)) throw e;
          brokenPipe = true;
          run.kill();
        }
      },
    });
    // Ctrl-C and the like end the remote command, as they end ssh's.
    const handlers = (["SIGINT", "SIGTERM", "SIGHUP"] as const).map((sig) => {
      const h = () => run.kill();
      Deno.addSignalListener(sig, h);
      return () => Deno.removeSignalListener(sig, h);
    });
    try {
      const result = await run.done;
      return result.code;
    } catch (e) {
      if (brokenPipe) return 255;
      throw e;
    } finally {
      for (const off of handlers) off();
    }
  } finally {
    client.close();
  }
}
