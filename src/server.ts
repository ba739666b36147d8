/**
 * Wires settings, store, hub, metrics and the HTTP app into a running
 * server, and owns the drain sequence.
 *
 * @module
 */
import type { Hono } from "hono";
import type { Logger } from "@logtape/logtape";
import {
  ALL_ROUTES,
  createApp,
  type ProcessLimits,
  type RouteGroup,
} from "./app.ts";
import type { AdminDeps } from "./admin/app.ts";
import { LogLevelControl } from "./admin/log_level.ts";
import { Profiler } from "./admin/profiler.ts";
import { PyroscopePusher } from "./admin/pyroscope.ts";
import { Lifecycle } from "./lifecycle.ts";
import { MemoryGuard } from "./memory_guard.ts";
import { AUDIT, logger } from "./observability/logging.ts";
import { Metrics } from "./observability/metrics.ts";
import { type TracingOptions, withRootSpan } from "./observability/tracing.ts";
import {
  cgroupMemoryLimit,
  type HttpServer,
  type ListenerEvents,
  maxFds,
  serve,
} from "./platform.ts";
import { isLoopback, type Settings } from "./settings.ts";
import { VERSION } from "./version.ts";
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
  /** The admin listener's port; `undefined` without `ADMIN_PORT`. */
  readonly adminPort: number | undefined;
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
 * Descriptors kept back from the derived `MAX_CONNECTIONS` for Redis, OTLP,
 * logs, the runtime's own and in-flight HTTP requests: at least this many…
 */
export const FD_RESERVE_MIN = 64;
/** …or this share of the open-file limit, whichever is larger. */
export const FD_RESERVE_RATIO = 0.05;

/** The effective `MAX_CONNECTIONS` and where it came from. */
export interface ConnectionLimit {
  /** Most sockets open at once; 0 means unlimited. */
  readonly maxConnections: number;
  /**
   * `MAX_CONNECTIONS` (set explicitly), `open_file_limit` (derived from it)
   * or `unknown` (no setting, no readable limit: unlimited).
   */
  readonly source: "MAX_CONNECTIONS" | "open_file_limit" | "unknown";
}

/**
 * Works out `MAX_CONNECTIONS`: the setting when given (0 = unlimited), else
 * the open-file soft limit less a reserve of `max(64, ceil(5 % of it))`,
 * at least 1, so a full server answers 503 `max_connections` before its
 * accept loop runs out of descriptors.
 *
 * @param setting `MAX_CONNECTIONS`, `undefined` when unset.
 * @param fdLimit The open-file soft limit, `undefined` when unknown.
 * @returns The effective limit and its source.
 *
 * @example
 * ```ts
 * connectionLimit(undefined, 20000); // { maxConnections: 19000, source: "open_file_limit" }
 * connectionLimit(undefined, 1024); // { maxConnections: 960, source: "open_file_limit" }
 * ```
 */
export function connectionLimit(
  setting: number | undefined,
  fdLimit: number | undefined,
): ConnectionLimit {
  if (setting !== undefined) {
    return { maxConnections: setting, source: "MAX_CONNECTIONS" };
  }
  if (fdLimit === undefined) return { maxConnections: 0, source: "unknown" };
  const reserve = Math.max(
    FD_RESERVE_MIN,
    Math.ceil(fdLimit * FD_RESERVE_RATIO),
  );
  return {
    maxConnections: Math.max(1, fdLimit - reserve),
    source: "open_file_limit",
  };
}

/** The memory limit the guard works from, and where it came from. */
export interface MemoryLimit {
  /** Bytes. */
  readonly bytes: number;
  /** `MEMORY_LIMIT_BYTES` or `cgroup`. */
  readonly source: "MEMORY_LIMIT_BYTES" | "cgroup";
}

/**
 * Picks the memory guard's limit: `MEMORY_LIMIT_BYTES` when set (0 turns the
 * guard off), else the control group's limit.
 *
 * @param setting `MEMORY_LIMIT_BYTES`, `undefined` when unset.
 * @param cgroup The cgroup limit in bytes, `undefined` when none.
 * @returns The limit, or `undefined` when the guard is off.
 */
