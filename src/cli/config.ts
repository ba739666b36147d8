/**
 * `sockeye config`: prints the settings `serve` would run with, secrets
 * redacted, and where each value came from; or every problem, exit 2.
 *
 * @module
 */
import { print, printError } from "../platform.ts";
import {
  describeSettings,
  type EffectiveSetting,
  type Env,
  suspectVariables,
} from "../settings.ts";
import { type CommandSpec, parseCommand, settingsOr2 } from "./_args.ts";

/** The command line of `sockeye config`. */
const CONFIG = {
  name: "config",
  summary: "Prints the effective settings, one NAME=value per line, as " +
    "`sockeye serve` would read them\nfrom this environment. Secrets show " +
    "as ***; a value that is the default, or came from a\nNAME_FILE, says " +
    "so in a comment. Unknown variables close to a known name are named on " +
    "stderr.",
  options: {
    json: {
      type: "boolean",
      default: false,
      doc: 'print one JSON object: NAME → {"value", "source"}',
    },
  },
  footer: "Exit codes: 0, or 2 when a setting is invalid (every problem " +
    "listed, one per line).",
} as const satisfies CommandSpec;

/**
 * Formats the settings as `NAME=value` lines.
 *
 * @param settings From `describeSettings`.
 * @returns One line per setting; defaults and file-sourced values carry a
 *   `# default` or `# from NAME_FILE` comment.
 */
export function formatSettings(settings: readonly EffectiveSetting[]): string {
  const width = Math.max(...settings.map((s) => s.env.length + s.text.length)) +
    3;
  return settings.map((s) => {
    const line = `${s.env}=${s.text}`;
    const note = s.source === "default"
      ? s.value === null ? "# default: unset" : "# default"
      : s.source === "file"
      ? `# from ${s.env}_FILE`
      : "";
    return note ? `${line.padEnd(width)}${note}` : line;
  }).join("\n");
}

/**
 * The `config` subcommand.
 *
 * @param args Command-line options (see `--help`).
 * @param env The environment.
 * @returns Exit code: 0, or 2 on bad settings or a bad command line.
 */
export function configCommand(args: readonly string[], env: Env): number {
  const parsed = parseCommand(CONFIG, args);
  if (typeof parsed === "number") return parsed;
  const settings = settingsOr2(() => describeSettings(env));
  if (settings === 2) return 2;
  for (const { variable, suggestion } of suspectVariables(env)) {
    printError(
      `sockeye: unknown variable ${variable} has no effect (did you mean ${suggestion}?)`,
    );
  }
  print(
    parsed.values.json
      ? JSON.stringify(Object.fromEntries(
        settings.map((s) => [s.env, { value: s.value, source: s.source }]),
      ))
      : formatSettings(settings),
  );
  return 0;
}
