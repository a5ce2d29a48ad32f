/**
 * Finding the file a command name runs, as `execvp` would but with the child's own PATH
 * and working directory: for the PTY's posix_spawn (pty.ts), and for an exec started
 * through setsid(1) (process_group.ts), so that a command that cannot start fails before
 * anything is spawned, with a shell's words.
 */

/** execvp's search path when the child's environment has none. */
export const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin";

/** Whether a file is there and executable for the child: how depends on the caller. */
export type Executable = (file: string) => "ok" | "missing" | "denied";

/**
 * The file `name` runs. Throws `Deno.errors.NotFound` (a shell's 127) or
 * `Deno.errors.PermissionDenied` (126), the message as a shell words it.
 */
export function resolveCommand(
  name: string,
  path: string,
  cwd: string | undefined,
  executable: Executable,
): string {
  if (name === "") throw new Deno.errors.NotFound("empty command name");
  if (name.includes("/")) {
    const file = absolute(name, cwd);
    const state = executable(file);
    if (state === "missing") throw new Deno.errors.NotFound(`${name}: No such file or directory`);
    if (state === "denied") throw new Deno.errors.PermissionDenied(`${name}: Permission denied`);
    return file;
  }
  let denied = false;
  for (const dir of path.split(":")) {
    const file = `${absolute(dir === "" ? "." : dir, cwd)}/${name}`;
    const state = executable(file);
    if (state === "ok") return file;
    if (state === "denied") denied = true;
  }
  if (denied) throw new Deno.errors.PermissionDenied(`${name}: Permission denied`);
  throw new Deno.errors.NotFound(`${name}: command not found`);
}

/** By the file's mode bits: for a caller without libc's access(2). */
export const executableByMode: Executable = (file) => {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(file);
  } catch {
    return "missing";
  }
  return info.isFile && info.mode !== null && (info.mode & 0o111) !== 0 ? "ok" : "denied";
};

function absolute(path: string, cwd: string | undefined): string {
  return path.startsWith("/") ? path : `${cwd ?? Deno.cwd()}/${path}`;
}
