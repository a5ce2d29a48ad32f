/** `tether login` / `tether logout`: keep the relay URL and API key in the config dir. */
import type { Command } from "@commander-js/extra-typings";
import { join } from "node:path";
import {
  CONFIG_FILE,
  configDir,
  dialTimeoutMs,
  PINNED_CA_FILE,
  writeStoredConfig,
} from "../client/config.ts";
import { usage } from "../common/errors.ts";
import { writePrivate } from "../common/files.ts";
import { relayBase } from "../protocol/dial.ts";
import { fetchPinned, normalizeFingerprint } from "../protocol/tls_pin.ts";
import { RelayClient } from "../client/relay_client.ts";
import { type Act, globals, warnTransport } from "./context.ts";
import { interactiveRequired } from "../client/prompt_gate.ts";
import { loadPrompts } from "../client/select.ts";
import { printJson } from "./output.ts";

export function registerLogin(program: Command, act: Act) {
  program.command("login")
    .description("check and store the relay URL and API key (config file, mode 0600)")
    .option("--relay <url>", "the relay: wss://HOST[:PORT] (ws:// on loopback)")
    .option("--api-key <key>", "a client key (`tether relay keys create --role client`)")
    .option("--ca-file <file>", "trust the relay's private CA from this PEM file")
    .option(
      "--fingerprint <SHA256:…>",
      "trust a relay with a private CA (relay serve --tls-self-signed prints it) by its " +
        "fingerprint: its CA is fetched, checked and kept in the config dir",
    )
    .addHelpText(
      "after",
      "\nWithout --relay or --api-key on a terminal, login asks for them (env TETHER_RELAY and " +
        "TETHER_API_KEY also serve).\nExample: tether login --relay wss://relay.example.com " +
        "--api-key tether_client_…",
    )
    .action(act(async (opts, cmd) => {
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
      let caFile = g.caFile || Deno.env.get("TETHER_CA_FILE") || undefined;
      warnTransport(relay, g.insecure);
      const dir = configDir(g);
      const timeoutMs = dialTimeoutMs(g);
      let fingerprint: string | undefined;
      if (opts.fingerprint) {
        fingerprint = normalizeFingerprint(opts.fingerprint);
        if (!fingerprint) {
          throw usage(
            `invalid --fingerprint '${opts.fingerprint}'`,
            "give it as the relay printed it: SHA256: and 43 base64 characters",
          );
        }
        const u = relayBase(relay);
        if (u.protocol !== "wss:") throw usage("--fingerprint is for a wss:// relay");
        const host = u.hostname.replace(/^\[|\]$/g, "");
        const pem = await fetchPinned(host, Number(u.port) || 443, fingerprint, timeoutMs);
        Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
        caFile = join(dir, PINNED_CA_FILE);
        writePrivate(caFile, pem);
      }
      const client = await RelayClient.connect({
        relay,
        apiKey,
        caFile,
        configDir: dir,
        insecure: g.insecure,
        dialTimeoutMs: timeoutMs,
      });
      const workspace = client.workspace;
      client.close();
      const path = writeStoredConfig(dir, {
        relay,
        api_key: apiKey,
        ...(caFile ? { ca_file: caFile } : {}),
        ...(fingerprint ? { fingerprint } : {}),
      });
      if (g.json) {
        printJson({ relay, workspace, config: path, ...(fingerprint ? { fingerprint } : {}) });
      } else {
        console.log(`logged in to ${relay} (workspace ${workspace}); saved to ${path}`);
        if (fingerprint) console.error(`the relay's CA ${fingerprint} is pinned in ${caFile}`);
      }
    }));

  program.command("logout")
    .description("remove the stored relay URL and API key")
    .action(act((_opts, cmd) => {
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
    }));
}
