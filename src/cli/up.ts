/**
 * `tether up`: the embedded default. One foreground process holding a relay
 * on 127.0.0.1, an agent for this machine, and a client config pointing at
 * them, so `tether machines` works in another terminal with no flags.
 */
import type { Command } from "@commander-js/extra-typings";
import { join } from "node:path";
import { IDENTITY_FILE, loadIdentity } from "../agent/identity.ts";
import { configDir, readStoredConfig, writeStoredConfig } from "../client/config.ts";
import { defaultDataDir } from "../common/paths.ts";
import { parseKey } from "../protocol/keys.ts";
import type { Store } from "../relay/store.ts";
import { type Act, globals, parseListen, untilSignal } from "./context.ts";
import { DEFAULT_LISTEN } from "./relay.ts";
import { printJson } from "./output.ts";

const WORKSPACE = "default";

export function registerUp(program: Command, act: Act) {
  program.command("up")
    .description("run a local relay and an agent for this machine, and point the client at them")
    .option("--listen <host:port>", "relay address", DEFAULT_LISTEN)
    .option("--data-dir <dir>", "where the relay and agent keep their state")
    .option("--name <name>", "this machine's name (default: the hostname)")
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      const dataDir = opts.dataDir || defaultDataDir();
      const stateDir = join(dataDir, "agent");
      const { hostname, port } = parseListen(opts.listen);
      const [{ startRelay }, { Agent }] = await Promise.all([
        import("../relay/server.ts"),
        import("../agent/agent.ts"),
      ]);
      const relay = await startRelay({ hostname, port, dataDir: join(dataDir, "relay") });
      await relay.store.ensureWorkspace(WORKSPACE);

      const cfgDir = configDir(g);
      const stored = readStoredConfig(cfgDir);
      // The stored key is reused while this relay accepts it, even if the port changed.
      const apiKey = await reusableClientKey(relay.store, stored.api_key) ??
        (await relay.store.createKey(WORKSPACE, "client")).key;
      const cfgPath = writeStoredConfig(cfgDir, { relay: relay.url, api_key: apiKey });

      const enrollKey = await agentNeedsKey(relay.store, stateDir)
        ? (await relay.store.createKey(WORKSPACE, "agent")).key
        : undefined;
      let announced = false;
      const agent = new Agent({
        relay: relay.url,
        enrollKey,
        stateDir,
        name: opts.name,
        bindIdentityToRelay: false,
        log: (l) => console.error(`agent: ${l}`),
        onOnline(m) {
          if (announced) return;
          announced = true;
          if (g.json) {
            printJson({ relay: relay.url, machine: m, config: cfgPath, data_dir: dataDir });
          } else {
            console.log(
              `tether is up: relay ${relay.url}, machine ${m.name} (${m.id.slice(0, 8)}) online`,
            );
            console.error(
              `client config written to ${cfgPath}; try \`tether machines\` ` +
                `or \`tether exec ${m.name} -- uname -a\` in another terminal. Ctrl-C stops.`,
            );
          }
        },
      });
      const stopped = untilSignal();
      const running = agent.run();
      await Promise.race([stopped, running, relay.finished]);
      await agent.stop();
      await relay.shutdown();
      await running.catch(() => {});
    }));
}

/** The configured client key if this relay still accepts it. */
async function reusableClientKey(
  store: Store,
  key: string | undefined,
): Promise<string | undefined> {
  const parsed = key ? parseKey(key) : null;
  const p = parsed ? await store.authenticate(parsed) : null;
  return p?.kind === "client" && p.workspace === WORKSPACE ? key : undefined;
}

/** Whether the local agent must enroll (no identity, or one this relay no longer knows). */
async function agentNeedsKey(store: Store, stateDir: string): Promise<boolean> {
  const id = loadIdentity(stateDir);
  if (!id) return true;
  const known = await store.authenticate({ kind: "machine", id: id.id, secret: id.secret });
  if (known) return false;
  Deno.removeSync(join(stateDir, IDENTITY_FILE));
  return true;
}
