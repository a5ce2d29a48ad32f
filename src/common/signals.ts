/** Signal names and numbers (Linux), shared by every role: a signal n is exit status 128+n. */

const NAMES = [
  "SIGHUP",
  "SIGINT",
  "SIGQUIT",
  "SIGILL",
  "SIGTRAP",
  "SIGABRT",
  "SIGBUS",
  "SIGFPE",
  "SIGKILL",
  "SIGUSR1",
  "SIGSEGV",
  "SIGUSR2",
  "SIGPIPE",
  "SIGALRM",
  "SIGTERM",
  "SIGSTKFLT",
  "SIGCHLD",
  "SIGCONT",
  "SIGSTOP",
  "SIGTSTP",
  "SIGTTIN",
  "SIGTTOU",
  "SIGURG",
  "SIGXCPU",
  "SIGXFSZ",
  "SIGVTALRM",
  "SIGPROF",
  "SIGWINCH",
  "SIGIO",
  "SIGPWR",
  "SIGSYS",
] as const;

/** The signals a client may send to a remote process (the others are the kernel's to send). */
const SENDABLE = new Set<string>([
  "SIGHUP",
  "SIGINT",
  "SIGQUIT",
  "SIGKILL",
  "SIGUSR1",
  "SIGUSR2",
  "SIGTERM",
  "SIGCONT",
  "SIGSTOP",
  "SIGTSTP",
  "SIGWINCH",
]);

export function isSignalName(s: string): s is Deno.Signal {
  return SENDABLE.has(s);
}

/** `SIGTERM` for 15; `SIG<n>` for a number without a name. */
export function signalName(n: number): string {
  return NAMES[n - 1] ?? `SIG${n}`;
}

/** The exit status a shell gives a process ended by `sig` (128+n). */
export function signalStatus(sig: string): number {
  const n = (NAMES as readonly string[]).indexOf(sig);
  return 128 + (n >= 0 ? n + 1 : 1);
}
