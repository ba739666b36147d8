/**
 * `sockeye serve`: run the service until SIGTERM or SIGINT, then drain.
 *
 * Exit codes (contract §6): 0 after a clean drain, 1 on a start-up failure
 * or a drain that overran `SHUTDOWN_TIMEOUT_S`, 2 on bad settings.
 *
 * @module
 */
import {
  flushLogging,
  logger,
  setupLogging,
} from "../observability/logging.ts";
import { env, exit, onShutdownSignal, printError } from "../platform.ts";
import { parseSettings, type Settings, SettingsError } from "../settings.ts";
import { startServer } from "../server.ts";

/**
 * Runs the service.
 *
 * @returns The process exit code.
 */
export async function serveCommand(): Promise<number> {
  let settings: Settings;
  try {
    settings = parseSettings(env());
  } catch (error) {
    if (!(error instanceof SettingsError)) throw error;
    printError(`sockeye: ${error.message}`);
    return 2;
  }
  await setupLogging({
    level: settings.logLevel,
    format: settings.logFormat,
    color: settings.color,
  });
  const log = logger("server");

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
  const watchdog = setTimeout(() => {
    log.fatal("Drain exceeded SHUTDOWN_TIMEOUT_S by 5 s; exiting");
    exit(1);
  }, (settings.shutdownTimeoutS + 5) * 1000);
  const report = await server.drain(reason);
  clearTimeout(watchdog);
  removeListeners();
  await flushLogging();
  return report.overran ? 1 : 0;
}
