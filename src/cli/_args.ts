/**
 * Command-line parsing shared by the subcommands: `node:util` parseArgs with
 * `--help` and the usage on errors.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { print, printError } from "../platform.ts";

/**
 * Parses a subcommand's options.
 *
 * @param command Subcommand name for messages, e.g. `loadtest`.
 * @param args The arguments after the subcommand.
 * @param options parseArgs option definitions (a `help` flag is added).
 * @param help Usage text.
 * @returns The values, or an exit code: 0 after `--help`, 2 on bad options.
 */
export function parseCommand<T extends ParseArgsConfig["options"]>(
  command: string,
  args: readonly string[],
  options: T,
  help: string,
): ReturnType<typeof parseArgs<{ options: T }>>["values"] | number {
  let values;
  try {
    values = parseArgs({
      args: [...args],
      options: { ...options, help: { type: "boolean", short: "h" } },
    }).values as Record<string, unknown>;
  } catch (error) {
    printError(`sockeye ${command}: ${(error as Error).message}\n\n${help}`);
    return 2;
  }
  if (values.help) {
    print(help);
    return 0;
  }
  return values as ReturnType<typeof parseArgs<{ options: T }>>["values"];
}
