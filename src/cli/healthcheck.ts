/**
 * `sockeye healthcheck [URL]`: exit 0 when `/healthz` answers 200, else 1.
 * For container health checks in images without curl.
 *
 * @module
 */
import { printError } from "../platform.ts";
import { type Env } from "../settings.ts";
import { type CommandSpec, parseCommand, usageError } from "./_args.ts";

const HEALTHCHECK = {
  name: "healthcheck",
  summary: "Asks URL (default http://127.0.0.1:$PORT/healthz, PORT from the " +
    "environment or 8000)\nand exits 0 when it answers 200: a health check " +
    "for containers without curl.",
  positionals: ["[URL]"],
  options: {
    timeout: {
      type: "string",
      arg: "S",
      default: "3",
      doc: "seconds to wait for the answer",
    },
  },
  footer: "Exit codes: 0 on 200; 1 on another status, no answer or a " +
    "timeout; 2 on a bad command line.",
} as const satisfies CommandSpec;

/**
 * Probes the service's liveness endpoint.
 *
 * @param args `[URL] [--timeout SECONDS]`; the URL defaults to
 *   `http://127.0.0.1:$PORT/healthz` (PORT from `env`, default 8000).
 * @param env The environment, for `PORT`.
 * @returns 0 when healthy, 1 otherwise, 2 on a bad command line.
 */
export async function healthcheckCommand(
  args: readonly string[],
  env: Env,
): Promise<number> {
  const parsed = parseCommand(HEALTHCHECK, args);
  if (typeof parsed === "number") return parsed;
  const url = parsed.positionals[0] ??
    `http://127.0.0.1:${env.PORT || "8000"}/healthz`;
  if (!/^https?:\/\/[^/]/.test(url) || !URL.canParse(url)) {
    return usageError(
      "healthcheck",
      `cannot parse URL "${url}" for healthcheck: expected an http:// or https:// URL`,
    );
  }
  const timeoutS = Number(parsed.values.timeout);
  if (!(timeoutS > 0) || !Number.isFinite(timeoutS)) {
    return usageError(
      "healthcheck",
      `cannot parse --timeout "${parsed.values.timeout}" for healthcheck: expected a number above 0`,
    );
  }
  try {
    const res = await fetch(url, {
      signal: AbortSignal.timeout(Math.min(timeoutS * 1000, 2 ** 31 - 1)),
    });
    await res.body?.cancel();
    if (res.status === 200) return 0;
    printError(`sockeye healthcheck: ${url} answered ${res.status}`);
  } catch (error) {
    printError(
      `sockeye healthcheck: ${url} unreachable: ${(error as Error).message}`,
    );
  }
  return 1;
}
