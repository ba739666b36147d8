/**
 * The HTTP surface as Hono apps built from route groups: the probes
 * (`/healthz`, `/readyz`), the WebSocket upgrade at `/ws/chat/` (in
 * `upgrade_route.ts`, which also serves it ahead of the app), the operations
 * routes (`/status`, `/metrics`) and the admin API (`/admin/…`, `/debug/…`,
 * in `admin/app.ts`), with the pages beside them (the client at `/` with the
 * upgrade, the operator page at `/admin/` with the admin API; `pages.ts`),
 * each app with request ids and HTTP metrics. One listener serves them all,
 * or with `ADMIN_PORT` the public port serves the probes and the upgrade and
 * the admin port the rest.
 *
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { routePath } from "hono/route";
import { withContext } from "@logtape/logtape";
import { HttpError } from "./http_error.ts";
import type { Lifecycle } from "./lifecycle.ts";
import { logger } from "./observability/logging.ts";
import type { Metrics } from "./observability/metrics.ts";
import { KNOWN_HTTP_METHODS } from "./observability/tracing.ts";
import type { ConnInfo, Handler } from "./platform.ts";
import type { Settings } from "./settings.ts";
import type { Hub } from "./sessions/hub.ts";
import type { SessionStore } from "./sessions/store.ts";
import { TrustedProxies } from "./sessions/client_address.ts";
import { authenticationMode } from "./sessions/auth.ts";
import {
  REQUEST_ID_HEADER,
  requestIdFrom,
  requestRecorder,
  UpgradeRoute,
} from "./upgrade_route.ts";
import { VERSION } from "./version.ts";
import { type AdminDeps, adminRoutes } from "./admin/app.ts";
import { adminPageRoutes, clientPageRoutes } from "./pages.ts";

/** Everything the routes read. */
export interface AppDeps {
  /** Parsed settings. */
  readonly settings: Settings;
  /** Lifecycle state, for the probes and the upgrade gate. */
  readonly lifecycle: Lifecycle;
  /** Where HTTP and refusal figures go. */
  readonly metrics: Metrics;
  /** Takes over upgraded sockets. */
  readonly hub: Hub;
  /** Session store, for upgrades and the readiness check. */
  readonly store: SessionStore;
  /** Limits worked out at start; by default from the settings alone. */
  readonly limits?: ProcessLimits;
  /** What the admin API works with; without it, no admin routes. */
  readonly admin?: AdminDeps;
}

/**
 * A set of routes an app can serve: `probes` (`/healthz`, `/readyz`),
 * `websocket` (`/ws/chat/` and the client page at `/`), `operations`
 * (`/status`, `/metrics`), `admin` (`/admin/…`, `/debug/…` and the operator
 * page at `/admin/`).
 */
export type RouteGroup = "probes" | "websocket" | "operations" | "admin";

/** Every route group: one listener serving everything. */
export const ALL_ROUTES: readonly RouteGroup[] = [
  "probes",
  "websocket",
  "operations",
  "admin",
];

/** Limits worked out at start from the settings and the process (server.ts). */
export interface ProcessLimits {
  /** The effective `MAX_CONNECTIONS`; 0 means unlimited. */
  readonly maxConnections: number;
  /** The open-file soft limit, when known. */
  readonly maxFds: number | undefined;
  /** The memory guard's limit in bytes, when the guard is on. */
  readonly memoryLimitBytes: number | undefined;
}

/** Hono's environment for every sockeye app: the peer, the request id. */
export type AppEnv = {
  Bindings: ConnInfo;
  Variables: { requestId: string };
};
type Env = AppEnv;

/**
 * The `method` label of the HTTP metrics: one of the methods OpenTelemetry
 * calls known (RFC 9110 and PATCH), else `other`, so that made-up methods
 * cannot grow the label set.
 *
 * @param method The request method as received (case-sensitive).
 * @returns The method, or `other`.
 */
export function methodLabel(method: string): string {
  return KNOWN_HTTP_METHODS.has(method) ? method : "other";
}

/**
 * Builds a Hono app serving some route groups; every other path is a JSON
 * 404.
 *
 * @param deps Settings, lifecycle, metrics, hub, store and the admin API's deps.
 * @param groups The route groups it serves; all by default.
 * @returns The app; serve it with `app.fetch(request, connInfo)`.
 */
