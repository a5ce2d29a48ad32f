/**
 * Issue 16: `tether ssh` as the transport of the tools that start "ssh" — rsync, git, scp
 * (SFTP and legacy mode), sftp — through a real relay and agent, with no sshd anywhere.
 *
 * Needs Debian's rsync, git, openssh-client (scp, sftp) and openssh-sftp-server
 * (.ci/run installs them).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { SFTP_SERVER_PATHS } from "../src/agent/remote_command.ts";
import { hasCommand, requirement, tetherArgv, walkFiles, World } from "./helpers.ts";
import { hasTmux, Tmux } from "./tmux.ts";

const sftpServer = SFTP_SERVER_PATHS.find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
});
const missing = [
  hasCommand("rsync") ? "" : "rsync",
  hasCommand("git") ? "" : "git",
  hasCommand("scp", ["-h"]) || hasCommand("sftp", ["-h"]) || whichOk("scp") ? "" : "openssh-client",
  sftpServer ? "" : "openssh-sftp-server",
].filter(Boolean);
function whichOk(cmd: string): boolean {
  return hasCommand("sh", ["-c", `command -v ${cmd}`]);
}
const needTools = requirement(
  missing.length ? `tether ssh tests need Debian packages: ${missing.join(", ")}` : undefined,
);

/** A world with agent `box`, and `tether-ssh` (a one-line script, as users write it). */
async function sshWorld(agentArgs: string[] = [], agentEnv: Record<string, string> = {}) {
  needTools.check();
  const w = await World.create();
  await w.startAgent("box", { args: agentArgs, env: agentEnv });
  const bin = join(w.home, "bin");
  await Deno.mkdir(bin);
  const script = join(bin, "tether-ssh");
  const argv = tetherArgv(["ssh"]).map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
  await Deno.writeTextFile(script, `#!/bin/sh\nexec ${argv} "$@"\n`);
  await Deno.chmod(script, 0o755);
  const env = w.env({ PATH: `${bin}:${Deno.env.get("PATH")}` });
  return { w, env, ssh: script };
}

async function sh(
  cmd: string,
  env: Record<string, string>,
  cwd?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("sh", {
    args: ["-c", cmd],
    env,
    clearEnv: true,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

const sshTest = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name: `ssh: ${name}`, ignore: needTools.ignore, fn });

sshTest("exit status, ssh's word joining, stderr apart, stdin and its end", async () => {
  const { w, env } = await sshWorld();
  await using _w = w;
  let r = await sh("tether-ssh box 'exit 7'", env);
  assert.equal(r.code, 7, r.stderr);
  r = await sh(`tether-ssh box echo "a  b"`, env);
  assert.equal(r.stdout, "a b\n");
  r = await sh(`tether-ssh box 'echo "a  b"; echo err >&2'`, env);
  assert.equal(r.stdout, "a  b\n");
  assert.equal(r.stderr, "err\n");
  r = await sh(`printf 'x\\ny\\n' | tether-ssh box 'wc -l; echo done'`, env);
  assert.equal(r.stdout.replace(/ /g, ""), "2\ndone\n");
  // No command, no terminal: the shell reads the commands from stdin, as with ssh.
  r = await sh(`echo 'echo from-stdin; exit 3' | tether-ssh box`, env);
  assert.equal(r.code, 3);
  assert.equal(r.stdout, "from-stdin\n");
  // -n: nothing on stdin. -G: git's probe.
  r = await sh(`echo no | tether-ssh -n box cat; echo rc=$?`, env);
  assert.equal(r.stdout, "rc=0\n");
  r = await sh(`tether-ssh -G box`, env);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^hostname box$/m);
});

