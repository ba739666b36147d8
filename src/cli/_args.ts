/**
 * Command-line parsing shared by the subcommands, on Node's built-in
 * `util.parseArgs` (no dependency; Deno implements it): one declaration per
 * subcommand gives its parsing and its `--help`; an unknown option or
 * argument is one line on stderr naming it, with a suggestion, and exit
 * code 2.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { print, printError } from "../platform.ts";
import { SettingsError } from "../settings.ts";
import { closest } from "../suggest.ts";

/** One option of a subcommand. */
export interface OptionSpec {
  /** `string` takes a value (`--url URL` or `--url=URL`); `boolean` does not. */
  readonly type: "string" | "boolean";
  /** One-letter alias, e.g. `c` for `-c`. */
  readonly short?: string;
  /** May be given more than once (values collected in order). */
  readonly multiple?: boolean;
  /** Value when the option is absent (shown in help). */
  readonly default?: string | boolean;
  /** Placeholder for the value in help, e.g. `N`; `VALUE` by default. */
  readonly arg?: string;
  /** One line of help. */
  readonly doc: string;
}

/** A subcommand's command line: options, arguments and help. */
export interface CommandSpec {
  /** The subcommand, e.g. `loadtest`. */
  readonly name: string;
  /** What it does, one or more sentences for `--help`. */
  readonly summary: string;
  /** Its options; `-h, --help` is added. */
  readonly options: Readonly<Record<string, OptionSpec>>;
  /** Placeholders of the positional arguments it takes, e.g. `["[URL]"]`. */
  readonly positionals?: readonly string[];
  /** Text after the options, e.g. exit codes. */
  readonly footer?: string;
  /**
   * A hint for an unknown option when no option is close, e.g. the
   * environment variable that sets it.
   */
  readonly hint?: (option: string) => string | undefined;
}

/** Values of a command's options by name, as `util.parseArgs` types them. */
export type OptionValues<O extends Readonly<Record<string, OptionSpec>>> = {
  -readonly [K in keyof O]: O[K]["type"] extends "boolean"
    ? O[K] extends { readonly default: boolean } ? boolean
    : boolean | undefined
    : O[K] extends { readonly multiple: true } ? string[] | undefined
    : O[K] extends { readonly default: string } ? string
    : string | undefined;
};

/** A parsed command line. */
export interface Parsed<O extends Readonly<Record<string, OptionSpec>>> {
  /** Option values by long name. */
  readonly values: OptionValues<O>;
  /** Positional arguments in order. */
  readonly positionals: readonly string[];
}

const HELP: OptionSpec = {
  type: "boolean",
  short: "h",
  doc: "print this help",
};

/**
 * Writes the subcommand's help: usage line, summary, options with their
 * defaults, footer.
 *
 * @param spec The subcommand.
 * @returns The help text.
 */
