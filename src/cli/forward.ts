/**
 * `tether forward MACHINE [BIND:]LOCAL_PORT:HOST:PORT…` listens here and carries each TCP
 * connection to HOST:PORT as seen from the machine (as `ssh -L`); `tether proxy MACHINE
 * HOST:PORT` carries stdin/stdout to one such connection (for ssh's ProxyCommand).
 * Every connection is its own stream on one relay connection; one failing leaves the others.
 */
import type { Command } from "@commander-js/extra-typings";
import { forwardStream, type LocalEnd } from "../client/forward.ts";
import { type MachineView, RelayClient } from "../client/relay_client.ts";
import { processOutput } from "../client/stdout.ts";
import { openBulkStdin } from "../client/stdin.ts";
import { machineOffline, TetherError, usage } from "../common/errors.ts";
import { parseTarget } from "../protocol/target.ts";
import { MAX_STREAMS_PER_CONN } from "../protocol/messages.ts";
import { type Act, clientConfig, type Globals, globals } from "./context.ts";
import { asTetherError, printJson, say } from "./output.ts";
import { authFor, chooseMachine } from "./target.ts";

export interface ForwardSpec {
  bind: string;
  port: number;
  /** HOST:PORT on the machine's side. */
  target: string;
}

/** Splits at colons outside `[…]` (IPv6 addresses); undefined when brackets are unbalanced. */
function splitColons(s: string): string[] | undefined {
  const parts: string[] = [];
  let i = 0;
  while (i <= s.length) {
    if (s[i] === "[") {
      const j = s.indexOf("]", i);
      if (j < 0 || (j + 1 < s.length && s[j + 1] !== ":")) return undefined;
      parts.push(s.slice(i, j + 1));
      i = j + 2;
    } else {
      const j = s.indexOf(":", i);
      const stop = j < 0 ? s.length : j;
      parts.push(s.slice(i, stop));
      i = stop + 1;
    }
  }
  return parts;
}

/** `[BIND:]LOCAL_PORT:HOST:PORT`, with `[v6]` brackets where a part has colons. */
export function parseForwardSpec(spec: string): ForwardSpec {
  const bad = () =>
    usage(
      `not a forward: '${spec}'`,
      "give [BIND:]LOCAL_PORT:HOST:PORT, e.g. 5432:localhost:5432 or 0.0.0.0:8080:web:80",
    );
  const parts = splitColons(spec);
  if (!parts || (parts.length !== 3 && parts.length !== 4)) throw bad();
  const [bind, port, host, hostPort] = parts.length === 4 ? parts : ["127.0.0.1", ...parts];
  const local = Number(port);
  if (!/^\d+$/.test(port) || local > 65535 || !bind) throw bad();
  const target = `${host}:${hostPort}`;
  if (!parseTarget(target)) throw bad();
  return { bind: bind.replace(/^\[(.*)\]$/, "$1"), port: local, target };
}

async function resolveTarget(
  g: Globals,
  client: RelayClient,
  machine: string,
): Promise<MachineView> {
  const { machine: target } = await chooseMachine(client, g, machine, {});
  if (!target.online) throw machineOffline(target);
  return target;
}

