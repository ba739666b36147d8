/**
 * sockeye: a WebSocket session service with production observability.
 *
 * `sockeye [serve]`, `sockeye healthcheck`, `sockeye loadtest`,
 * `sockeye monitor`, `sockeye promote`, `sockeye config`, `sockeye admin`,
 * `sockeye version`, `sockeye help`; `--help` on each. See README.md.
 *
 * @module
 */
import { adminCommand } from "./src/cli/admin.ts";
import { configCommand } from "./src/cli/config.ts";
import { healthcheckCommand } from "./src/cli/healthcheck.ts";
import { loadtestCommand } from "./src/cli/loadtest.ts";
import { monitorCommand } from "./src/cli/monitor.ts";
import { promoteCommand } from "./src/cli/promote.ts";
import { serveCommand, settingHint } from "./src/cli/serve.ts";
import { parseCommand, usageError } from "./src/cli/_args.ts";
import { args, env, exit, print, printError } from "./src/platform.ts";
import { closest } from "./src/suggest.ts";
import { VERSION } from "./src/version.ts";

type Run = (args: readonly string[]) => number | Promise<number>;

/** Each subcommand: its line in the usage, and how it runs. */
const COMMANDS: Readonly<Record<string, { summary: string; run: Run }>> = {
  serve: {
    summary: "run the service (default); settings come from the environment",
    run: (rest) => serveCommand(rest, env()),
  },
  healthcheck: {
    summary: "exit 0 when /healthz answers 200, else 1 (for containers)",
    run: (rest) => healthcheckCommand(rest, env()),
  },
  loadtest: {
    summary: "open sockets against a server, check every count, measure",
    run: (rest) => loadtestCommand(rest),
  },
  monitor: {
    summary: "health, readiness, store, messages/s, latency, errors, logs",
    run: (rest) => monitorCommand(rest, env()),
  },
  promote: {
    summary: "blue/green release: smoke tests, switch, rollback, standby",
    run: (rest) => promoteCommand(rest),
  },
  config: {
    summary: "print the effective settings, secrets redacted",
    run: (rest) => configCommand(rest, env()),
  },
  admin: {
    summary: "log level, profiles, connections, disconnect (admin API)",
    run: (rest) => adminCommand(rest, env()),
  },
  version: {
    summary: "print the version",
    run: (rest) => {
      const parsed = parseCommand({
        name: "version",
        summary: "Prints the version (as -V and --version do).",
        options: {},
      }, rest);
      if (typeof parsed === "number") return parsed;
      print(VERSION);
      return 0;
    },
  },
  help: {
    summary: "print this text, or a command's help",
    run: (rest) => {
      const parsed = parseCommand({
        name: "help",
        summary:
          'Prints the list of commands, or with COMMAND its help (as "sockeye COMMAND --help").',
        options: {},
        positionals: ["[COMMAND]"],
      }, rest);
      if (typeof parsed === "number") return parsed;
      const [command] = parsed.positionals;
      if (command === undefined) {
        print(usage());
        return 0;
      }
      return COMMANDS[command]?.run(["--help"]) ?? unknownCommand(command);
    },
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  return [
    `sockeye ${VERSION}`,
    "",
    "Usage: sockeye [command] [options]",
    "",
    "Commands:",
    ...Object.entries(COMMANDS).map(([name, c]) =>
      `  ${name.padEnd(width)}${c.summary}`
    ),
    "",
    "Options:",
    "  -h, --help     print this text",
    "  -V, --version  print the version",
    "",
    'Run "sockeye COMMAND --help" for a command\'s options. Exit codes: 0 ' +
    "ok, 1 failure, 2 bad command line\nor settings.",
    "",
  ].join("\n");
}

function unknownCommand(command: string): 2 {
  const guess = closest(command, Object.keys(COMMANDS));
  printError(
    `sockeye: unknown command "${command}"${
      guess ? ` (did you mean "${guess}"?)` : ""
    }; see "sockeye help"`,
  );
  return 2;
}

async function main(argv: readonly string[]): Promise<number> {
  const [command = "serve", ...rest] = argv;
  if (command === "-V" || command === "--version") {
    return rest.length > 0
      ? usageError("version", `unexpected argument "${rest[0]}" for version`)
      : (print(VERSION), 0);
  }
  if (command === "-h" || command === "--help") return COMMANDS.help!.run([]);
  if (command.startsWith("-")) {
    const guess = closest(command, ["--help", "--version"]);
    const hint = guess ? `did you mean "${guess}"?` : settingHint(command);
    printError(
      `sockeye: unknown option "${command}"${
        hint ? ` (${hint})` : ""
      }; see "sockeye help"`,
    );
    return 2;
  }
  const entry = COMMANDS[command];
  return entry ? await entry.run(rest) : unknownCommand(command);
}

if (import.meta.main) exit(await main(args()));
