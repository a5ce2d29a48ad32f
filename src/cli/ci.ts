/** `tether ci hold|attach|inject`: debugging CI jobs. (Being written; see issue 7.) */
import type { Command } from "@commander-js/extra-typings";

export function registerCi(program: Command) {
  program.command("ci").description("pause a CI job and attach to its runner");
}
