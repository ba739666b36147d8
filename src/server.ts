/**
 * Wires settings, store, hub, metrics and the HTTP app into a running
 * server, and owns the drain sequence.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import {
  ALL_ROUTES,
  createHandler,
  type ProcessLimits,
  type RouteGroup,
} from "./app.ts";
import type { AdminDeps } from "./admin/app.ts";
import { AdminEvents } from "./admin/events.ts";
import { LogLevelControl } from "./admin/log_level.ts";
import { Profiler } from "./admin/profiler.ts";
import { PyroscopePusher } from "./admin/pyroscope.ts";
import { runDrain, type ShutdownReport } from "./drain.ts";
import { Lifecycle, roundSeconds } from "./lifecycle.ts";
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
import { Hub } from "./sessions/hub.ts";
import {
  connectionLimit,
  type MemoryLimit,
  memoryLimit,
  sessionLimit,
} from "./limits.ts";
import { MemorySessionStore } from "./sessions/memory_store.ts";
import { RedisSessionStore, type RedisTarget } from "./sessions/redis_store.ts";
import type { SessionStore } from "./sessions/store.ts";

/** A started sockeye server. */
export interface Server {
  /** The bound port. */
  readonly port: number;
  /** Lifecycle state and timings. */
  readonly lifecycle: Lifecycle;
  /** The metrics registry. */
  readonly metrics: Metrics;
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
 * Where the settings put the Redis session store.
 *
 * @param settings Parsed settings.
 * @returns The server, Sentinel master or Cluster; `undefined` for the
 *   memory store.
 */
export function redisTarget(settings: Settings): RedisTarget | undefined {
  if (settings.redisSentinels !== undefined) {
    return {
      kind: "sentinel",
      sentinels: settings.redisSentinels,
      name: settings.redisSentinelName,
      sentinelPassword: settings.redisSentinelPassword,
      username: settings.redisUsername,
      password: settings.redisPassword,
    };
  }
  if (settings.redisClusterNodes !== undefined) {
    return {
      kind: "cluster",
      nodes: settings.redisClusterNodes,
      username: settings.redisUsername,
      password: settings.redisPassword,
    };
  }
  if (settings.redisUrl !== undefined) {
    return { kind: "server", url: settings.redisUrl };
  }
  return undefined;
}

/**
 * Replicas each batch of counts must reach before it is answered: the
 * setting, or unset 1 with Sentinel or Cluster (they fail over, and an
 * asynchronous replica may miss the last writes) and 0 for one server.
 *
 * @param configured `REDIS_WAIT_REPLICAS`, if set.
 * @param target Where Redis is.
 * @returns A count of replicas.
 */
export function waitReplicas(
  configured: number | undefined,
  target: RedisTarget,
): number {
  return configured ?? (target.kind === "server" ? 0 : 1);
}

/**
 * Creates the session store the settings ask for.
 *
 * @param settings Parsed settings.
 * @param metrics Where the store's availability goes (`app_dependency_up`).
 * @param maxSessions The memory store's bound (see {@link sessionLimit}).
 * @returns A memory store, or a Redis store when `REDIS_URL`,
 *   `REDIS_SENTINELS` or `REDIS_CLUSTER_NODES` is set; the Redis store
 *   connects in the background.
 */
export function createStore(
  settings: Settings,
  metrics: Metrics,
  maxSessions: number = sessionLimit(settings.maxSessions, undefined),
): SessionStore {
  const target = redisTarget(settings);
  if (target === undefined) {
    metrics.dependencyUp.labels("memory").set(1);
    return new MemorySessionStore(settings.sessionTtlS, {
      maxSessions,
      counters: metrics.sessions,
    });
  }
  const up = metrics.dependencyUp.labels("redis");
  up.set(0);
  return new RedisSessionStore(
    target,
    settings.sessionTtlS,
    logger("redis"),
    { onAvailability: (available) => up.set(available ? 1 : 0) },
    { waitReplicas: waitReplicas(settings.redisWaitReplicas, target) },
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
  // Each part goes on the stack as it starts; disposing the stack stops them
  // in reverse. A failed start unwinds here (`await using`); a started server
  // moves the stack to its drain, which ends with it. Registered so that the
  // drain stops profiles, the public listener, the store, the admin listener
  // (last: Prometheus scrapes the drain to its end), then the metrics.
  await using stack = new AsyncDisposableStack();
  const metrics: Metrics = new Metrics(settings.color, {
    activeConnections: (): number => hub.size,
    ready: (): boolean =>
      lifecycle.state === "ready" && store.available &&
      lifecycle.faults.size === 0,
    drainingSeconds: (): number | undefined =>
      lifecycle.state === "draining" ? lifecycle.drainSeconds : undefined,
  });
  stack.use(metrics).start();
  const last = stack.use(new AsyncDisposableStack());
  const hub: Hub = new Hub(
    {
      heartbeatIntervalS: settings.heartbeatIntervalS,
      limits: settings,
      tracing,
    },
    metrics,
    logger("ws"),
  );
  stack.use(hub).start();
  const fdLimit = maxFds();
  const connections = connectionLimit(settings.maxConnections, fdLimit);
  const memory = memoryLimit(settings.memoryLimitBytes, cgroupMemoryLimit());
  const guard = memory && memoryGuard(memory, settings, lifecycle, hub);
  if (guard) stack.use(guard).start();
  metrics.memoryLimit.set(memory?.bytes ?? 0);
  const store = createStore(
    settings,
    metrics,
    sessionLimit(settings.maxSessions, memory?.bytes),
  );
  stack.defer(() => store.close());
  store.start();
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
    events: new AdminEvents({
      color: settings.color,
      lifecycle,
      metrics,
      store,
    }),
  };
  const deps = { settings, lifecycle, metrics, hub, store, limits, admin };
  const routes = routeSplit(settings);
  const handler = createHandler(deps, routes.main);
  const adminHandler = routes.admin && createHandler(deps, routes.admin);
  const ctx = { log, metrics, lifecycle, hub, fdLimit };

  const http: HttpServer = serve({
    hostname: settings.host,
    port: settings.port,
    events: listenerEvents(ctx, "main", () => http),
  }, handler);
  // Closes what is left (1001) and waits for in-flight HTTP requests.
  stack.defer(() => http.shutdown());
  let adminHttp: HttpServer | undefined;
  if (adminHandler) {
    const listener: HttpServer = adminHttp = serve({
      hostname: settings.adminHost,
      port: settings.adminPort!,
      events: listenerEvents(ctx, "admin", () => listener),
    }, adminHandler);
    last.defer(() => listener.shutdown());
  }
  stack.defer(() => admin.logLevel.close());
  let pusher: PyroscopePusher | undefined;
  if (settings.pyroscopeUrl !== undefined) {
    const started = pusher = new PyroscopePusher({
      url: settings.pyroscopeUrl,
      intervalS: settings.profileIntervalS,
      labels: { color: settings.color, version: VERSION },
      registry: metrics.registry,
      log: logger("profiling"),
    });
    stack.defer(() => started.stop());
    await started.start();
  }
  // The operator page's event streams end, so none holds a listener open.
  stack.defer(() => admin.events?.close());
  // A profile in progress ends first, so no request holds a listener open.
  stack.defer(() => admin.profiler.close());
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
      host: http.hostname,
      port: http.port,
      admin_host: adminHttp?.hostname,
      admin_port: adminHttp?.port,
      admin_api: adminHttp
        ? "admin_port"
        : routes.main.includes("admin")
        ? "main_port"
        : "off",
      pyroscope: pusher !== undefined,
      startup_seconds: roundSeconds(startupSeconds),
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

  const resources = stack.move();
  let drained: Promise<ShutdownReport> | undefined;
  const hurry = new AbortController();
  const drain = (reason: string) =>
    drained ??= withRootSpan(tracing, "sockeye drain", async (span) => {
      const report = await runDrain(reason, {
        settings,
        lifecycle,
        metrics,
        hub,
        resources,
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
    drain,
    hurry: () => hurry.abort(),
  };
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
        down_seconds: roundSeconds(downSeconds),
        failures,
        active_connections: hub.size,
      });
    },
  };
}

/**
 * Makes the memory guard (its `start()` starts it): above the threshold, readiness fails (check
 * `process_memory`) and upgrades get 503 `memory_pressure`; one warning line
 * when that starts, one info line when it ends.
 */
function memoryGuard(
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
  return guard;
}

/** Bytes as MiB with one decimal, for messages. */
function mib(bytes: number): number {
  return Math.round(bytes / 104857.6) / 10;
}
