/**
 * OpenSSH's command line, as the programs that start "ssh" write it (rsync -e, GIT_SSH_COMMAND,
 * scp -S, sftp -S, Ansible, editors): `[options] [user@]host [command…]`, options being
 * single letters that may be bundled (`-tt`, `-xT`), with their value attached or next
 * (`-p22`, `-p 22`, `-oUser=bob`, `-o "User bob"`); options may follow the host too, up to
 * the first word that is not one, and `--` ends them (scp writes `-- host sftp`).
 *
 * Options that mean something to tether are kept; those that only tune OpenSSH's own
 * connection (ciphers, keys, config files, agent and X11 forwarding) are accepted and
 * ignored; anything else is a usage error naming it.
 */
import { usage } from "../common/errors.ts";

export interface SshArgs {
  /** The machine, as the resolver takes it. */
  machine: string;
  /** `user@`, `-l` or `-o User=`: the remote user asked for, if any. */
  user?: string;
  /** Words after the machine: joined with single spaces, run by the remote user's shell. */
  command: string[];
  /** Times -t was given (2: force a PTY even without a terminal); -1 for -T. */
  tty: number;
  /** -n: the remote command gets nothing on stdin. */
  nullStdin: boolean;
  /** -s: the command names a subsystem (sftp). */
  subsystem: boolean;
  quiet: boolean;
  verbose: number;
  /** -G: print the configuration (for git's probe) and exit. */
  printConfig: boolean;
  /** -o SendEnv= patterns: local variables passed to the remote command. */
  sendEnv: string[];
  /** -o SetEnv= pairs. */
  setEnv: Record<string, string>;
  /** -o RemoteCommand= (other than none): the command when none is given. */
  remoteCommand?: string;
  /** -o HostName=: the machine the destination names. */
  hostName?: string;
  /** Whether -t, -T or -o RequestTTY= set `tty` already. */
  ttySet?: boolean;
}

/** Options without a value that change nothing for tether (OpenSSH's own transport). */
const IGNORED_FLAGS = new Set("1246aAgkKxXYyC".split(""));
/** Options with a value that change nothing for tether. */
const IGNORED_VALUES = new Set("bBcEFiImpPS".split(""));
/** Options tether cannot honour, with what to use instead. */
const REFUSED: Record<string, string> = {
  L: "forward ports with `tether forward MACHINE [BIND:]PORT:HOST:PORT`",
  R: "remote forwarding is not supported; `tether forward` forwards local ports",
  D: "dynamic (SOCKS) forwarding is not supported; use `tether forward`",
  W: "use `tether proxy MACHINE HOST:PORT` to carry stdin/stdout to a port",
  J: "tether reaches every machine through its relay; no jump host is needed",
  w: "tunnel devices are not supported",
  N: "there is nothing to hold open without a command; use `tether forward` for ports",
  f: "going to the background is not supported; use `tether exec --detach`",
  M: "connection sharing is not needed: tether keeps one connection to the relay",
  O: "there is no control master to talk to",
};
/** Options whose value is the next word, when not attached. */
const TAKES_VALUE = new Set("bBcDeEFiIJlLmoOpPQRSwW".split(""));

/** `-o` keys (lower case) that change nothing for tether. */
const IGNORED_CONFIG = new Set([
  "addkeystoagent",
  "addressfamily",
  "batchmode",
  "checkhostip",
  "ciphers",
  "clearallforwardings",
  "compression",
  "connectionattempts",
  "connecttimeout",
  "controlmaster",
  "controlpath",
  "controlpersist",
  "forwardagent",
  "forwardx11",
  "forwardx11trusted",
  "globalknownhostsfile",
  "hostkeyalgorithms",
  "identitiesonly",
  "identityfile",
  "kexalgorithms",
  "loglevel",
  "macs",
  "passwordauthentication",
  "permitlocalcommand",
  "port",
  "preferredauthentications",
  "protocol",
  "proxycommand",
  "pubkeyauthentication",
  "serveraliveinterval",
  "serveralivecountmax",
  "stricthostkeychecking",
  "tcpkeepalive",
  "updatehostkeys",
  "userknownhostsfile",
  "escapechar",
  "requesttty",
  "user",
  "sendenv",
  "setenv",
  "remotecommand",
  "exitonforwardfailure",
  "gssapiauthentication",
  "kbdinteractiveauthentication",
  "numberofpasswordprompts",
  "visualhostkey",
  "verifyhostkeydns",
  "hashknownhosts",
  "ipqos",
  "rekeylimit",
  "logintimeout",
]);

function base(): Omit<SshArgs, "machine"> {
  return {
    command: [],
    tty: 0,
    nullStdin: false,
    subsystem: false,
    quiet: false,
    verbose: 0,
    printConfig: false,
    sendEnv: [],
    setEnv: {},
  };
}

