/**
 * What `tether ssh` asks of a machine, in the agent's terms: a command line run as ssh runs
 * it (`$SHELL -c LINE`, the shell itself when there is none), a subsystem (sftp, through
 * the host's sftp-server), and the user to run as. An open without these passes unchanged.
 *
 * Another user is possible only when the agent runs as root and was started with
 * `--allow-user USER` (or `*`); the command then runs through `runuser -u USER --` with that
 * user's shell, home and login names and a clean environment, as sshd would set them.
 */
import type { Open, WireError } from "../protocol/messages.ts";

export interface RemoteOptions {
  /** Users a root agent may run commands as (`*`: any). */
  allowUsers?: string[];
  /** `agent run --sftp-server PATH`; else the usual places are searched. */
  sftpServer?: string;
}

/** Where Debian, Fedora, Arch, Alpine, macOS and the BSDs put sftp-server. */
export const SFTP_SERVER_PATHS = [
  "/usr/lib/openssh/sftp-server",
  "/usr/libexec/openssh/sftp-server",
  "/usr/lib/ssh/sftp-server",
  "/usr/libexec/sftp-server",
  "/usr/local/libexec/sftp-server",
  "/usr/lib/misc/sftp-server",
];

/** PATH of a user the agent switches to (sshd's default, plus the sbin dirs for root). */
const SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

interface Account {
  name: string;
  uid: number;
  home: string;
  shell: string;
}

/** A passwd entry (through getent, so directory users count too). */
function account(who: string | number): Account | undefined {
  try {
    const out = new Deno.Command("getent", {
      args: ["passwd", String(who)],
      stdout: "piped",
      stderr: "null",
      stdin: "null",
    }).outputSync();
    if (!out.success) return undefined;
    const f = new TextDecoder().decode(out.stdout).trim().split("\n")[0].split(":");
    if (f.length < 7) return undefined;
    return { name: f[0], uid: Number(f[2]), home: f[5] || "/", shell: f[6] || "/bin/sh" };
  } catch {
    return undefined;
  }
}

function isExecutable(path: string): boolean {
  try {
    const st = Deno.statSync(path);
    return st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0;
  } catch {
    return false;
  }
}

export class RemoteCommands {
  private me?: Account | null;

  constructor(
    private readonly opts: RemoteOptions,
    /** The agent's own shell (what `connect` starts): $SHELL, else /bin/sh. */
    private readonly shell: string,
  ) {}

  private self(): Account | undefined {
    if (this.me === undefined) this.me = account(Deno.uid() ?? "") ?? null;
    return this.me ?? undefined;
  }

  /** The open the exec or session code runs, or the refusal to send back. */
  translate(open: Open): Open | WireError {
    // A join (or a resume) carries no command: the session or exec is what it was.
    if ((!open.shell && !open.subsystem && !open.user) || open.session) return open;
    let user: Account | undefined;
    if (open.user) {
      const u = this.user(open.user);
      if ("code" in u) return u;
      // Ourselves: nothing to switch (runuser is for root only, and absent off Linux).
      if (u.uid !== Deno.uid()) user = u;
    }
    const shell = user?.shell ?? this.shell;
    let argv: string[];
    if (open.subsystem) {
      const s = this.subsystem(open.subsystem);
      if (typeof s !== "string") return s;
      argv = [s];
    } else if (open.shell) {
      if (open.argv.length > 1) {
        return { code: "usage", message: "a shell command travels as one line" };
      }
      argv = open.argv.length === 1
        ? [shell, "-c", open.argv[0]]
        : open.kind === "pty"
        ? [shell, "-l"]
        : [shell];
    } else {
      argv = open.argv.length || !user ? open.argv : [shell, "-l"];
    }
    if (!user) return { ...open, argv };
    // The other user starts from a clean environment, as sshd starts it: nothing of the
    // agent's own (its service's secrets) reaches that user's shell and dotfiles.
    const env: Record<string, string> = {
      PATH: SAFE_PATH,
      ...(Deno.env.get("LANG") ? { LANG: Deno.env.get("LANG")! } : {}),
      ...(open.kind === "pty" ? { TERM: open.term || "xterm-256color" } : {}),
      ...(open.env ?? {}),
      HOME: user.home,
      USER: user.name,
      LOGNAME: user.name,
      SHELL: user.shell,
    };
    return {
      ...open,
      argv: [
        "env",
        "-i",
        ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
        "runuser",
        "-u",
        user.name,
        "--",
        ...argv,
      ],
      cwd: open.cwd ?? user.home,
      env: undefined,
    };
  }

  /** The account to run as: ourselves, or (as root) an allowed other user; else why not. */
  private user(name: string): Account | WireError {
    const me = this.self();
    if (me && name === me.name) return me;
    const allowed = this.opts.allowUsers ?? [];
    if (!me || me.uid !== 0 || !(allowed.includes(name) || allowed.includes("*"))) {
      return {
        code: "forbidden",
        message: `this machine's agent runs as ${me?.name ?? `uid ${Deno.uid()}`}; ` +
          `it does not run commands as ${name}`,
        hint: me?.uid === 0
          ? `start the agent with --allow-user ${name} to allow it`
          : `leave out the user (${name}@) to run as ${me?.name ?? "the agent's user"}, or ` +
            `run the agent as root with --allow-user ${name}`,
      };
    }
    const u = account(name);
    if (!u) return { code: "forbidden", message: `no user ${name} on this machine` };
    return u;
  }

  private subsystem(name: string): string | WireError {
    if (name !== "sftp") {
      return {
        code: "forbidden",
        message: `unknown subsystem '${name}'`,
        hint: "tether ssh -s knows the sftp subsystem",
      };
    }
    const path = this.opts.sftpServer ?? SFTP_SERVER_PATHS.find(isExecutable);
    if (!path || !isExecutable(path)) {
      return {
        code: "forbidden",
        message: path
          ? `the sftp server ${path} cannot be run on this machine`
          : "this machine has no sftp-server",
        hint: "install it (Debian: openssh-sftp-server) or start the agent with " +
          "--sftp-server PATH; scp -O uses the scp program instead",
      };
    }
    return path;
  }
}
