/**
 * Wires settings, store, hub, metrics and the HTTP app into a running
 * server, and owns the drain sequence.
 *
 * @module
 */
import type { Hono } from "hono";
import { createApp } from "./app.ts";
import { Lifecycle } from "./lifecycle.ts";
import { logger } from "./observability/logging.ts";
import { Metrics } from "./observability/metrics.ts";
import { type TracingOptions, withRootSpan } from "./observability/tracing.ts";
import { type HttpServer, serve } from "./platform.ts";
import type { Settings } from "./settings.ts";
import { type DrainResult, Hub } from "./sessions/hub.ts";
import { MemorySessionStore } from "./sessions/memory_store.ts";
import { RedisSessionStore } from "./sessions/redis_store.ts";
import type { SessionStore } from "./sessions/store.ts";

/** What a finished drain reports. */
export interface ShutdownReport extends DrainResult {
  /** Seconds from drain start to all sockets closed or forced. */
  readonly shutdownSeconds: number;
  /** Whether the drain overran `SHUTDOWN_TIMEOUT_S`. */
  readonly overran: boolean;
}

/** A started sockeye server. */
export interface Server {
  /** The bound port. */
  readonly port: number;
  /** Lifecycle state and timings. */
  readonly lifecycle: Lifecycle;
  /** The metrics registry. */
  readonly metrics: Metrics;
  /** The HTTP app, for in-process requests. */
  readonly app: Hono<never>;
  /**
   * Runs the drain once; later calls return the same promise.
   *
   * @param reason What started it, e.g. `SIGTERM`.
   * @returns The drain's figures once every socket is closed and the server stopped.
   */
  drain(reason: string): Promise<ShutdownReport>;
  /**
   * Skips what is left of `DRAIN_DELAY_S` (a second signal). The goodbyes
   * and close handshakes still run to the deadline.
   */
  hurry(): void;
}

/**
 * Creates the session store the settings ask for.
 *
 * @param settings Parsed settings.
 * @param metrics Where the store's availability goes (`app_dependency_up`).
 * @returns A memory store, or a Redis store when `REDIS_URL` is set; the
 *   Redis store connects in the background.
 */
export function createStore(
  settings: Settings,
  metrics: Metrics,
): SessionStore {
  if (settings.redisUrl === undefined) {
    metrics.dependencyUp.labels("memory").set(1);
    return new MemorySessionStore(settings.sessionTtlS);
  }
  const up = metrics.dependencyUp.labels("redis");
  up.set(0);
  return new RedisSessionStore(
    settings.redisUrl,
    settings.sessionTtlS,
    logger("redis"),
    { onAvailability: (available) => up.set(available ? 1 : 0) },
  );
}

/**
 * Starts sockeye: store, hub, app, listener; then marks it ready.
 *
 * @param settings Parsed settings (`port` 0 picks a free port).
 * @returns The running server.
 * @throws {Deno.errors.AddrInUse} When the port is taken (exit code 1).
 */
export async function startServer(settings: Settings): Promise<Server> {
  const log = logger("server");
  const lifecycle = new Lifecycle();
  const tracing: TracingOptions = {
    enabled: settings.otelEnabled,
    frameRatio: settings.traceFrameRatio,
  };
  const metrics: Metrics = new Metrics(settings.color, {
    activeConnections: (): number => hub.size,
    ready: (): boolean => lifecycle.state === "ready" && store.available,
    drainingSeconds: (): number | undefined =>
      lifecycle.state === "draining" ? lifecycle.drainSeconds : undefined,
  });
  const store = createStore(settings, metrics);
  const hub: Hub = new Hub(
    {
      heartbeatIntervalS: settings.heartbeatIntervalS,
      limits: settings,
      tracing,
    },
    metrics,
    logger("ws"),
  );
  const app = createApp({ settings, lifecycle, metrics, hub, store });

  let http: HttpServer;
  try {
    http = serve(
      { hostname: settings.host, port: settings.port },
      (req, info) => app.fetch(req, info),
    );
  } catch (error) {
    hub.stopHeartbeat();
    metrics.close();
    await store.close();
    throw error;
  }

  // The startup span covers process start (the time origin) to ready.
  await withRootSpan(tracing, "sockeye startup", (span) => {
    const startupSeconds = lifecycle.ready();
    metrics.startupTime.set(startupSeconds);
    span?.setAttributes({
      "sockeye.startup.duration": startupSeconds,
      "sockeye.store": store.kind,
    });
    log.info("sockeye ready on {host}:{port}", {
      host: http.hostname,
      port: http.port,
      startup_seconds: round6(startupSeconds),
      store: store.kind,
    });
    return Promise.resolve();
  }, performance.timeOrigin);

  let drained: Promise<ShutdownReport> | undefined;
  const hurry = new AbortController();
  const drain = (reason: string) =>
    drained ??= withRootSpan(tracing, "sockeye drain", async (span) => {
      const report = await runDrain(reason, {
        settings,
        lifecycle,
        metrics,
        hub,
        store,
        http,
        hurry: hurry.signal,
      });
      span?.setAttributes({
        "sockeye.drain.reason": reason,
        "sockeye.drain.closed": report.closed,
        "sockeye.drain.dropped": report.dropped,
        "sockeye.drain.forced": report.forced,
        "sockeye.drain.duration": report.shutdownSeconds,
      });
      return report;
    });

  return {
    port: http.port,
    lifecycle,
    metrics,
    app: app as unknown as Hono<never>,
    drain,
    hurry: () => hurry.abort(),
  };
}

/**
 * The drain: readiness 503 → drain delay → refuse upgrades → bye + 1001 to
 * every socket → wait for close handshakes → force the rest → stop.
 *
 * A second signal (`hurry`) cuts only the drain delay: cutting the handshake
 * wait would end sockets whose close frame is still in flight.
 */
async function runDrain(reason: string, ctx: {
  settings: Settings;
  lifecycle: Lifecycle;
  metrics: Metrics;
  hub: Hub;
  store: SessionStore;
  http: HttpServer;
  hurry: AbortSignal;
}): Promise<ShutdownReport> {
  const { settings, lifecycle, metrics, hub, store, http, hurry } = ctx;
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
    await abortableDelay(settings.drainDelayS * 1000, hurry);
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
  // Closes what is left (1001) and waits for in-flight HTTP requests.
  await http.shutdown();
  await store.close();
  metrics.close();
  const overran = shutdownSeconds > settings.shutdownTimeoutS;
  log.info("Drain complete", {
    shutdown_seconds: round6(shutdownSeconds),
    closed: result.closed,
    dropped: result.dropped,
    forced: result.forced,
  });
  return { ...result, shutdownSeconds, overran };
}

function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** Rounds seconds to microseconds for log lines. */
function round6(seconds: number): number {
  return Math.round(seconds * 1e6) / 1e6;
}