/** Parses ssh's argv (what follows `tether ssh`); throws a usage error naming what is wrong. */
export function parseSshArgs(argv: string[]): SshArgs {
  const a: Omit<SshArgs, "machine"> & { machine?: string } = base();
  let i = 0;
  let ended = false;
  const options = () => {
    while (i < argv.length && !ended) {
      const w = argv[i];
      if (w === "--") {
        ended = true;
        i++;
        return;
      }
      if (!w.startsWith("-") || w === "-") return;
      i++;
      for (let j = 1; j < w.length; j++) {
        const c = w[j];
        if (TAKES_VALUE.has(c)) {
          let value = w.slice(j + 1);
          if (value === "") {
            if (i >= argv.length) throw usage(`option -${c} needs a value`, SYNOPSIS);
            value = argv[i++];
          }
          option(a, c, value);
          break;
        }
        option(a, c);
      }
    }
  };
  options();
  if (i >= argv.length) throw usage("no machine given", SYNOPSIS);
  const dest = argv[i++];
  options();
  a.command = argv.slice(i);
  const { user, machine } = destination(dest);
  // As OpenSSH: -l and -o User= (the first given) come before the user@ of the destination,
  // and -o HostName= names the machine the destination stands for.
  a.user ??= user;
  a.machine = a.hostName ?? machine;
  if (a.subsystem && a.command.length === 0) {
    throw usage("-s needs the subsystem's name as the command (e.g. sftp)", SYNOPSIS);
  }
  return a as SshArgs;
}

const SYNOPSIS = "tether ssh [options] [user@]MACHINE [COMMAND…] (OpenSSH's options)";

/** `user@host`, `host`, or `ssh://[user@]host[:port]`. */
function destination(dest: string): { user?: string; machine: string } {
  let d = dest;
  const url = /^ssh:\/\/(.*?)(?::\d+)?\/?$/.exec(d);
  if (url) d = url[1];
  const at = d.lastIndexOf("@");
  const user = at >= 0 ? d.slice(0, at) : undefined;
  const machine = at >= 0 ? d.slice(at + 1) : d;
  if (!machine) throw usage(`no machine in '${dest}'`, SYNOPSIS);
  if (user === "") throw usage(`empty user name in '${dest}'`, SYNOPSIS);
  return { user, machine };
}

function option(a: Omit<SshArgs, "machine">, c: string, value?: string): void {
  switch (c) {
    case "t":
      a.tty = a.tty >= 1 ? 2 : 1;
      a.ttySet = true;
      return;
    case "T":
      a.tty = -1;
      a.ttySet = true;
      return;
    case "n":
      a.nullStdin = true;
      return;
    case "s":
      a.subsystem = true;
      return;
    case "q":
      a.quiet = true;
      return;
    case "v":
      a.verbose++;
      return;
    case "V":
      throw usage("tether ssh has no version of its own; see `tether version`");
    case "G":
      a.printConfig = true;
      return;
    case "l":
      a.user ??= value;
      return;
    case "o":
      config(a, value!);
      return;
  }
  if (c === "e") return; // the escape character: tether has no escapes (Ctrl-D detaches a PTY)
  if (c in REFUSED) throw usage(`option -${c} is not supported by tether ssh`, REFUSED[c]);
  if (value === undefined ? IGNORED_FLAGS.has(c) : IGNORED_VALUES.has(c)) return;
  throw usage(`unknown option -${c}`, SYNOPSIS);
}

/** `-o Key=Value` or `-o "Key Value"`. */
function config(a: Omit<SshArgs, "machine">, text: string): void {
  const m = /^\s*([A-Za-z0-9]+)\s*(?:=\s*|\s+)(.*)$/.exec(text);
  if (!m) throw usage(`-o '${text}': expected Key=Value`, SYNOPSIS);
  const key = m[1].toLowerCase();
  const value = m[2].trim().replace(/^"(.*)"$/, "$1");
  switch (key) {
    case "user":
      a.user ??= value;
      return;
    case "hostname":
      a.hostName ??= value;
      return;
    case "requesttty": {
      // A configuration value counts only if nothing set it before (-t and -T always do).
      if (a.ttySet) return;
      a.ttySet = true;
      const v = value.toLowerCase();
      if (v === "no") a.tty = -1;
      else if (v === "yes") a.tty = Math.max(a.tty, 1);
      else if (v === "force") a.tty = 2;
      else if (v !== "auto") throw usage(`-o RequestTTY=${value}: expected yes, no, force or auto`);
      return;
    }
    case "sendenv":
      a.sendEnv.push(...value.split(/\s+/).filter(Boolean));
      return;
    case "setenv":
      for (const pair of value.split(/\s+/).filter(Boolean)) {
        const eq = pair.indexOf("=");
        if (eq <= 0) throw usage(`-o SetEnv=${pair}: expected NAME=VALUE`);
        a.setEnv[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
      return;
    case "remotecommand":
      if (value.toLowerCase() !== "none") a.remoteCommand = value;
      return;
  }
  if (!IGNORED_CONFIG.has(key)) {
    throw usage(
      `unknown -o option '${m[1]}'`,
      "tether ssh takes OpenSSH's -o options it can honour",
    );
  }
}

/** The local variables an ssh `SendEnv` pattern list picks (`*` and `?` wildcards). */
export function sendEnv(patterns: string[], env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  const res = patterns.map((p) =>
    new RegExp(
      "^" + p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*").replaceAll("?", ".") +
        "$",
    )
  );
  for (const [k, v] of Object.entries(env)) if (res.some((r) => r.test(k))) out[k] = v;
  return out;
}
