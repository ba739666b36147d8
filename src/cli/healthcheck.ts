/**
 * `sockeye healthcheck [URL]`: exit 0 when `/healthz` answers 200, else 1.
 * For container health checks in images without curl.
 *
 * @module
 */
import { printError } from "../platform.ts";

/**
 * Probes the service's liveness endpoint.
 *
 * @param args `[URL] [--timeout SECONDS]`; the URL defaults to
 *   `http://127.0.0.1:$PORT/healthz` (PORT from `env`, default 8000).
 * @param env The environment, for `PORT`.
 * @returns 0 when healthy, 1 otherwise.
 */
export async function healthcheckCommand(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): Promise<number> {
  let url = `http://127.0.0.1:${env.PORT || "8000"}/healthz`;
  let timeoutS = 3;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--timeout") timeoutS = Number(args[++i]);
    else if (arg.startsWith("--timeout=")) timeoutS = Number(arg.slice(10));
    else url = arg;
  }
  try {
    const res = await fetch(url, {
      signal: AbortSignal.timeout(timeoutS * 1000),
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