sshTest(
  "errors: unknown option, unsupported option, unknown machine, other user, no subsystem",
  async () => {
    const { w, env } = await sshWorld();
    await using _w = w;
    let r = await sh("tether-ssh -Z box true", env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown option -Z/);
    r = await sh("tether-ssh -L 1:localhost:2 box true", env);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /tether forward/);
    r = await sh("tether-ssh nosuchbox true", env);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /nosuchbox/);
    r = await sh("tether-ssh someoneelse@box true", env);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /does not run commands as someoneelse/);
    r = await sh("tether-ssh -s box nosuchsubsystem", env);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /unknown subsystem 'nosuchsubsystem'/);
    // A machine whose sftp server is missing says so, and what to install.
    await w.startAgent("bare", { args: ["--sftp-server", join(w.home, "no-sftp-server")] });
    r = await sh("sftp -b /dev/null -S tether-ssh bare", env);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /sftp server .*no-sftp-server cannot be run.*\n.*openssh-sftp-server/);
  },
);

sshTest(
  "user@: the agent's own user works; root with --allow-user switches, others refused",
  async () => {
    const root = Deno.uid() === 0;
    const { w, env } = await sshWorld(root ? ["--allow-user", "postgres"] : [], {
      AGENT_SECRET: "s3cret",
    });
    await using _w = w;
    const me = (await sh("id -un", env)).stdout.trim();
    // The agent's own user runs as usual (no runuser: it is for root only).
    let r = await sh(`tether-ssh ${me}@box 'id -un; echo $AGENT_SECRET'`, env);
    assert.equal(r.stdout, `${me}\ns3cret\n`, r.stderr);
    if (!root || !hasCommand("id", ["postgres"])) return;
    r = await sh(
      `tether-ssh -o SetEnv=FROM_CLIENT=yes postgres@box ` +
        `'id -un; echo $HOME; pwd; echo "\${AGENT_SECRET:-clean} $FROM_CLIENT"'`,
      env,
    );
    assert.equal(r.code, 0, r.stderr);
    const [user, home, pwd, envLine] = r.stdout.trim().split("\n");
    assert.equal(user, "postgres");
    assert.equal(home, pwd);
    // Another user starts from a clean environment: nothing of the agent's leaks to it.
    assert.equal(envLine, "clean yes");
    r = await sh(`tether-ssh -l nobody box id -un`, env);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /--allow-user nobody/);
  },
);

/** A tree with a few thousand small files, a big one, symlinks and modes. */
async function makeTree(dir: string): Promise<void> {
  for (let d = 0; d < 20; d++) {
    const sub = join(dir, `d${d}`);
    await Deno.mkdir(sub, { recursive: true });
    for (let f = 0; f < 100; f++) {
      await Deno.writeTextFile(join(sub, `f${f}.txt`), `file ${d}/${f}\n`.repeat(f + 1));
    }
  }
  const big = new Uint8Array(100 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
  await Deno.writeFile(join(dir, "big.bin"), big);
  await Deno.symlink("d0/f1.txt", join(dir, "link"));
  await Deno.writeTextFile(join(dir, "run.sh"), "#!/bin/sh\necho hi\n");
  await Deno.chmod(join(dir, "run.sh"), 0o750);
  await Deno.chmod(join(dir, "d1", "f0.txt"), 0o600);
}

/** path → (kind, mode, sha256 or link target) for every entry under `dir`. */
async function manifest(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const path of walkFiles(dir)) {
    const st = await Deno.lstat(path);
    const rel = path.slice(dir.length);
    if (st.isSymlink) out.set(rel, `link ${await Deno.readLink(path)}`);
    else {
      const h = createHash("sha256").update(await Deno.readFile(path)).digest("hex");
      out.set(rel, `${(st.mode! & 0o7777).toString(8)} ${h}`);
    }
  }
  return out;
}

sshTest(
  "rsync -az -e 'tether ssh' there and back: trees identical, a re-run sends nothing",
  async () => {
    const { w, env } = await sshWorld();
    await using _w = w;
    const src = join(w.home, "src");
    await makeTree(src);
    await Deno.mkdir(join(w.home, "remote"));
    const there = join(w.home, "remote", "dst");
    let r = await sh(`rsync -az -e tether-ssh src/ box:${there}/`, env, w.home);
    assert.equal(r.code, 0, r.stderr);
    const want = await manifest(src);
    assert.ok(want.size > 2000);
    assert.deepEqual(await manifest(there), want);
    r = await sh(`rsync -az --stats -e tether-ssh src/ box:${there}/`, env, w.home);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Number of regular files transferred: 0/);
    const back = join(w.home, "back");
    r = await sh(`rsync -az -e tether-ssh box:${there}/ back/`, env, w.home);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await manifest(back), want);
  },
);