export function helpText(spec: CommandSpec): string {
  const options = { ...spec.options, help: HELP };
  const rows = Object.entries(options).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : "    "}--${name}${
      o.type === "string" ? ` ${o.arg ?? "VALUE"}` : ""
    }`;
    const dflt = o.default === undefined || o.default === false
      ? ""
      : ` (default ${o.default === "" ? '""' : o.default})`;
    return [flag, o.doc + dflt] as const;
  });
  const width = Math.max(...rows.map(([flag]) => flag.length)) + 2;
  const usage = [
    `sockeye ${spec.name}`,
    ...(spec.positionals ?? []),
    ...(Object.keys(spec.options).length > 0 ? ["[options]"] : []),
  ].join(" ");
  return [
    `Usage: ${usage}`,
    "",
    spec.summary,
    "",
    "Options:",
    ...rows.map(([flag, doc]) => `  ${flag.padEnd(width)}${doc}`),
    ...(spec.footer ? ["", spec.footer] : []),
    "",
  ].join("\n");
}

/**
 * Reports a bad command line: one line on stderr pointing at the help.
 *
 * @param command The subcommand, e.g. `loadtest`.
 * @param message What is wrong, e.g. `unknown option "--prot" for loadtest`.
 * @returns 2, the exit code for a bad command line.
 */
export function usageError(command: string, message: string): 2 {
  printError(`sockeye: ${message}; see "sockeye ${command} --help"`);
  return 2;
}

function didYouMean(suggestion: string | undefined): string {
  return suggestion === undefined ? "" : ` (did you mean "${suggestion}"?)`;
}

/**
 * Parses a subcommand's arguments; prints the help for `-h`/`--help`.
 *
 * @param spec The subcommand's options and arguments.
 * @param args The arguments after the subcommand.
 * @returns The values and positionals; or an exit code once handled: 0
 *   after printing the help, 2 after reporting an unknown option or
 *   argument, a missing value or a value given to a flag.
 */
export function parseCommand<const S extends CommandSpec>(
  spec: S,
  args: readonly string[],
): Parsed<S["options"]> | number {
  const options: Readonly<Record<string, OptionSpec>> = {
    ...spec.options,
    help: HELP,
  };
  const config = Object.fromEntries(
    Object.entries(options).map(([name, o]) => [name, {
      type: o.type,
      ...(o.short ? { short: o.short } : {}),
      ...(o.multiple ? { multiple: true } : {}),
      ...(o.default !== undefined ? { default: o.default } : {}),
    }]),
  );
  // Lenient parsing keeps every token, so the first problem can be named
  // exactly (strict mode throws on the first one with a long message).
  const { values, positionals, tokens } = parseArgs({
    args: [...args],
    options: config,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  if (values.help === true) {
    print(helpText(spec));
    return 0;
  }
  const longNames = Object.keys(options).map((name) => `--${name}`);
  const of = `for ${spec.name}`;
  for (const token of tokens) {
    if (token.kind !== "option") continue;
    const option = options[token.name];
    if (option === undefined) {
      const raw = args[token.index] ?? token.rawName;
      // "-json" is read as "-j -s -o -n"; name what was typed.
      const shown = /^-[^-]{2,}/.test(raw) ? raw.split("=")[0]! : token.rawName;
      const guess = shown.startsWith("--") ? shown : `-${shown}`;
      const near = shown.length > 2 ? closest(guess, longNames) : undefined;
      const hint = near === undefined ? spec.hint?.(shown) : undefined;
      return usageError(
        spec.name,
        `unknown option "${shown}" ${of}${
          hint ? ` (${hint})` : didYouMean(near)
        }`,
      );
    }
    if (option.type === "string") {
      // "--url --json": a value that looks like an option is a missing value.
      if (
        token.value === undefined ||
        (!token.inlineValue && /^-[^\d.]/.test(token.value))
      ) {
        return usageError(
          spec.name,
          `option "${token.rawName}" ${of} needs a value`,
        );
      }
    } else if (token.value !== undefined) {
      return usageError(
        spec.name,
        `option "${token.rawName}" ${of} takes no value`,
      );
    }
  }
  const allowed = spec.positionals?.length ?? 0;
  if (positionals.length > allowed) {
    const extra = positionals[allowed]!;
    const asOption = closest(`--${extra.replace(/^-+/, "")}`, longNames);
    return usageError(
      spec.name,
      `unexpected argument "${extra}" ${of}${didYouMean(asOption)}`,
    );
  }
  return {
    values: values as OptionValues<S["options"]>,
    positionals,
  };
}

/**
 * Reads the settings, or prints every problem (one line each) for exit
 * code 2.
 *
 * @param read Parses the environment, e.g. `() => parseSettings(env)`.
 * @returns What `read` returned, or 2 after printing a {@link SettingsError}.
 * @throws What `read` throws other than a {@link SettingsError}.
 */
export function settingsOr2<T>(read: () => T): T | 2 {
  try {
    return read();
  } catch (error) {
    if (!(error instanceof SettingsError)) throw error;
    for (const problem of error.problems) {
      printError(`sockeye: ${problem.message}`);
    }
    return 2;
  }
}
