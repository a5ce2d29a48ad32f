/** `tether whoami`: this client's end-to-end key (for agents' --authorized-keys) and config. */
import type { Command } from "@commander-js/extra-typings";
import { hostname } from "node:os";
import { clientKeyPair } from "../client/relay_client.ts";
import { readStoredConfig } from "../client/config.ts";
import { defaultConfigDir } from "../common/paths.ts";
import { visible } from "../common/text.ts";
import { encodeKey, fingerprint } from "../protocol/e2e.ts";
import { keyLine } from "../protocol/e2e_keys.ts";
import { parseKey } from "../protocol/keys.ts";
import { type Act, globals } from "./context.ts";
import { printJson } from "./output.ts";

export function registerWhoami(program: Command, act: Act) {
  program.command("whoami")
    .description(
      "show this client's end-to-end key (the line an agent's --authorized-keys takes) and config",
    )
    .action(act((_opts, cmd) => {
      const g = globals(cmd);
      const dir = g.configDir || defaultConfigDir();
      const kp = clientKeyPair(dir);
      const stored = readStoredConfig(dir);
      const relay = g.relay || Deno.env.get("TETHER_RELAY") || stored.relay;
      const apiKey = g.apiKey || Deno.env.get("TETHER_API_KEY") || stored.api_key;
      const keyId = apiKey ? parseKey(apiKey)?.id : undefined;
      const comment = `${Deno.env.get("USER") || "user"}@${hostname()}`;
      const line = keyLine(kp.pub, comment);
      if (g.json) {
        printJson({
          key: line,
          public_key: encodeKey(kp.pub),
          fingerprint: fingerprint(kp.pub),
          config_dir: dir,
          relay: relay ?? null,
          key_id: keyId ?? null,
        });
        return Promise.resolve();
      }
      console.log(visible(line));
      console.error(visible(`fingerprint ${fingerprint(kp.pub)}`));
      console.error(visible(`config      ${dir}`));
      if (relay) console.error(visible(`relay       ${relay}`));
      if (keyId) console.error(visible(`api key     ${keyId}`));
      return Promise.resolve();
    }));
}
