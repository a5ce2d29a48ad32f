/**
 * The interactive attach with its banner (DESIGN "Interactive attach"): `dialing relay …
 * ok`, `auth … ok (session ID, new|joined)`, then `attached — …` once the remote side is
 * ready. Shared by `tether connect` and `tether ci attach`.
 */
import { attach, type AttachOutcome, processTerminal, type Terminal } from "../client/attach.ts";
import type { ClientConfig } from "../client/config.ts";
import type { RelayClient, StreamAuth } from "../client/relay_client.ts";
import { say } from "./output.ts";

export interface BannerAttachOptions {
  /** Join this session; otherwise a new one starts. */
  session?: string;
  readOnly?: boolean;
  /** Answers the machine's password challenge. */
  auth?: StreamAuth;
  /** Default: the process's own terminal. */
  term?: Terminal;
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
  say("dialing relay ... ", "");
  let announced = false;
  return await attach(
    cfg,
    client,
    {
      machineId: target.id,
      machineName: target.name,
      session: opts.session,
      readOnly: opts.readOnly,
      auth: opts.auth,
    },
    opts.term ?? processTerminal(),
    {
      onStarted(id) {
        announced = true;
        status("ok");
        status(`auth ... ok (session ${id}${opts.session ? ", joined" : ", new"})`);
        status(
          opts.readOnly
            ? "attached read-only — Ctrl-D to disconnect; your input is not sent"
            : "attached — Ctrl-D to disconnect, Ctrl-C is sent to the remote",
        );
        opts.afterAttached?.(status);
      },
    },
  ).catch((e) => {
    if (!announced) status("failed");
    throw e;
  });
}
