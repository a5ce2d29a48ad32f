/** `tether relay serve|init|keys …`: run a relay, and offline admin on its data dir. */
import type { Command } from "@commander-js/extra-typings";
import { join } from "node:path";
import { formatAge, parseDuration } from "../common/duration.ts";
import { TetherError, usage } from "../common/errors.ts";
import { defaultDataDir } from "../common/paths.ts";
import type { Store } from "../relay/store.ts";
import { MIN_FLEET_SECRET } from "../relay/fleet.ts";
import { relayBase } from "../protocol/dial.ts";
import { HEARTBEAT_MS } from "../protocol/conn.ts";
import { type Act, collect, globals, parseListen, untilSignal } from "./context.ts";
import { printJson, table } from "./output.ts";

/**
 * The relay's own modules (its server, its stores with their drivers, metrics, TLS) are
 * imported when a relay command runs, so that a client's start does not evaluate them
 * (docs/BENCHMARKS.md item 4). The specifiers are literals: `deno bundle` and
 * `deno compile` still include the modules.
 */
const server = () => import("../relay/server.ts");
const stores = () => import("../relay/open_store.ts");

export const DEFAULT_LISTEN = "127.0.0.1:7420";

export function defaultRelayDataDir(): string {
  return join(defaultDataDir(), "relay");
}