export function memoryLimit(
  setting: number | undefined,
  cgroup: number | undefined,
): MemoryLimit | undefined {
  if (setting !== undefined) {
    return setting > 0
      ? { bytes: setting, source: "MEMORY_LIMIT_BYTES" }
      : undefined;
  }
  return cgroup === undefined ? undefined : { bytes: cgroup, source: "cgroup" };
}

/** Bytes of resident memory one idle session record costs (measured). */
export const SESSION_RECORD_BYTES = 300;

/**
 * Works out `MAX_SESSIONS`: the setting when given, else a tenth of the
 * memory limit at {@link SESSION_RECORD_BYTES} each, between 10,000 and
 * 1,000,000; 250,000 (about 75 MB) when no limit is known.
 *
 * @param setting `MAX_SESSIONS`, `undefined` when unset.
 * @param memoryBytes The memory limit in bytes, `undefined` when none.
 * @returns Most sessions the memory store keeps.
 *
 * @example
 * ```ts
 * sessionLimit(undefined, 512 * 2 ** 20); // 178956
 * ```
 */
export function sessionLimit(
  setting: number | undefined,
  memoryBytes: number | undefined,
): number {
  if (setting !== undefined) return setting;
  if (memoryBytes === undefined) return 250_000;
  const derived = Math.floor(memoryBytes / 10 / SESSION_RECORD_BYTES);
  return Math.min(1_000_000, Math.max(10_000, derived));
}

/**
 * Creates the session store the settings ask for.
 *
 * @param settings Parsed settings.
 * @param metrics Where the store's availability goes (`app_dependency_up`).
 * @param maxSessions The memory store's bound (see {@link sessionLimit}).
 * @returns A memory store, or a Redis store when `REDIS_URL` is set; the
 *   Redis store connects in the background.
 */