export function registerForward(program: Command, act: Act) {
  program.command("forward")
    .description(
      "forward local ports to HOST:PORT as seen from a machine (as ssh -L), until Ctrl-C",
    )
    .argument("<machine>", "machine id, name, hostname or unique prefix")
    .argument("<forwards...>", "[BIND:]LOCAL_PORT:HOST:PORT (LOCAL_PORT 0 picks a free one)")
    .option("--password <password>", "the machine's password (also: stored, TETHER_PASSWORD)")
    .addHelpText(
      "after",
      `
  tether forward db-1 5432:localhost:5432          psql -h 127.0.0.1 reaches db-1's postgres
  tether forward web 0:localhost:8080 --json       prints the port it listens on
BIND defaults to 127.0.0.1. Each connection is its own stream; one failing leaves the
others. With --json, one line {"forwards":[{"bind","port","target"}…]} once listening.`,
    )
    .action(act(async (machine, specs, opts, cmd) => {
      const g = globals(cmd);
      const forwards = specs.map(parseForwardSpec);
      const cfg = clientConfig(g);
      let client = await RelayClient.connect(cfg);
      const target = await resolveTarget(g, client, machine);
      const auth = authFor(cfg, client, target, opts.password, g);
      const listeners: Deno.TcpListener[] = [];
      try {
        for (const f of forwards) {
          try {
            listeners.push(Deno.listen({ hostname: f.bind, port: f.port }));
          } catch (e) {
            throw new TetherError(
              "usage",
              `cannot listen on ${f.bind}:${f.port}: ${(e as Error).message}`,
              { hint: "pick another local port (0 picks a free one)" },
            );
          }
        }
      } catch (e) {
        for (const l of listeners) l.close();
        client.close();
        throw e;
      }
      const bound = forwards.map((f, i) => ({
        bind: f.bind,
        port: (listeners[i].addr as Deno.NetAddr).port,
        target: f.target,
      }));
      if (g.json) printJson({ machine: target.name, machine_id: target.id, forwards: bound });
      else {
        for (const b of bound) {
          say(`forwarding ${b.bind}:${b.port} → ${target.name} → ${b.target} (Ctrl-C to stop)`);
        }
      }
      // One relay connection carries every forwarded connection; a new one is made for
      // the next connection if it went away.
      let connecting: Promise<RelayClient> | undefined;
      const relay = async () => {
        if (client.conn.isOpen) return client;
        connecting ??= RelayClient.connect(cfg).then((c) => (client = c)).finally(() => {
          connecting = undefined;
        });
        return await connecting;
      };
      // A relay connection carries at most MAX_STREAMS_PER_CONN streams: connections past
      // that wait here for a place (a pool of 300 is served, 256 at a time).
      let active = 0;
      const waiting: (() => void)[] = [];
      const place = async () => {
        while (active >= MAX_STREAMS_PER_CONN) await new Promise<void>((r) => waiting.push(r));
        active++;
      };
      const leave = () => {
        active--;
        waiting.shift()?.();
      };
      const serve = async (l: Deno.TcpListener, f: (typeof bound)[number]) => {
        for await (const conn of l) {
          conn.setNoDelay(true);
          place().then(async () => {
            try {
              await forwardStream(
                await relay(),
                { machineId: target.id, target: f.target, auth },
                conn,
              );
            } finally {
              leave();
            }
          }).catch((e) => {
            const err = asTetherError(e);
            say(`tether: ${f.bind}:${f.port} → ${f.target}: ${err.message}`);
          }).finally(() => {
            try {
              conn.close();
            } catch { /* closed already */ }
          });
        }
      };
      const stopped = new Promise<void>((resolve) => {
        for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
          Deno.addSignalListener(sig, () => resolve());
        }
      });
      const serving = listeners.map((l, i) => serve(l, bound[i]).catch(() => {}));
      await stopped;
      for (const l of listeners) l.close();
      await Promise.all(serving);
      client.close();
      return 0;
    }, { failure: 255 }));

  program.command("proxy")
    .description(
      "carry stdin/stdout to HOST:PORT as seen from a machine (ssh -o ProxyCommand='tether proxy %n %h:%p')",
    )
    .argument("<machine>", "machine id, name, hostname or unique prefix")
    .argument("<target>", "HOST:PORT, as seen from the machine")
    .option("--password <password>", "the machine's password (also: stored, TETHER_PASSWORD)")
    .action(act(async (machine, target, opts, cmd) => {
      const g = globals(cmd);
      if (!parseTarget(target)) {
        throw usage(`not a HOST:PORT: '${target}'`, "e.g. tether proxy box localhost:22");
      }
      const cfg = clientConfig(g);
      const client = await RelayClient.connect(cfg);
      try {
        const m = await resolveTarget(g, client, machine);
        const out = processOutput(1);
        // When the far end has closed its half and all it sent is written, we end: Deno
        // cannot close its own stdout, and the program reading it (ssh) waits for its end.
        let farEnded!: () => void;
        const ended = new Promise<void>((resolve) => (farEnded = resolve));
        const stdin = openBulkStdin();
        const local: LocalEnd = {
          read: (buf) => stdin.read(buf),
          write: (p) => out.write(p),
          closeWrite: () => Promise.resolve(farEnded()),
        };
        await Promise.race([
          forwardStream(client, {
            machineId: m.id,
            target,
            auth: authFor(cfg, client, m, opts.password, g),
          }, local),
          ended,
        ]);
        return 0;
      } finally {
        client.close();
      }
    }, { failure: 255 }));
}
