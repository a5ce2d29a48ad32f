/**
 * The runtime's floor for a tether command's start (bench item 4, issue 18): a program
 * that loads only what every tether command must (commander, which DESIGN.md names for the
 * command line, and node:crypto, which end-to-end encryption needs), parses an empty
 * command line, hashes nothing and exits. Bundled and run exactly as tether is.
 */
import { Command } from "@commander-js/extra-typings";
import { createHash } from "node:crypto";

new Command("floor").option("--json").parse([], { from: "user" });
createHash("sha256").update("").digest();