/** Runs `fn` on the relay's store (offline admin), closed afterwards whatever happens. */
async function withStore<T>(
  opts: { dataDir?: string; store?: string },
  fn: (store: Store) => Promise<T>,
): Promise<T> {
  const { openStore } = await stores();
  const store = await openStore(storeSpec(opts), opts.dataDir || defaultRelayDataDir());
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const STORE_HELP = "PostgreSQL URL shared by a fleet of relays (env TETHER_STORE, which keeps " +
  "the password out of ps); default: SQLite in --data-dir";

function storeSpec(opts: { store?: string }): string | undefined {
  return opts.store || Deno.env.get("TETHER_STORE") || undefined;
}

/** `--idle-heartbeat`: at least the heartbeat of a link in use, at most an hour. */
function idleHeartbeat(text: string): number {
  const ms = parseDuration(text, "--idle-heartbeat");
  if (ms < HEARTBEAT_MS || ms > 3_600_000) {
    throw usage(`--idle-heartbeat must be between 2s and 1h, not '${text}'`);
  }
  return ms;
}

/** The fleet secret from --fleet-secret-file, else TETHER_FLEET_SECRET; checked for length. */
function fleetSecret(file: string | undefined): string | undefined {
  let secret: string | undefined;
  if (file) {
    try {
      secret = Deno.readTextFileSync(file).trim();
    } catch (e) {
      throw usage(`cannot read --fleet-secret-file ${file}: ${(e as Error).message}`);
    }
  } else {
    secret = Deno.env.get("TETHER_FLEET_SECRET")?.trim() || undefined;
  }
  if (secret !== undefined && secret.length < MIN_FLEET_SECRET) {
    throw usage(`the fleet secret must be at least ${MIN_FLEET_SECRET} characters`);
  }
  return secret;
}

export function registerRelay(program: Command, act: Act) {
  const relay = program.command("relay").description("run a relay, or administer its data dir");

  relay.command("serve")
    .description("run a relay")
    .option("--listen <host:port>", "address to listen on", DEFAULT_LISTEN)
    .option("--data-dir <dir>", "where the relay keeps its SQLite state")
    .option("--store <url>", STORE_HELP)
    .option("--tls-cert <file>", "PEM certificate; serves wss:// with --tls-key")
    .option("--tls-key <file>", "PEM private key")
    .option(
      "--tls-self-signed",
      "serve wss:// with a private CA made and kept in the data dir; prints its fingerprint " +
        "for `tether login --fingerprint`",
    )
    .option(
      "--tls-name <name>",
      "with --tls-self-signed: another DNS name or IP the certificate must carry; repeatable",
      collect,
      [] as string[],
    )
    .option("--prune-after <dur>", "forget machines offline this long (0: never)", "7d")
    .option(
      "--idle-heartbeat <dur>",
      "probe an agent with nothing open after this much silence (one that hangs, or vanishes " +
        "behind a proxy, shows offline up to 6 s after that; one whose host vanished, within " +
        "30 s by TCP keepalive; with a stream open, within 6 s; keep it under the idle timeout " +
        "of any proxy in front of the relay)",
      "45s",
    )
    .option(
      "--fleet-secret-file <file>",
      "with --store: the secret the relays of one fleet share (else env TETHER_FLEET_SECRET)",
    )
    .option(
      "--advertise <url>",
      "with --store: how the other relays of the fleet reach this one (default: its own " +
        "ws:// or wss:// address)",
    )
    .option(
      "--public-url <url>",
      "the URL browsers reach this relay at (behind a proxy): share pages from any other " +
        "origin are refused (default: the host the page was loaded from)",
    )
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      if (!!opts.tlsCert !== !!opts.tlsKey) throw usage("--tls-cert and --tls-key go together");
      if (opts.tlsSelfSigned && opts.tlsCert) {
        throw usage("--tls-self-signed and --tls-cert exclude each other");
      }
      const { hostname, port } = parseListen(opts.listen);
      const dataDir = opts.dataDir || defaultRelayDataDir();
      const self = opts.tlsSelfSigned
        ? await (await import("../relay/tls_self_signed.ts")).selfSignedTls(dataDir, [
          ...(["0.0.0.0", "::", ""].includes(hostname) ? [] : [hostname]),
          ...opts.tlsName,
        ])
        : undefined;
      const spec = storeSpec(opts);
      const secret = fleetSecret(opts.fleetSecretFile);
      if (spec && !secret) {
        throw usage(
          "relays on a shared --store need the fleet's secret",
          "set TETHER_FLEET_SECRET (the same on every relay; e.g. `openssl rand -hex 32`) or " +
            "pass --fleet-secret-file",
        );
      }
      if (!spec && (secret || opts.advertise)) {
        throw usage("--advertise and a fleet secret go with --store postgres://…");
      }
      if (opts.advertise) relayBase(opts.advertise);
      if (opts.publicUrl && !/^(https?|wss?):\/\/[^/]+/.test(opts.publicUrl)) {
        throw usage(`invalid --public-url '${opts.publicUrl}'`, "e.g. https://relay.example.com");
      }
      const [{ openStore, storeLabel }, { startRelay }] = await Promise.all([stores(), server()]);
      const store = await openStore(spec, dataDir);
      const r = await startRelay({
        hostname,
        port,
        dataDir,
        store,
        tls: self,
        tlsCert: opts.tlsCert,
        tlsKey: opts.tlsKey,
        pruneAfterMs: parseDuration(opts.pruneAfter, "--prune-after"),
        idleHeartbeatMs: idleHeartbeat(opts.idleHeartbeat),
        publicUrl: opts.publicUrl,
        fleet: secret
          ? {
            secret,
            advertise: opts.advertise,
            caFile: g.caFile || Deno.env.get("TETHER_CA_FILE"),
          }
          : undefined,
      });
      if (g.json) {
        printJson({
          listening: r.url,
          data_dir: r.dataDir,
          store: store.kind,
          ...(r.relayId ? { relay_id: r.relayId, advertise: r.advertise } : {}),
          ...(self
            ? { fingerprint: self.fingerprint, ca_file: self.caFile, names: self.names }
            : {}),
        });
      } else {
        console.log(`relay listening on ${r.url}`);
        console.error(`store: ${storeLabel(store, dataDir)}`);
        if (r.relayId) {
          console.error(`fleet: relay ${r.relayId}, reached by the others at ${r.advertise}`);
          const problem = advertiseProblem(r.advertise!);
          if (problem) console.error(`fleet: warning: ${problem}`);
        }
        if (self) {
          console.error(
            `TLS: private CA ${self.fingerprint} (certificate: ${self.caFile}); ` +
              `valid for ${self.names.join(", ")}\n` +
              `clients: tether login --relay wss://HOST:${r.port} --fingerprint ${self.fingerprint}\n` +
              `agents:  tether agent run --relay wss://HOST:${r.port} --ca-file <a copy of ${self.caFile}>`,
          );
        }
      }
      await Promise.race([untilSignal(), r.finished]);
      await r.shutdown();
    }));

  relay.command("init")
    .description("create a workspace (default: 'default') and mint one client and one agent key")
    .option("--data-dir <dir>", "the relay's data dir")
    .option("--store <url>", STORE_HELP)
    .option("--workspace <name>", "workspace name", "default")
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      await withStore(opts, async (store) => {
        await store.ensureWorkspace(opts.workspace);
        const client = await store.createKey(opts.workspace, "client");
        const agent = await store.createKey(opts.workspace, "agent");
        if (g.json) {
          printJson({ workspace: opts.workspace, client_key: client.key, agent_key: agent.key });
        } else {
          console.log(`workspace: ${opts.workspace}`);
          console.log(`client key (for tether login / TETHER_API_KEY): ${client.key}`);
          console.log(`agent key (for TETHER_AGENT_KEY):               ${agent.key}`);
          console.error("These keys are shown once; the relay stores only their hashes.");
        }
      });
    }));

  relay.command("audit")
    .description("show the audit log: every exec and attach, who, where, bytes, exit")
    .option("--data-dir <dir>", "the relay's data dir")
    .option("--store <url>", STORE_HELP)
    .option("--limit <n>", "newest N entries", "1000")
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      const limit = Number(opts.limit);
      if (!Number.isInteger(limit) || limit < 1) throw usage(`invalid --limit '${opts.limit}'`);
      await withStore(opts, async (store) => {
        const rows = await store.listAudit(limit);
        const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
        if (g.json) {
          printJson(
            rows.map((r) => ({ ...r, started_at: iso(r.started_at), ended_at: iso(r.ended_at) })),
          );
          return;
        }
        console.log(table(
          [
            "STARTED",
            "KEY",
            "FROM",
            "MACHINE",
            "KIND",
            "COMMAND",
            "SECONDS",
            "IN",
            "OUT",
            "RESULT",
          ],
          rows.map((r) => [
            iso(r.started_at)!.replace(/\.\d+Z$/, "Z"),
            r.key_id,
            r.remote ?? "-",
            r.machine_name,
            r.read_only ? `${r.kind} (read-only)` : r.kind,
            r.sealed
              ? `(sealed${r.session ? `, session ${r.session}` : ""})`
              : r.argv
              ? r.argv.join(" ")
              : r.session
              ? `session ${r.session}`
              : "shell",
            r.ended_at ? ((r.ended_at - r.started_at) / 1000).toFixed(1) : "running",
            String(r.bytes_in),
            String(r.bytes_out),
            r.error ??
              (r.exit_code !== null
                ? `exit ${r.exit_code}`
                : r.sealed && r.ended_at
                ? "ended"
                : "-"),
          ]),
        ));
      });
    }));

  const keys = relay.command("keys").description("manage API and enrollment keys");

  keys.command("create")
    .description("mint a key for a workspace")
    .requiredOption("--workspace <name>", "workspace the key belongs to")
    .requiredOption("--role <role>", "client or agent")
    .option("--data-dir <dir>", "the relay's data dir")
    .option("--store <url>", STORE_HELP)
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      const role = opts.role;
      if (role !== "client" && role !== "agent") {
        throw usage(`--role must be client or agent, not '${role}'`);
      }
      await withStore(opts, async (store) => {
        const k = await store.createKey(opts.workspace, role);
        if (g.json) printJson({ id: k.id, key: k.key, role: k.role, workspace: k.workspace });
        else {
          console.log(k.key);
          console.error(`key ${k.id} (${k.role}, workspace ${k.workspace}); shown once`);
        }
      });
    }));

  keys.command("list")
    .description("list keys (never their secrets)")
    .option("--data-dir <dir>", "the relay's data dir")
    .option("--store <url>", STORE_HELP)
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      await withStore(opts, async (store) => {
        const rows = await store.listKeys();
        const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
        if (g.json) {
          printJson(rows.map((k) => ({
            id: k.id,
            workspace: k.workspace,
            role: k.role,
            created_at: iso(k.created_at),
            revoked: k.revoked_at !== null,
            revoked_at: iso(k.revoked_at),
            last_used_at: iso(k.last_used_at),
          })));
          return;
        }
        const now = Date.now();
        console.log(table(
          ["ID", "WORKSPACE", "ROLE", "CREATED", "LAST USED", "STATUS"],
          rows.map((k) => [
            k.id,
            k.workspace,
            k.role,
            `${formatAge(now - k.created_at)} ago`,
            k.last_used_at ? `${formatAge(now - k.last_used_at)} ago` : "never",
            k.revoked_at ? "revoked" : "active",
          ]),
        ));
      });
    }));

  keys.command("revoke")
    .description("revoke a key: refused from now on, its connections closed")
    .argument("<id>", "key id (see `relay keys list`)")
    .option("--data-dir <dir>", "the relay's data dir")
    .option("--store <url>", STORE_HELP)
    .action(act(async (id, opts, cmd) => {
      const g = globals(cmd);
      await withStore(opts, async (store) => {
        if (!(await store.revokeKey(id))) {
          throw new TetherError("usage", `no key with id '${id}'`, {
            hint: "list keys with `tether relay keys list`",
          });
        }
        if (g.json) printJson({ id, revoked: true });
        else console.log(`revoked key ${id}`);
      });
    }));
}

/** What is wrong with how the other relays are told to reach this one, if anything. */
export function advertiseProblem(advertise: string): string | undefined {
  let u: URL;
  try {
    u = new URL(advertise);
  } catch {
    return `--advertise ${advertise} is not a URL`;
  }
  const host = u.hostname.replace(/^\[|\]$/g, "");
  if (host === "0.0.0.0" || host === "::") {
    return `the others cannot reach ${advertise}; pass --advertise ws[s]://THIS-HOST:PORT`;
  }
  const loopback = host === "localhost" || host === "::1" || host.startsWith("127.");
  if (u.protocol === "ws:" && !loopback) {
    return `relays will reach each other over plain ${advertise}: the fleet's streams cross ` +
      "the network unencrypted; advertise a wss:// URL across machines";
  }
  return undefined;
}
