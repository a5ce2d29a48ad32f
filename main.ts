/** tether: relay, agent and client in one program. See README.md. */
import { main } from "./src/cli/main.ts";

if (import.meta.main) {
  const code = await main(Deno.args);
  // Exit explicitly: a pending read of a terminal stdin must not keep us alive.
  Deno.exit(code);
}
