/**
 * Logs one info line and dies of an uncaught error in the same turn of the
 * event loop (`tests/logging_test.ts`): the line must still reach stdout.
 *
 * Usage: deno run tests/_log_then_crash.ts [throw|reject]
 *
 * @module
 */
import { logger, setupLogging } from "../src/observability/logging.ts";

await setupLogging({ level: "info", format: "json", color: "blue" });
setTimeout(() => {
  logger("test").info("Last words");
  if (Deno.args[0] === "reject") Promise.reject(new Error("boom"));
  else throw new Error("boom");
}, 0);
