/**
 * The interactive attach with its banner (README "tether connect"): `dialing relay …
 * ok`, `auth … ok (session ID, new|joined)`, then `attached — …` once the remote side is
 * ready. Shared by `tether connect` and `tether ci attach`.
 */
import {
  attach,
  type AttachOutcome,
  CTRL_D,
  detachKeyName,
  processTerminal,
  type Terminal,
} from "../client/attach.ts";
import type { ClientConfig } from "../client/config.ts";
import type { RelayClient, StreamAuth } from "../client/relay_client.ts";
import { say } from "./output.ts";
import type { RemoteSpec } from "../protocol/messages.ts";

export interface BannerAttachOptions {
  /** Join this session; otherwise a new one starts. */
  session?: string;
  readOnly?: boolean;
  /** Answers the machine's password challenge. */
  auth?: StreamAuth;
  /** Default: the process's own terminal. */
  term?: Terminal;
  /** The byte that detaches (default Ctrl-D); null: none. */
  detachKey?: number | null;
  /** tether ssh: a new session's shell as another user. */
  remote?: RemoteSpec;
  /** Called right after the `attached —` line, before any remote output is shown. */
  afterAttached?: (status: (line: string) => void) => void;
}

export async function attachWithBanner(
  cfg: ClientConfig,
  client: RelayClient,
  target: { id: string; name: string },
  opts: BannerAttachOptions = {},
): Promise<AttachOutcome> {
  const status = say;
  // The relay connection is up by now (the machine was resolved through it); what can
  // still fail is the machine's side: the session, the password.
  status("dialing relay ... ok");
  say("auth ... ", "");
  let announced = false;
  // A first pin of the machine's key is said after the auth line, not in the middle of it.
  const pinned: string[] = [];
  client.onPinned = (name, fp) => pinned.push(`pinned ${name}'s end-to-end key ${fp} (first use)`);
  return await attach(
    cfg,
    client,
    {
      machineId: target.id,
      machineName: target.name,
      session: opts.session,
      readOnly: opts.readOnly,
      auth: opts.auth,
      detachKey: opts.detachKey,
      remote: opts.remote,
    },
    opts.term ?? processTerminal(),
    {
      onStarted(id) {
        announced = true;
        status(`ok (session ${id}${opts.session ? ", joined" : ", new"})`);
        for (const line of pinned.splice(0)) status(line);
        const key = opts.detachKey === undefined ? CTRL_D : opts.detachKey;
        const leave = key === null
          ? "no detach key (--detach-key none): end the remote shell to leave"
          : `${detachKeyName(key)} to disconnect`;
        status(
          opts.readOnly
            ? `attached read-only — ${leave}; your input is not sent`
            : `attached — ${leave}, Ctrl-C is sent to the remote`,
        );
        opts.afterAttached?.(status);
      },
    },
  ).catch((e) => {
    if (!announced) status("failed");
    throw e;
  });
}
