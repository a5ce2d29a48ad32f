/**
 * `tether share MACHINE`: a link to a browser terminal on one session, served by the relay
 * (docs/PROTOCOL.md, "Share links"). `--list` and `--revoke ID` manage the workspace's links.
 */
import type { Command } from "@commander-js/extra-typings";
import { type MachineView, RelayClient, type StreamAuth } from "../client/relay_client.ts";
import { formatAge, parseDuration } from "../common/duration.ts";
import { machineOffline, TetherError, usage } from "../common/errors.ts";
import { shareLimitsProblem, shareLink, type ShareView } from "../protocol/share.ts";
import { decodeKey, encodeKey, generateKeyPair, toBase64Url } from "../protocol/e2e.ts";
import type { Open } from "../protocol/messages.ts";
import { type Act, clientConfig, collect, globals, withClient } from "./context.ts";
import { authFor, chooseMachine, chooseSession } from "./target.ts";
import { printJson, say, table } from "./output.ts";

function stateOf(s: ShareView, now: number): string {
  if (s.revoked_at !== null) return "revoked";
  if (s.expires_at <= now) return "expired";
  if (s.uses_left <= 0) return "used";
  return "active";
}

const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());

export function registerShare(program: Command, act: Act) {
  program.command("share")
    .description(
      "print a link that opens a session of MACHINE in a browser (served by the relay)",
    )
    .argument("[machine]", "machine id, name, hostname or unique prefix")
    .option("--session <id>", "share this session")
    .option("--new", "start a new session to share")
    .option("--read-only", "the page may watch, not type")
    .option("--ttl <dur>", "how long the link may be opened (e.g. 30m, 1d; at most 7d)", "1h")
    .option("--uses <n>", "how many pages may join with it", "1")
    .option("--list", "list the workspace's links")
    .option("--revoke <id>", "revoke a link: refused from now on, its pages cut within 2 s")
    .option("-l, --selector <k=v>", "pick by label; repeatable", collect, [] as string[])
    .option("--first", "with -l: take the first online match instead of asking")
    .option("--password <password>", "the machine's password (also: stored, TETHER_PASSWORD)")
    .action(act(async (machine, opts, cmd) => {
      const g = globals(cmd);
      if (opts.list || opts.revoke) {
        if (machine || opts.session || opts.new) {
          throw usage("--list and --revoke take no machine or session");
        }
        if (opts.revoke) {
          const id = opts.revoke;
          await withClient(g, (c) => c.request("share_revoke", { id }));
          if (g.json) printJson({ id, revoked: true });
          else console.log(`revoked share link ${id}`);
          return;
        }
        const [list, machines] = await withClient(
          g,
          (c) => Promise.all([c.request<ShareView[]>("share_list"), c.machines({ retired: true })]),
        );
        return printList(list, machines, g.json);
      }
      if (opts.session && opts.new) throw usage("--session and --new exclude each other");
      const ttlMs = parseDuration(opts.ttl, "--ttl");
      const uses = Number(opts.uses);
      const problem = shareLimitsProblem(ttlMs, uses);
      if (problem) throw usage(problem);
      const cfg = clientConfig(g);
      const client = await RelayClient.connect(cfg);
      try {
        const { machine: target } = await chooseMachine(client, g, machine, opts);
        if (!target.online) throw machineOffline(target, formatAge(target.heartbeat_age_ms));
        let session = opts.session;
        if (session) {
          const live = await client.sessions(target.id, "pty");
          const hits = live.filter((s) => s.id === session || s.id.startsWith(session!));
          if (hits.length !== 1) {
            throw new TetherError(
              "session_not_found",
              hits.length
                ? `'${session}' matches ${hits.length} sessions on ${target.name}`
                : `no session '${session}' on ${target.name}`,
              { hint: `list them with \`tether sessions ${target.name}\`, or pass --new` },
            );
          }
          session = hits[0].id;
        } else if (!opts.new) {
          const live = await client.sessions(target.id, "pty");
          if (live.length === 1) session = live[0].id;
          else if (live.length > 1) session = await chooseSession(g, target, live);
        }
        // End to end: the page gets a key of its own, which the agent admits to this session
        // only (the grant goes sealed in the open below), and the machine's key to pin; both
        // ride in the link's fragment, which the relay never sees.
        const page = client.endToEnd && target.key ? generateKeyPair() : undefined;
        const grant = page
          ? { key: encodeKey(page.pub), read_only: !!opts.readOnly, expires_ms: ttlMs }
          : undefined;
        // The session must outlive the link: started (or joined) once with the link's
        // lifetime as its hold, it waits that long for the page.
        session = await holdSession(
          client,
          target,
          session,
          ttlMs,
          authFor(cfg, client, target, opts.password, g),
          grant,
        );
        const made = await client.request<ShareView & { token: string }>("share_create", {
          machine: target.id,
          session,
          read_only: !!opts.readOnly,
          ttl_ms: ttlMs,
          uses,
        });
        const link = shareLink(
          client.relay,
          page
            ? `${made.token}.${toBase64Url(page.priv)}.${toBase64Url(decodeKey(target.key!)!)}`
            : made.token,
        );
        if (g.json) {
          printJson({
            link,
            id: made.id,
            machine: target.name,
            machine_id: target.id,
            session,
            read_only: made.read_only,
            uses: made.uses_left,
            expires_at: iso(made.expires_at),
          });
          return;
        }
        console.log(link);
        say(
          `share link ${made.id}: session ${session} on ${target.name}` +
            `${made.read_only ? ", read-only" : ""}, ${uses} use${uses === 1 ? "" : "s"}, ` +
            `expires in ${formatAge(ttlMs)}. ` +
            `Revoke: tether share --revoke ${made.id}`,
        );
      } finally {
        client.close();
      }
    }));
}

