/** `tether login` / `tether logout`: keep the relay URL and API key in the config dir. */
import type { Command } from "@commander-js/extra-typings";
import { join } from "node:path";
import { CONFIG_FILE, configDir, writeStoredConfig } from "../client/config.ts";
import { RelayClient } from "../client/relay_client.ts";
import { TetherError } from "../common/errors.ts";
import { globals } from "./context.ts";
import { printJson } from "./output.ts";

export function registerLogin(program: Command) {
  program.command("login")
    .description("check and store the relay URL and API key (config file, mode 0600)")
    .action(async (_opts, cmd) => {
      const g = globals(cmd);
      const relay = g.relay || Deno.env.get("TETHER_RELAY");
      const apiKey = g.apiKey || Deno.env.get("TETHER_API_KEY");
      if (!relay || !apiKey) {
        throw new TetherError("usage", "login needs a relay URL and an API key", {
          hint: "tether login --relay wss://relay.example.com --api-key tether_client_…",
        });
      }
      const caFile = g.caFile || Deno.env.get("TETHER_CA_FILE") || undefined;
      const client = await RelayClient.connect({ relay, apiKey, caFile, configDir: "" });
      const workspace = client.workspace;
      client.close();
      const path = writeStoredConfig(configDir(g), {
        relay,
        api_key: apiKey,
        ...(caFile ? { ca_file: caFile } : {}),
      });
      if (g.json) printJson({ relay, workspace, config: path });
      else console.log(`logged in to ${relay} (workspace ${workspace}); saved to ${path}`);
    });

  program.command("logout")
    .description("remove the stored relay URL and API key")
    .action((_opts, cmd) => {
      const g = globals(cmd);
      const path = join(configDir(g), CONFIG_FILE);
      let removed = true;
      try {
        Deno.removeSync(path);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        removed = false;
      }
      if (g.json) printJson({ config: path, removed });
      else console.log(removed ? `removed ${path}` : `nothing to remove (${path} does not exist)`);
    });
}
