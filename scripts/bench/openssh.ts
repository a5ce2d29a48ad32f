/**
 * OpenSSH for comparison: an `sshd` started on a free 127.0.0.1 port with a
 * throwaway host key and user key, and the matching `ssh` argv. Everything is
 * default (ciphers, key exchange, compression off) except what running
 * unprivileged-ish in a temp dir needs; the negotiated algorithms are read
 * from `ssh -v` and written into the report.
 */
import { join } from "node:path";
import { descendants, freePort, log, Proc, run, shq, sleep } from "./lib.ts";

export const INSTALL_HINT =
  "install OpenSSH with `sudo apt-get update && sudo apt-get install -y openssh-server openssh-client` (Debian/Ubuntu)";

function which(name: string, extra: string[] = []): string | undefined {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), ...extra].filter(Boolean);
  for (const d of dirs) {
    const p = join(d, name);
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not here */ }
  }
  return undefined;
}

export class Sshd {
  proc?: Proc;
  port = 0;
  /** e.g. "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026" */
  version = "";
  /** e.g. "chacha20-poly1305@openssh.com, kex sntrup761x25519-sha512@openssh.com" */
  algorithms = "";
  readonly sshBin: string;
  readonly sshdBin: string;

  private constructor(readonly dir: string, bins: { ssh: string; sshd: string }) {
    this.sshBin = bins.ssh;
    this.sshdBin = bins.sshd;
  }

  /** Starts sshd, or returns why the comparison is skipped. */
  static async start(parent: string): Promise<Sshd | { skipped: string }> {
    const sbin = ["/usr/sbin", "/usr/local/sbin", "/sbin"];
    const sshd = which("sshd", sbin);
    const ssh = which("ssh");
    const keygen = which("ssh-keygen");
    if (!sshd || !ssh || !keygen) {
      const missing = [!sshd && "sshd", !ssh && "ssh", !keygen && "ssh-keygen"].filter(Boolean);
      return {
        skipped: `OpenSSH comparison skipped: ${missing.join(", ")} not found; ${INSTALL_HINT}`,
      };
    }
    const dir = await Deno.makeTempDir({ dir: parent, prefix: "sshd-" });
    const s = new Sshd(dir, { ssh, sshd });
    try {
      for (const [file, comment] of [["host_key", "bench-host"], ["user_key", "bench-user"]]) {
        const r = await run(
          [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", join(dir, file)],
          { timeoutMs: 20_000 },
        );
        if (r.code !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
      }
      await Deno.copyFile(join(dir, "user_key.pub"), join(dir, "authorized_keys"));
      // The privilege-separation directory sshd insists on (root only; harmless otherwise).
      await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 }).catch(() => {});
      s.port = freePort();
      const cfg = [
        "ListenAddress 127.0.0.1",
        `Port ${s.port}`,
        `HostKey ${join(dir, "host_key")}`,
        `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
        `PidFile ${join(dir, "sshd.pid")}`,
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        // Server-side keepalive every 2 s, like the relay's heartbeat (matters only when idle).
        "ClientAliveInterval 2",
        "ClientAliveCountMax 3",
        "MaxStartups 100:30:200",
        // bash sources ~/.bashrc even for `ssh host CMD` when it sees SSH_CLIENT and SHLVL < 2
        // (Debian builds it with SSH_SOURCE_BASHRC); tether runs argv with no shell at all, so keep
        // ssh's remote `bash -c CMD` lean too. Login shells (ssh -tt) still read their profile.
        "SetEnv SHLVL=1",
        "LogLevel ERROR",
      ].join("\n") + "\n";
      await Deno.writeTextFile(join(dir, "sshd_config"), cfg);
      s.proc = new Proc([sshd, "-D", "-e", "-f", join(dir, "sshd_config")], {
        env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" },
      });
      const deadline = performance.now() + 10_000;
      for (;;) {
        try {
          const c = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
          c.close();
          break;
        } catch {
          if (s.proc.exited || performance.now() > deadline) {
            throw new Error(`sshd did not start: ${s.proc.stderr.trim()}`);
          }
          await sleep(50);
        }
      }
      const probe = await run(s.argv(["true"], { extra: ["-v"] }), { timeoutMs: 20_000 });
      if (probe.code !== 0) {
        throw new Error(`ssh to the test sshd failed (exit ${probe.code}): ${probe.stderr.trim()}`);
      }
      const cipher = /kex: server->client cipher: (\S+) MAC: (\S+)/.exec(probe.stderr);
      const kex = /kex: algorithm: (\S+)/.exec(probe.stderr);
      const hostKey = /kex: host key algorithm: (\S+)/.exec(probe.stderr);
      s.algorithms = [
        cipher ? `cipher ${cipher[1]}${cipher[2] === "<implicit>" ? "" : ` + ${cipher[2]}`}` : "",
        kex ? `kex ${kex[1]}` : "",
        hostKey ? `host key ${hostKey[1]}` : "",
        "user key ssh-ed25519",
        "compression off",
      ].filter(Boolean).join(", ");
      s.version = (await run([ssh, "-V"], { timeoutMs: 5000 })).stderr.trim();
      return s;
    } catch (e) {
      await s.stop();
      return {
        skipped: `OpenSSH comparison skipped: ${(e as Error).message.split("\n")[0]}`,
      };
    }
  }

  /** Options every ssh run uses: no user config, throwaway key, quiet. */
  private base(extra: string[] = []): string[] {
    return [
      this.sshBin,
      "-F",
      "/dev/null",
      "-o",
      "StrictHostKeyChecking=no",
      "-o",
      "UserKnownHostsFile=/dev/null",
      "-o",
      "BatchMode=yes",
      "-o",
      "IdentitiesOnly=yes",
      "-o",
      "LogLevel=ERROR",
      "-o",
      "ControlMaster=no",
      "-o",
      "ControlPath=none",
      "-i",
      join(this.dir, "user_key"),
      "-p",
      String(this.port),
      ...extra,
    ];
  }

  /**
   * argv of `ssh … 127.0.0.1 CMD`: `cmd` is a remote shell command line, or
   * an argv that is quoted for the remote shell (so it runs what tether runs directly).
   */
  argv(cmd: string[] | string, opts: { tty?: boolean; extra?: string[] } = {}): string[] {
    const line = typeof cmd === "string" ? cmd : cmd.map(shq).join(" ");
    return [
      ...this.base(opts.extra),
      opts.tty ? "-tt" : "-T",
      "127.0.0.1",
      ...(line ? [line] : []),
    ];
  }

  /** The per-connection processes (privileged monitor + session child, and below). */
  sessionPids(comm?: string): Promise<number[]> {
    return this.proc ? descendants(this.proc.pid, comm) : Promise.resolve([]);
  }

  async stop(): Promise<void> {
    if (this.proc) {
      // sshd -D does not end its sessions on SIGTERM; end them first.
      const kids = await descendants(this.proc.pid).catch(() => [] as number[]);
      for (const pid of kids) {
        try {
          Deno.kill(pid, "SIGTERM");
        } catch { /* gone */ }
      }
      await this.proc.stop();
      // The readiness probe's bare TCP connect makes sshd log a failed key exchange.
      const said = this.proc.stderr.split("\n").filter((l) =>
        l.trim() && !l.includes("kex_exchange_identification")
      );
      if (said.length) log(`sshd said: ${said.join("\n").slice(-500)}`);
    }
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
