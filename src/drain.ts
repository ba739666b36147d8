/**
 * The drain: readiness 503 → drain delay → refuse upgrades → bye + 1001 to
 * every socket → wait for close handshakes → force the rest → stop what the
 * server started, in the reverse order of its start.
 *
 * @module
 */
import { setTimeout as delay } from "node:timers/promises";
import { type Lifecycle, roundSeconds } from "./lifecycle.ts";
import { logger } from "./observability/logging.ts";
import type { Metrics } from "./observability/metrics.ts";
import type { Settings } from "./settings.ts";
import type { DrainResult, Hub } from "./sessions/hub.ts";

/** What a finished drain reports. */
export interface ShutdownReport extends DrainResult {
  /** Seconds from drain start to all sockets closed or forced. */
  readonly shutdownSeconds: number;
  /** Whether the drain overran `SHUTDOWN_TIMEOUT_S`. */
  readonly overran: boolean;
}

/** What the drain works on. */
export interface DrainContext {
  /** `DRAIN_DELAY_S`, `SHUTDOWN_TIMEOUT_S`. */
  readonly settings: Settings;
  /** Moved to draining, then stopped. */
  readonly lifecycle: Lifecycle;
  /** `shutdown_duration_seconds`. */
  readonly metrics: Metrics;
  /** The connections to say goodbye to. */
  readonly hub: Hub;
  /** Everything the server started, disposed once the sockets are closed. */
  readonly resources: AsyncDisposableStack;
  /** Aborted by a second signal: cuts the drain delay short. */
  readonly hurry: AbortSignal;
}

/**
 * The drain: readiness 503 → drain delay → refuse upgrades → bye + 1001 to
 * every socket → wait for close handshakes → force the rest → stop.
 *
 * A second signal (`hurry`) cuts only the drain delay: cutting the handshake
 * wait would end sockets whose close frame is still in flight.
 *
 * @param reason What started it, e.g. `SIGTERM`, for the log line.
 * @param ctx The server's parts; its `resources` are disposed at the end.
 * @returns The drain's figures.
 */
export async function runDrain(
  reason: string,
  ctx: DrainContext,
): Promise<ShutdownReport> {
  const { settings, lifecycle, metrics, hub, hurry } = ctx;
  const log = logger("server");
  const start = performance.now();
  const budgetMs = settings.shutdownTimeoutS * 1000;
  // Keep a tenth of the budget (at most 1 s) for forcing, flushing and exit.
  const deadline = start + budgetMs - Math.min(1000, budgetMs / 10);
  lifecycle.drain();
  log.info("Drain started by {reason}", {
    reason,
    active_connections: hub.size,
    drain_delay_s: settings.drainDelayS,
    shutdown_timeout_s: settings.shutdownTimeoutS,
  });

  if (settings.drainDelayS > 0) {
    // A second signal cuts it short: the rejection is that, not an error.
    await delay(settings.drainDelayS * 1000, undefined, { signal: hurry })
      .catch(() => {});
  }
  lifecycle.refuseUpgrades();
  const result = await hub.closeAll(deadline);
  const shutdownSeconds = (performance.now() - start) / 1000;
  metrics.shutdownTime.set(shutdownSeconds);
  // Every socket is closed or forced: the drain's time is final from here.
  lifecycle.stop();
  if (result.forced > 0) {
    log.warning("Drain deadline reached: forcing {forced} sockets closed", {
      forced: result.forced,
    });
  }
  if (result.dropped > 0) {
    log.warning(
      "Drain: {dropped} sockets ended without the client's close frame",
      { dropped: result.dropped },
    );
  }
  // Profiles, the public listener (closing what is left with 1001), the
  // store, the admin listener (last: Prometheus scrapes the drain to its
  // end), then the metrics timers.
  await ctx.resources.disposeAsync();
  const overran = shutdownSeconds > settings.shutdownTimeoutS;
  log.info("Drain complete", {
    shutdown_seconds: roundSeconds(shutdownSeconds),
    closed: result.closed,
    dropped: result.dropped,
    forced: result.forced,
  });
  return { ...result, shutdownSeconds, overran };
}