export function createApp(
  deps: AppDeps,
  groups: readonly RouteGroup[] = ALL_ROUTES,
): Hono<AppEnv> {
  return buildApp(deps, groups).app;
}

/**
 * Builds the listener's request handler for some route groups: the app, with
 * the WebSocket upgrade served before it (see `upgrade_route.ts`).
 *
 * @param deps Settings, lifecycle, metrics, hub, store and the admin API's deps.
 * @param groups The route groups it serves; all by default.
 * @returns The handler for `serve`.
 */
export function createHandler(
  deps: AppDeps,
  groups: readonly RouteGroup[] = ALL_ROUTES,
): Handler {
  const { app, upgrade } = buildApp(deps, groups);
  if (upgrade === undefined) return (req, info) => app.fetch(req, info);
  return (req, info) => upgrade.direct(req, info) ?? app.fetch(req, info);
}

function buildApp(
  deps: AppDeps,
  groups: readonly RouteGroup[],
): { app: Hono<AppEnv>; upgrade: UpgradeRoute | undefined } {
  const { metrics, settings } = deps;
  const httpLog = logger("http");
  const proxies = new TrustedProxies(settings.trustedProxies);
  const clientAddress = (c: Context<Env>): string =>
    proxies.clientAddress(
      c.env?.remoteAddr ?? "",
      c.req.header("X-Forwarded-For") ?? null,
    );
  const record = requestRecorder(metrics, methodLabel);
  const app = new Hono<Env>();

  app.use(async (c, next) => {
    const start = performance.now();
    const id = requestIdFrom(c.req.header(REQUEST_ID_HEADER) ?? null);
    c.set("requestId", id);
    c.header(REQUEST_ID_HEADER, id);
    await withContext({ request_id: id }, next);
    const res = c.res;
    // Responses built outside Hono (the 101) miss headers set by c.header().
    if (!res.headers.has(REQUEST_ID_HEADER)) {
      res.headers.set(REQUEST_ID_HEADER, id);
    }
    const route = routePath(c, -1);
    const matched = route !== "*" && route !== "/*";
    record(
      c.req.method,
      matched ? route : undefined,
      c.req.path,
      res.status,
      (performance.now() - start) / 1000,
      id,
    );
  });

  app.onError((error, c) => {
    if (error instanceof HttpError) {
      httpLog.warning("Refusing {method} {path}: {message}", {
        method: c.req.method,
        path: c.req.path,
        message: error.message,
        status: error.status,
        remote_addr: clientAddress(c),
      });
      return c.json(
        { error: "http_error", message: error.message },
        error.status as 400,
        error.headers,
      );
    }
    httpLog.error("Unhandled error in {path}: {error}", {
      path: c.req.path,
      error,
    });
    return c.json({ error: "internal", message: "Internal server error" }, 500);
  });

  app.notFound((c) =>
    c.json({ error: "not_found", message: `No route for ${c.req.path}` }, 404)
  );

  if (groups.includes("probes")) probeRoutes(app, deps);
  if (groups.includes("operations")) operationsRoutes(app, deps);
  if (groups.includes("admin") && deps.admin) {
    // The page first: it loads without the token and then asks for it.
    adminPageRoutes(app, !groups.includes("websocket"));
    adminRoutes(app, deps.admin);
  }
  let upgrade: UpgradeRoute | undefined;
  if (groups.includes("websocket")) {
    const route = upgrade = new UpgradeRoute({
      ...deps,
      maxConnections: processLimits(deps).maxConnections,
      proxies,
      record,
    });
    const handle = (c: Context<Env>) =>
      route.handle(c.req.raw, clientAddress(c), c.get("requestId"));
    app.get("/ws/chat/", handle);
    app.get("/ws/chat", handle);
    clientPageRoutes(app);
  }
  return { app, upgrade };
}

/** The limits `/status` reports, from start-up or from the settings alone. */
function processLimits(deps: AppDeps): ProcessLimits {
  return deps.limits ?? {
    maxConnections: deps.settings.maxConnections ?? 0,
    maxFds: undefined,
    memoryLimitBytes: undefined,
  };
}

