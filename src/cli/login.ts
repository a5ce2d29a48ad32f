/** `tether login` / `tether logout`: keep the relay URL and API key in the config dir. */
import type { Command } from "@commander-js/extra-typings";
import { join } from "node:path";
import { CONFIG_FILE, configDir, writeStoredConfig } from "../client/config.ts";
import { RelayClient } from "../client/relay_client.ts";
import { globals, warnTransport } from "./context.ts";
import { interactiveRequired } from "../client/prompt_gate.ts";
import { loadPrompts } from "../client/select.ts";
import { printJson } from "./output.ts";

export function registerLogin(program: Command) {
  program.command("login")
    .description("check and store the relay URL and API key (config file, mode 0600)")
    .action(async (_opts, cmd) => {
      const g = globals(cmd);
      let relay = g.relay || Deno.env.get("TETHER_RELAY");
      let apiKey = g.apiKey || Deno.env.get("TETHER_API_KEY");
      if (!relay || !apiKey) {
        const refusal = interactiveRequired(
          `login needs ${!relay ? "a relay URL" : "an API key"} and there is no terminal to ask`,
          "tether login --relay wss://relay.example.com --api-key tether_client_…",
        );
        const { promptPassword, promptText } = await loadPrompts();
        relay ||= await promptText("Relay URL", {
          env: g,
          refusal,
          default: "ws://127.0.0.1:7420",
        });
        apiKey ||= await promptPassword("API key", { env: g, refusal });
      }
      const caFile = g.caFile || Deno.env.get("TETHER_CA_FILE") || undefined;
      warnTransport(relay, g.insecure);
      const client = await RelayClient.connect({
        relay,
        apiKey,
        caFile,
        configDir: "",
        insecure: g.insecure,
      });
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
