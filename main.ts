/**
 * sockeye: a WebSocket session service with production observability.
 *
 * `sockeye [serve]`, `sockeye healthcheck`, `sockeye loadtest`,
 * `sockeye monitor`, `sockeye version`. See README.md.
 *
 * @module
 */
import { healthcheckCommand } from "./src/cli/healthcheck.ts";
import { loadtestCommand } from "./src/cli/loadtest.ts";
import { monitorCommand } from "./src/cli/monitor.ts";
import { serveCommand } from "./src/cli/serve.ts";
import { args, env, exit, print, printError } from "./src/platform.ts";
import { VERSION } from "./src/version.ts";

const USAGE = `sockeye ${VERSION}

Usage: sockeye [command] [options]

Commands:
  serve                 run the service (default); settings come from the environment
  healthcheck [URL]     exit 0 when /healthz answers 200, else 1
  loadtest [options]    open sockets against a server and measure it (--help)
  monitor [options]     health, readiness, connections, fastest metrics, error lines (--help)
  version               print the version
  help                  print this text
`;

async function main(argv: readonly string[]): Promise<number> {
  const [command = "serve", ...rest] = argv;
  switch (command) {
    case "serve":
      return await serveCommand();
    case "healthcheck":
      return await healthcheckCommand(rest, env());
    case "loadtest":
      return await loadtestCommand(rest);
    case "monitor":
      return await monitorCommand(rest, env());
    case "version":
    case "--version":
      print(VERSION);
      return 0;
    case "help":
    case "--help":
    case "-h":
      print(USAGE);
      return 0;
    default:
      printError(`sockeye: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

if (import.meta.main) exit(await main(args()));