export function createStore(
  settings: Settings,
  metrics: Metrics,
  maxSessions: number = sessionLimit(settings.maxSessions, undefined),
): SessionStore {
  if (settings.redisUrl === undefined) {
    metrics.dependencyUp.labels("memory").set(1);
    return new MemorySessionStore(settings.sessionTtlS, {
      maxSessions,
      counters: metrics.sessions,
    });
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
    ready: (): boolean =>
      lifecycle.state === "ready" && store.available &&
      lifecycle.faults.size === 0,
    drainingSeconds: (): number | undefined =>
      lifecycle.state === "draining" ? lifecycle.drainSeconds : undefined,
  });
  metrics.start();
  const hub: Hub = new Hub(
    {
      heartbeatIntervalS: settings.heartbeatIntervalS,
      limits: settings,
      tracing,
    },
    metrics,
    logger("ws"),
  );
  hub.start();
  const fdLimit = maxFds();
  const connections = connectionLimit(settings.maxConnections, fdLimit);
  const memory = memoryLimit(settings.memoryLimitBytes, cgroupMemoryLimit());
  const guard = memory && startMemoryGuard(memory, settings, lifecycle, hub);
  metrics.memoryLimit.set(memory?.bytes ?? 0);
  const store = createStore(
    settings,
    metrics,
    sessionLimit(settings.maxSessions, memory?.bytes),
  );
  const limits: ProcessLimits = {
    maxConnections: connections.maxConnections,
    maxFds: fdLimit,
    memoryLimitBytes: memory?.bytes,
  };
  const admin: AdminDeps = {
    settings,
    hub,
    store,
    logLevel: new LogLevelControl(logger(AUDIT)),
    profiler: new Profiler(),
  };
  const deps = { settings, lifecycle, metrics, hub, store, limits, admin };
  const routes = routeSplit(settings);
  const app = createApp(deps, routes.main);
  const adminApp = routes.admin && createApp(deps, routes.admin);
  const ctx = { log, metrics, lifecycle, hub, fdLimit };

  let http: HttpServer | undefined;
  let adminHttp: HttpServer | undefined;
  let pusher: PyroscopePusher | undefined;
  try {
    http = serve({
      hostname: settings.host,
      port: settings.port,
      events: listenerEvents(ctx, "main", () => http!),
    }, (req, info) => app.fetch(req, info));
    if (adminApp) {
      adminHttp = serve({
        hostname: settings.adminHost,
        port: settings.adminPort!,
        events: listenerEvents(ctx, "admin", () => adminHttp!),
      }, (req, info) => adminApp.fetch(req, info));
    }
    if (settings.pyroscopeUrl !== undefined) {
      pusher = new PyroscopePusher({
        url: settings.pyroscopeUrl,
        intervalS: settings.profileIntervalS,
        labels: { color: settings.color, version: VERSION },
        registry: metrics.registry,
        log: logger("profiling"),
      });
      await pusher.start();
    }
  } catch (error) {
    pusher?.stop();
    await http?.shutdown();
    await adminHttp?.shutdown();
    guard?.stop();
    hub[Symbol.dispose]();
    metrics[Symbol.dispose]();
    await store.close();
    throw error;
  }
  metrics.listenerUp.set(1);

  // The startup span covers process start (the time origin) to ready.
  await withRootSpan(tracing, "sockeye startup", (span) => {
    const startupSeconds = lifecycle.ready();
    metrics.startupTime.set(startupSeconds);
    span?.setAttributes({
      "sockeye.startup.duration": startupSeconds,
      "sockeye.store": store.kind,
    });
    log.info("sockeye ready on {host}:{port}", {
      host: http!.hostname,
      port: http!.port,
      admin_host: adminHttp?.hostname,
      admin_port: adminHttp?.port,
      admin_api: adminHttp
        ? "admin_port"
        : routes.main.includes("admin")
        ? "main_port"
        : "off",
      pyroscope: pusher !== undefined,
      startup_seconds: round6(startupSeconds),
      store: store.kind,
      max_connections: connections.maxConnections,
      max_connections_source: connections.source,
      max_fds: fdLimit,
      memory_limit_bytes: memory?.bytes,
      memory_limit_source: memory?.source,
      memory_threshold_bytes: guard?.thresholdBytes,
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
        http: http!,
        adminHttp,
        admin: { ...admin, pusher },
        guard,
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
    adminPort: adminHttp?.port,
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
  adminHttp: HttpServer | undefined;
  admin: AdminDeps & { pusher: PyroscopePusher | undefined };
  guard: MemoryGuard | undefined;
  hurry: AbortSignal;
}): Promise<ShutdownReport> {
  const { settings, lifecycle, metrics, hub, store, http, guard, hurry } = ctx;
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
  // A profile in progress ends now, so no request holds a listener open.
  ctx.admin.profiler.close();
  ctx.admin.pusher?.stop();
  ctx.admin.logLevel.close();
  // Closes what is left (1001) and waits for in-flight HTTP requests.
  await http.shutdown();
  await store.close();
  guard?.stop();
  // The admin port goes last: Prometheus can scrape the drain to its end.
  await ctx.adminHttp?.shutdown();
  metrics[Symbol.dispose]();
  const overran = shutdownSeconds > settings.shutdownTimeoutS;
  log.info("Drain complete", {
    shutdown_seconds: round6(shutdownSeconds),
    closed: result.closed,
    dropped: result.dropped,
    forced: result.forced,
  });
  return { ...result, shutdownSeconds, overran };
}

/** Which route groups each listener serves. */
export interface RouteSplit {
  /** The main port's groups. */
  readonly main: readonly RouteGroup[];
  /** The admin port's groups; `undefined` without `ADMIN_PORT`. */
  readonly admin: readonly RouteGroup[] | undefined;
}

/**
 * Splits the routes between the listeners. With `ADMIN_PORT`, the main port
 * serves the probes and the upgrade, and the admin port the probes, the
 * operations routes and the admin API. Without it the main port serves
 * everything, but the admin API only where that is safe: a loopback `HOST`,
 * or `ADMIN_TOKEN` set; otherwise it is off (404), as it was before it
 * existed.
 *
 * @param settings `ADMIN_PORT`, `HOST`, `ADMIN_TOKEN`.
 * @returns The groups per listener.
 */
export function routeSplit(settings: Settings): RouteSplit {
  if (settings.adminPort !== undefined) {
    return {
      main: ["probes", "websocket"],
      admin: ["probes", "operations", "admin"],
    };
  }
  const adminSafe = isLoopback(settings.host) ||
    settings.adminToken !== undefined;
  return {
    main: adminSafe
      ? ALL_ROUTES
      : ALL_ROUTES.filter((group) => group !== "admin"),
    admin: undefined,
  };
}

/**
 * Reports a listener's accept failures: counted in
 * `http_listener_errors_total`, logged once per episode. The main
 * listener's also set `http_listener_up` and fail readiness while it is
 * down (the admin listener's do not: clients do not reach it).
 */
function listenerEvents(
  ctx: {
    log: Logger;
    metrics: Metrics;
    lifecycle: Lifecycle;
    hub: Hub;
    fdLimit: number | undefined;
  },
  listener: "main" | "admin",
  server: () => HttpServer,
): ListenerEvents {
  const { log, metrics, lifecycle, hub, fdLimit } = ctx;
  const main = listener === "main";
  return {
    onDown(error, reason, episodeStart) {
      metrics.listenerErrors.labels(reason).inc();
      if (main) {
        metrics.listenerUp.set(0);
        lifecycle.fail("listener", error.message);
      }
      if (!episodeStart) return;
      log.error("Listener stopped: {cause}", {
        cause: error.message,
        reason,
        listener,
        port: server().port,
        max_fds: fdLimit,
        active_connections: hub.size,
      });
    },
    onUp() {
      if (!main) return;
      metrics.listenerUp.set(1);
      lifecycle.clear("listener");
    },
    onRecovered(downSeconds, failures) {
      log.info("Listener restored on {host}:{port}", {
        host: server().hostname,
        port: server().port,
        listener,
        down_seconds: round6(downSeconds),
        failures,
        active_connections: hub.size,
      });
    },
  };
}

/**
 * Starts the memory guard: above the threshold, readiness fails (check
 * `process_memory`) and upgrades get 503 `memory_pressure`; one warning line
 * when that starts, one info line when it ends.
 */
function startMemoryGuard(
  memory: MemoryLimit,
  settings: Settings,
  lifecycle: Lifecycle,
  hub: Hub,
): MemoryGuard {
  const log = logger("server");
  const detail = (rss: number) =>
    `rss ${mib(rss)} MiB above ${mib(guard.thresholdBytes)} MiB ` +
    `(${Math.round(settings.memoryGuardRatio * 100)} % of the ${
      mib(memory.bytes)
    } MiB limit)`;
  const fields = (rss: number) => ({
    rss_bytes: rss,
    threshold_bytes: guard.thresholdBytes,
    limit_bytes: memory.bytes,
    limit_source: memory.source,
    active_connections: hub.size,
  });
  const guard: MemoryGuard = new MemoryGuard({
    limitBytes: memory.bytes,
    ratio: settings.memoryGuardRatio,
  }, {
    onPressure(rss) {
      lifecycle.fail("process_memory", detail(rss));
      log.warning(
        "Memory pressure: refusing new WebSockets ({rss_mib} MiB resident)",
        { rss_mib: mib(rss), ...fields(rss) },
      );
    },
    onRelief(rss) {
      lifecycle.clear("process_memory");
      log.info(
        "Memory pressure over: accepting new WebSockets ({rss_mib} MiB resident)",
        { rss_mib: mib(rss), ...fields(rss) },
      );
    },
    onReading(rss) {
      lifecycle.fail("process_memory", detail(rss));
    },
  });
  guard.start();
  return guard;
}

/** Bytes as MiB with one decimal, for messages. */
function mib(bytes: number): number {
  return Math.round(bytes / 104857.6) / 10;
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