/** `/healthz` and `/readyz`. */
function probeRoutes(app: Hono<Env>, deps: AppDeps): void {
  const { settings, lifecycle, hub, store } = deps;
  app.get("/healthz", (c) =>
    c.json({
      status: "healthy",
      color: settings.color,
      version: VERSION,
      uptime_seconds: round3(lifecycle.uptimeSeconds),
      timestamp: new Date().toISOString(),
    }));

  app.get("/readyz", async (c) => {
    const checks: Record<string, string> = {};
    let status = lifecycle.state === "ready"
      ? "ready"
      : lifecycle.state === "starting"
      ? "starting"
      : "draining";
    try {
      await store.check();
      checks[store.kind] = "ok";
    } catch (error) {
      checks[store.kind] = `error: ${(error as Error).message}`;
      if (status === "ready") status = "not_ready";
    }
    // The listener and memory checks appear only while they fail.
    for (const [fault, detail] of lifecycle.faults) {
      checks[fault] = `error: ${detail}`;
      if (status === "ready") status = "not_ready";
    }
    return c.json({
      status,
      color: settings.color,
      active_connections: hub.size,
      checks,
    }, status === "ready" ? 200 : 503);
  });
}

/** `/status` and `/metrics`. */
function operationsRoutes(app: Hono<Env>, deps: AppDeps): void {
  const { settings, lifecycle, metrics, hub, store } = deps;
  const limits = processLimits(deps);
  app.get("/status", (c) =>
    c.json({
      service: "sockeye",
      version: VERSION,
      color: settings.color,
      state: lifecycle.state,
      uptime_seconds: round3(lifecycle.uptimeSeconds),
      startup_seconds: lifecycle.startupSeconds,
      active_connections: hub.size,
      store: store.kind,
      heartbeat_interval_s: settings.heartbeatIntervalS,
      shutdown_timeout_s: settings.shutdownTimeoutS,
      drain_delay_s: settings.drainDelayS,
      session_ttl_s: settings.sessionTtlS,
      limits: {
        max_message_bytes: settings.maxMessageBytes,
        max_connections: limits.maxConnections,
        rate_limit_per_s: settings.rateLimitPerS,
        idle_timeout_s: settings.idleTimeoutS,
        allowed_origins: settings.allowedOrigins ?? null,
        max_fds: limits.maxFds ?? null,
        memory_limit_bytes: limits.memoryLimitBytes ?? null,
        memory_guard_ratio: settings.memoryGuardRatio,
        connect_rate_limit_per_s: settings.connectRateLimitPerS,
        max_connections_per_client: settings.maxConnectionsPerClient,
      },
      authentication: authenticationMode(settings),
      signed_session_ids: settings.sessionSecret !== undefined,
    }));

  const auth = bearerToken(settings.metricsToken, "metrics", "Metrics");
  app.get("/metrics", auth, async (c) => {
    const accept = c.req.header("Accept") ?? "";
    const { body, contentType } = await metrics.scrape(
      accept.includes("application/openmetrics-text"),
    );
    return c.body(body, 200, { "Content-Type": contentType });
  });
}

/**
 * Middleware requiring `Authorization: Bearer <token>` (RFC 6750), compared
 * in constant time; a miss is a 401 with `WWW-Authenticate`, logged without
 * the header's value. No token: the routes stay open.
 *
 * @param token The expected token, `undefined` for none.
 * @param realm The `WWW-Authenticate` realm, e.g. `admin`.
 * @param what Names the routes in the message, e.g. `Admin endpoints`.
 * @returns The middleware.
 */
export function bearerToken(
  token: string | undefined,
  realm: string,
  what: string,
): MiddlewareHandler<AppEnv> {
  const expected = token === undefined ? undefined : `Bearer ${token}`;
  return async (c, next) => {
    if (
      expected !== undefined &&
      !secretsEqual(c.req.header("Authorization") ?? "", expected)
    ) {
      throw new HttpError(401, `${what} require a bearer token`, {
        headers: { "WWW-Authenticate": `Bearer realm="${realm}"` },
      });
    }
    await next();
  };
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

/** Compares secrets in constant time (equal-length digests for node:crypto). */
function secretsEqual(a: string, b: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(a), digest(b));
}