sshTest("git clone, commit and push over GIT_SSH_COMMAND='tether ssh'", async () => {
  const { w, env, ssh } = await sshWorld();
  await using _w = w;
  const bare = join(w.home, "remote", "repo.git");
  const genv = {
    ...env,
    GIT_SSH_COMMAND: ssh,
    GIT_AUTHOR_NAME: "t",
    GIT_AUTHOR_EMAIL: "t@example.com",
    GIT_COMMITTER_NAME: "t",
    GIT_COMMITTER_EMAIL: "t@example.com",
  };
  let r = await sh(`git init -q --bare ${bare}`, genv);
  assert.equal(r.code, 0, r.stderr);
  r = await sh(`git clone -q box:${bare} work`, genv, w.home);
  assert.equal(r.code, 0, r.stderr);
  const work = join(w.home, "work");
  await Deno.writeTextFile(join(work, "hello.txt"), "hello\n");
  r = await sh(
    "git add hello.txt && git commit -q -m 'first' && git push -q origin HEAD:main",
    genv,
    work,
  );
  assert.equal(r.code, 0, r.stderr);
  r = await sh(`git --git-dir=${bare} log --format=%s main`, genv);
  assert.equal(r.stdout.trim(), "first");
  r = await sh(`git clone -q -b main box:${bare} again && cat again/hello.txt`, genv, w.home);
  assert.equal(r.stdout, "hello\n", r.stderr);
});

sshTest("scp in SFTP mode and legacy -O mode, and sftp, through tether ssh", async () => {
  const { w, env, ssh } = await sshWorld();
  await using _w = w;
  const data = new Uint8Array(3 * 1024 * 1024 + 7);
  crypto.getRandomValues(data.subarray(0, 65536));
  await Deno.writeFile(join(w.home, "up.bin"), data);
  const remote = join(w.home, "remote");
  await Deno.mkdir(remote);
  for (const mode of ["", "-O"]) {
    const name = `via${mode || "-sftp"}.bin`;
    let r = await sh(`scp -q ${mode} -S ${ssh} up.bin box:${remote}/${name}`, env, w.home);
    assert.equal(r.code, 0, `scp ${mode}: ${r.stderr}`);
    assert.deepEqual(await Deno.readFile(join(remote, name)), data);
    r = await sh(`scp -q ${mode} -S ${ssh} box:${remote}/${name} down${mode}.bin`, env, w.home);
    assert.equal(r.code, 0, `scp ${mode} back: ${r.stderr}`);
    assert.deepEqual(await Deno.readFile(join(w.home, `down${mode}.bin`)), data);
  }
  const r = await sh(
    `printf 'ls ${remote}\\nget ${remote}/via-sftp.bin s.bin\\n' | sftp -q -b - -S ${ssh} box`,
    env,
    w.home,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await Deno.readFile(join(w.home, "s.bin")), data);
});

Deno.test({
  name:
    "ssh: on a terminal, -t gives the command a PTY, and no command is a session as connect --new",
  ignore: !hasTmux() || needTools.ignore,
  async fn() {
    const { w } = await sshWorld();
    await using _w = w;
    await using t = await Tmux.start(tetherArgv(["ssh", "-t", "box", "tty; exit 4"]), {
      env: w.env({ TERM: "xterm-256color" }),
    });
    await t.waitFor(/^\/dev\/pts\/\d+/m);
    await t.waitFor(/\[exited 4\]/);
    await using s = await Tmux.start(tetherArgv(["ssh", "box"]), {
      env: w.env({ TERM: "xterm-256color" }),
    });
    await s.waitFor(/attached —/);
    await s.line("echo in-$((6*7)); exit 5");
    await s.waitFor(/^in-42$/m);
    await s.waitFor(/\[exited 5\]/);
  },
});
