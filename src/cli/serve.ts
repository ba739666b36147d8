/**
 * `sockeye serve`: run the service until SIGTERM or SIGINT, then drain.
 *
 * Exit codes (contract §6): 0 after a clean drain, 1 on a start-up failure
 * or a drain that overran `SHUTDOWN_TIMEOUT_S`, 2 on bad settings or a bad
 * command line.
 *
 * @module
 */
import {
  flushLogging,
  logger,
  setupLogging,
} from "../observability/logging.ts";
import { exit, onShutdownSignal } from "../platform.ts";
import {
  type Env,
  parseSettings,
  SETTINGS,
  type SettingSpec,
  suspectVariables,
  WATCHDOG_MARGIN_S,
} from "../settings.ts";
import { startServer } from "../server.ts";
import { closest } from "../suggest.ts";
import { type CommandSpec, parseCommand, settingsOr2 } from "./_args.ts";

/**
 * Lists every setting for help: name, default, meaning, wrapped to `width`.
 *
 * @param width Line width in characters.
 * @returns One or more lines per setting, from {@link SETTINGS}.
 */
export function settingsHelp(width = 100): string {
  const rows = Object.values(SETTINGS).map((s) => {
    const spec: SettingSpec = s;
    const dflt = typeof spec.default === "string"
      ? spec.default
      : spec.defaultText ?? "unset";
    const doc = spec.secret
      ? `${s.doc}; or read from the file named by ${s.env}_FILE`
      : s.doc;
    return [s.env, dflt, doc] as const;
  });
  const nameWidth = Math.max(...rows.map(([name]) => name.length)) + 2;
  const defaultWidth = Math.max(...rows.map(([, d]) => d.length)) + 2;
  const indent = 2 + nameWidth + defaultWidth;
  const lines = [
    `  ${"VARIABLE".padEnd(nameWidth)}${"DEFAULT".padEnd(defaultWidth)}MEANING`,
  ];
  for (const [name, dflt, doc] of rows) {
    let line = `  ${name.padEnd(nameWidth)}${dflt.padEnd(defaultWidth)}`;
    let used = indent;
    for (const word of doc.split(" ")) {
      if (used > indent && used + 1 + word.length > width) {
        lines.push(line);
        line = " ".repeat(indent);
        used = indent;
      }
      if (used > indent) {
        line += " ";
        used++;
      }
      line += word;
      used += word.length;
    }
    lines.push(line);
  }
  return lines.join("\n");
}

/**
 * Points an option such as `--port` at the environment variable that sets
 * it.
 *
 * @param option The unknown option as typed, e.g. `--max-connections`.
 * @returns e.g. `settings come from the environment: MAX_CONNECTIONS=…`, or
 *   `undefined` when no variable is close.
 */
export function settingHint(option: string): string | undefined {
  const name = option.replace(/^-+/, "").split("=")[0]!.replaceAll("-", "_")
    .toUpperCase();
  const variable = closest(name, Object.values(SETTINGS).map((s) => s.env));
  return variable && `settings come from the environment: ${variable}=…`;
}

/** The command line of `sockeye serve`: no options, every setting in its help. */
const SERVE = {
  name: "serve",
  summary: "Runs the service until SIGTERM or SIGINT, then drains it. " +
    "It takes no arguments:\nsettings come from the environment " +
    "(empty values count as unset; a secret may also come\nfrom the file " +
    "that NAME_FILE names, e.g. METRICS_TOKEN_FILE, REDIS_URL_FILE). " +
    'See "sockeye config".',
  options: {},
  hint: settingHint,
  get footer() {
    return `Settings:\n${settingsHelp()}\n\n` +
      "Exit codes: 0 after a clean drain; 1 when it cannot start or the " +
      "drain overran; 2 on bad\nsettings (every problem listed) or a bad " +
      "command line.";
  },
} as const satisfies CommandSpec;

/**
 * Runs the service.
 *
 * @param args The arguments after `serve` (only `--help`).
 * @param env The environment: the settings.
 * @returns The process exit code.
 */
export async function serveCommand(
  args: readonly string[],
  env: Env,
): Promise<number> {
  const parsed = parseCommand(SERVE, args);
  if (typeof parsed === "number") return parsed;
  const settings = settingsOr2(() => parseSettings(env));
  if (settings === 2) return 2;
  await setupLogging({
    level: settings.logLevel,
    format: settings.logFormat,
    color: settings.color,
  });
  const log = logger("server");
  for (const { variable, suggestion } of suspectVariables(env)) {
    logger("settings").warning(
      "Unknown variable {variable} has no effect: did you mean {suggestion}?",
      { variable, suggestion },
    );
  }

  let server;
  try {
    server = await startServer(settings);
  } catch (error) {
    log.fatal("Cannot start: {error}", { error });
    await flushLogging();
    return 1;
  }

  const { promise: signalled, resolve } = Promise.withResolvers<string>();
  let signals = 0;
  const removeListeners = onShutdownSignal((signal) => {
    if (++signals === 1) return resolve(signal);
    log.warning("Second {signal}: skipping the rest of the drain delay", {
      signal,
    });
    server.hurry();
  });
  const reason = await signalled;

  // A drain must never outlive its budget by much: exit even if it hangs.
  // Timers hold at most 2^31 − 1 ms; a longer one would fire at once.
  const watchdog = setTimeout(() => {
    log.fatal("Drain exceeded SHUTDOWN_TIMEOUT_S by {margin} s; exiting", {
      margin: WATCHDOG_MARGIN_S,
    });
    exit(1);
  }, (settings.shutdownTimeoutS + WATCHDOG_MARGIN_S) * 1000);
  const report = await server.drain(reason);
  clearTimeout(watchdog);
  removeListeners();
  await flushLogging();
  return report.overran ? 1 : 0;
}