/**
 * Starts a session (`session` undefined) or joins one, asking the agent to keep it `holdMs`
 * without clients, and leaves at once; returns its id. The join takes a one-byte window:
 * it wants the `started`, not the screen.
 */
function holdSession(
  client: RelayClient,
  target: MachineView,
  session: string | undefined,
  holdMs: number,
  auth: StreamAuth,
  grant?: Open["grant"],
): Promise<string> {
  return new Promise((resolve, reject) => {
    const sid = client.open({
      machine: target.id,
      kind: "pty",
      argv: [],
      stdin: false,
      window: 1,
      hold_ms: holdMs,
      ...(session ? { session } : {}),
      ...(grant ? { grant } : {}),
    }, {
      onStarted(msg) {
        client.closeStream(sid, "detach");
        resolve(msg.session ?? session ?? "");
      },
      onData() {},
      onCredit() {},
      onExit() {
        reject(new TetherError("session_not_found", `the session on ${target.name} ended`));
      },
      onError(err) {
        reject(new TetherError(err.code, err.message, { hint: err.hint }));
      },
    }, auth);
  });
}

function printList(list: ShareView[], machines: MachineView[], json: boolean): void {
  const now = Date.now();
  const names = new Map(machines.map((m) => [m.id, m.name]));
  if (json) {
    printJson(list.map((s) => ({
      id: s.id,
      machine: names.get(s.machine_id) ?? null,
      machine_id: s.machine_id,
      session: s.session,
      read_only: s.read_only,
      uses_left: s.uses_left,
      state: stateOf(s, now),
      created_by: s.created_by,
      created_at: iso(s.created_at),
      expires_at: iso(s.expires_at),
      revoked_at: iso(s.revoked_at),
    })));
    return;
  }
  if (list.length === 0) {
    console.error("no share links");
    return;
  }
  console.log(table(
    ["ID", "MACHINE", "SESSION", "MODE", "USES LEFT", "STATE", "EXPIRES", "BY"],
    list.map((s) => [
      s.id,
      names.get(s.machine_id) ?? s.machine_id.slice(0, 8),
      s.session,
      s.read_only ? "read-only" : "read-write",
      String(s.uses_left),
      stateOf(s, now),
      s.expires_at > now
        ? `in ${formatAge(s.expires_at - now)}`
        : `${formatAge(now - s.expires_at)} ago`,
      s.created_by,
    ]),
  ));
}
