/** Signal names and numbers, shared by every role (a signal n is exit status 128+n). */

/** The signals a client may send, and their numbers on Linux. */
export const SIGNAL_NUMBERS: Readonly<Partial<Record<Deno.Signal, number>>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGUSR2: 12,
  SIGTERM: 15,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGWINCH: 28,
};

export function isSignalName(s: string): s is Deno.Signal {
  return Object.hasOwn(SIGNAL_NUMBERS, s);
}

/** The exit status a shell gives a process ended by `sig` (128+n). */
export function signalStatus(sig: Deno.Signal): number {
  return 128 + (SIGNAL_NUMBERS[sig] ?? 1);
}
