/** OpenSSH's command line as rsync, git, scp and sftp write it (src/client/ssh_args.ts). */
import assert from "node:assert/strict";
import { parseSshArgs, sendEnv } from "../../src/client/ssh_args.ts";

const usageOf = (argv: string[]) => {
  try {
    parseSshArgs(argv);
  } catch (e) {
    const err = e as { code: string; message: string; hint?: string };
    assert.equal(err.code, "usage");
    return `${err.message} | ${err.hint ?? ""}`;
  }
  throw new Error(`${argv.join(" ")} parsed`);
};

Deno.test("ssh args: what rsync, git, scp and sftp pass", () => {
  // rsync -e 'tether ssh' (with -l when the source names a user)
  let a = parseSshArgs([
    "-l",
    "deploy",
    "box",
    "rsync",
    "--server",
    "-logDtprze.iLsfxC",
    ".",
    "d/",
  ]);
  assert.equal(a.machine, "box");
  assert.equal(a.user, "deploy");
  assert.deepEqual(a.command, ["rsync", "--server", "-logDtprze.iLsfxC", ".", "d/"]);
  // git, after its `-G` probe: SendEnv and the quoted command as one word
  a = parseSshArgs(["-o", "SendEnv=GIT_PROTOCOL", "box", "git-upload-pack '/srv/r.git'"]);
  assert.deepEqual(a.sendEnv, ["GIT_PROTOCOL"]);
  assert.deepEqual(a.command, ["git-upload-pack '/srv/r.git'"]);
  assert.equal(parseSshArgs(["-G", "box"]).printConfig, true);
  // scp (SFTP mode): bundled flags, -oKey=Value, `--` before the host, -s subsystem
  a = parseSshArgs([
    "-x",
    "-oPermitLocalCommand=no",
    "-oClearAllForwardings=yes",
    "-oRemoteCommand=none",
    "-oRequestTTY=no",
    "-oForwardAgent=no",
    "-s",
    "--",
    "box",
    "sftp",
  ]);
  assert.equal(a.subsystem, true);
  assert.equal(a.tty, -1);
  assert.equal(a.remoteCommand, undefined);
  assert.deepEqual(a.command, ["sftp"]);
  // sftp -S: -oProtocol, -s and the subsystem after the host
  a = parseSshArgs(["-oForwardX11 no", "-oPermitLocalCommand no", "-p22", "-s", "box", "sftp"]);
  assert.equal(a.subsystem, true);
  // user@host, ssh:// URLs, -t counted, options after the host up to the command
  a = parseSshArgs(["-tt", "alice@box", "-q", "top", "-b"]);
  assert.equal(a.user, "alice");
  assert.equal(a.tty, 2);
  assert.equal(a.quiet, true);
  assert.deepEqual(a.command, ["top", "-b"]);
  assert.equal(parseSshArgs(["ssh://bob@box:2222"]).user, "bob");
  assert.equal(parseSshArgs(["ssh://box:2222/"]).machine, "box");
  // after `--`, a word that looks like an option is the command's
  assert.deepEqual(parseSshArgs(["box", "--", "-x"]).command, ["-x"]);
  // ignored options with and without values, bundled
  a = parseSshArgs(["-4CAx", "-i", "~/.ssh/id", "-F/dev/null", "-e", "none", "-vv", "box"]);
  assert.equal(a.verbose, 2);
  assert.deepEqual(a.command, []);
  assert.deepEqual(parseSshArgs(["-o", "SetEnv=A=1 B=2", "box"]).setEnv, { A: "1", B: "2" });
  assert.equal(parseSshArgs(["-o", "RemoteCommand=htop", "box"]).remoteCommand, "htop");
});

Deno.test("ssh args: which value wins, as OpenSSH decides it", () => {
  // -l and -o User= (the first one given) over the user@ of the destination
  assert.equal(parseSshArgs(["-l", "alice", "bob@box"]).user, "alice");
  assert.equal(parseSshArgs(["-oUser=alice", "-l", "carol", "bob@box"]).user, "alice");
  assert.equal(parseSshArgs(["bob@box"]).user, "bob");
  // -t and -T always count; -o RequestTTY only if nothing set it before
  assert.equal(parseSshArgs(["-t", "-oRequestTTY=no", "box"]).tty, 1);
  assert.equal(parseSshArgs(["-oRequestTTY=no", "-t", "box"]).tty, 1);
  assert.equal(parseSshArgs(["-oRequestTTY=force", "box"]).tty, 2);
  assert.equal(parseSshArgs(["-ttt", "box"]).tty, 2);
  // -o HostName names the machine the destination stands for
  assert.equal(parseSshArgs(["-o", "HostName=real", "alias"]).machine, "real");
});

Deno.test("ssh args: unknown and unsupported options are usage errors naming them", () => {
  assert.match(usageOf(["-Z", "box"]), /unknown option -Z/);
  assert.match(usageOf(["-L", "8080:localhost:80", "box"]), /-L is not supported.*tether forward/);
  assert.match(usageOf(["-o", "Bogus=1", "box"]), /unknown -o option 'Bogus'/);
  assert.match(usageOf(["-p"]), /-p needs a value/);
  assert.match(usageOf(["-t"]), /no machine given/);
  assert.match(usageOf(["-s", "box"]), /-s needs the subsystem/);
  assert.match(usageOf(["@box"]), /empty user name/);
  assert.match(usageOf(["-o", "RequestTTY=maybe", "box"]), /RequestTTY=maybe/);
});

Deno.test("ssh args: SendEnv patterns pick local variables", () => {
  const env = { GIT_PROTOCOL: "version=2", LANG: "C", LC_ALL: "C", HOME: "/root" };
  assert.deepEqual(sendEnv(["GIT_PROTOCOL"], env), { GIT_PROTOCOL: "version=2" });
  assert.deepEqual(sendEnv(["LANG", "LC_*"], env), { LANG: "C", LC_ALL: "C" });
  assert.deepEqual(sendEnv(["H?ME"], env), { HOME: "/root" });
  assert.deepEqual(sendEnv(["NOPE"], env), {});
});
