/**
 * The HTTP surface as a Hono app: probes, `/status`, `/metrics` and the
 * WebSocket upgrade at `/ws/chat/`, with request ids and HTTP metrics.
 *
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { type Context, Hono } from "hono";
import { requestId } from "hono/request-id";
import { routePath } from "hono/route";
import { withContext } from "@logtape/logtape";
import { HttpError } from "./http_error.ts";
import type { Lifecycle } from "./lifecycle.ts";
import { logger } from "./observability/logging.ts";
import type { Metrics } from "./observability/metrics.ts";
import {
  activeSpan,
  nameServerSpan,
  recordError,
} from "./observability/tracing.ts";
import { type ConnInfo, upgradeWebSocket } from "./platform.ts";
import type { Settings } from "./settings.ts";
import { SUBPROTOCOL } from "./sessions/frames.ts";
import type { Hub } from "./sessions/hub.ts";
import {
  SessionLimitError,
  type SessionStore,
  StoreUnavailableError,
} from "./sessions/store.ts";
import { VERSION } from "./version.ts";

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
}

type Env = {
  Bindings: ConnInfo;
  Variables: { requestId: string };
};

/** Session ids clients may choose (UUIDs match). */
export const SESSION_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Query parameters naming the session, in order of precedence. */
export const SESSION_PARAMS = [
  "session_uuid",
  "session_id",
  "session",
] as const;

/**
 * Reads the session id from an upgrade URL.
 *
 * @param url The request URL.
 * @returns The client's id, or a fresh UUID v4 when none (or an empty one) is given.
 * @throws {HttpError} 400 when the id does not match {@link SESSION_ID_RE}.
 */
export function sessionIdFrom(url: URL): string {
  for (const name of SESSION_PARAMS) {
    const value = url.searchParams.get(name);
    if (value === null || value === "") continue;
    if (!SESSION_ID_RE.test(value)) {
      throw new HttpError(
        400,
        `Cannot use ${name}: expected 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'`,
        { errorType: "invalid_session_id" },
      );
    }
    return value;
  }
  return crypto.randomUUID();
}

function wantsSubprotocol(header: string | undefined): boolean {
  if (!header) return false;
  return header.split(",").some((p) => p.trim() === SUBPROTOCOL);
}

/**
 * Builds the Hono app.
 *
 * @param deps Settings, lifecycle, metrics, hub and store.
 * @returns The app; serve it with `app.fetch(request, connInfo)`.
 */
export function createApp(deps: AppDeps): Hono<Env> {
  const { settings, lifecycle, metrics, hub, store } = deps;
  const httpLog = logger("http");
  const wsLog = logger("ws");
  const app = new Hono<Env>();

  app.use(requestId({ headerName: "X-Request-ID", limitLength: 128 }));
  app.use(async (c, next) => {
    const start = performance.now();
    const id = c.get("requestId");
    await withContext({ request_id: id }, next);
    const res = c.res;
    // Responses built outside Hono (the 101) miss headers set by c.header().
    if (!res.headers.has("X-Request-ID")) res.headers.set("X-Request-ID", id);
    const route = routePath(c, -1);
    const endpoint = route === "*" || route === "/*" ? "unmatched" : route;
    const method = c.req.method;
    nameServerSpan(method, endpoint);
    const seconds = (performance.now() - start) / 1000;
    metrics.httpRequests.labels(method, endpoint, String(res.status)).inc();
    metrics.httpDuration.labels(method, endpoint).observe(seconds);
    httpLog.debug("{method} {path} {status}", {
      method,
      path: c.req.path,
      status: res.status,
      duration_ms: Math.round(seconds * 1e6) / 1000,
      request_id: id,
    });
  });

  app.onError((error, c) => {
    if (error instanceof HttpError) {
      if (error.errorType !== undefined) {
        metrics.error(error.errorType);
        recordError(activeSpan(), error.errorType, error.message);
        wsLog.warning("Refusing WebSocket upgrade: {message}", {
          message: error.message,
          status: error.status,
          error_type: error.errorType,
          ...(error.cause === undefined ? {} : { error: error.cause }),
          remote_addr: c.env?.remoteAddr,
          user_agent: c.req.header("User-Agent"),
        });
      } else {
        httpLog.warning("Refusing {method} {path}: {message}", {
          method: c.req.method,
          path: c.req.path,
          message: error.message,
          status: error.status,
          remote_addr: c.env?.remoteAddr,
        });
      }
      return c.json(
        { error: error.errorType ?? "http_error", message: error.message },
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
    return c.json({
      status,
      color: settings.color,
      active_connections: hub.size,
      checks,
    }, status === "ready" ? 200 : 503);
  });

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
        max_connections: settings.maxConnections,
        rate_limit_per_s: settings.rateLimitPerS,
        idle_timeout_s: settings.idleTimeoutS,
        allowed_origins: settings.allowedOrigins ?? null,
      },
    }));

  app.get("/metrics", async (c) => {
    if (settings.metricsToken !== undefined) {
      const auth = c.req.header("Authorization") ?? "";
      if (!secretsEqual(auth, `Bearer ${settings.metricsToken}`)) {
        throw new HttpError(401, "Metrics require a bearer token", {
          headers: { "WWW-Authenticate": 'Bearer realm="metrics"' },
        });
      }
    }
    const accept = c.req.header("Accept") ?? "";
    const { body, contentType } = await metrics.scrape(
      accept.includes("application/openmetrics-text"),
    );
    return c.body(body, 200, { "Content-Type": contentType });
  });

  let attaching = 0;
  const upgrade = async (c: Context<Env>) => {
    const req = c.req.raw;
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      throw new HttpError(426, "Expected a WebSocket upgrade", {
        errorType: "upgrade_required",
        headers: { Upgrade: "websocket" },
      });
    }
    if (!lifecycle.acceptingUpgrades) {
      throw new HttpError(503, "Server is shutting down", {
        errorType: "draining",
        headers: { "Retry-After": "1" },
      });
    }
    const origin = req.headers.get("origin");
    if (
      origin !== null && settings.allowedOrigins !== undefined &&
      !settings.allowedOrigins.includes(origin)
    ) {
      throw new HttpError(403, `Origin ${origin} is not allowed`, {
        errorType: "origin_not_allowed",
      });
    }
    // Upgrades still waiting on the store count too, or a burst overshoots.
    if (
      settings.maxConnections > 0 &&
      hub.size + attaching >= settings.maxConnections
    ) {
      throw new HttpError(503, "Server is at MAX_CONNECTIONS", {
        errorType: "max_connections",
        headers: { "Retry-After": "1" },
      });
    }
    const sessionId = sessionIdFrom(new URL(req.url));
    let session;
    attaching++;
    try {
      session = await store.attach(sessionId);
    } catch (error) {
      if (error instanceof SessionLimitError) {
        throw new HttpError(503, "Server is at MAX_SESSIONS", {
          errorType: "max_sessions",
          headers: { "Retry-After": "1" },
          cause: error,
        });
      }
      if (!(error instanceof StoreUnavailableError)) {
        throw new HttpError(500, "Cannot open the session", {
          errorType: "internal",
          cause: error,
        });
      }
      throw new HttpError(503, "Session store unavailable", {
        errorType: "store_unavailable",
        headers: { "Retry-After": "1" },
        cause: error,
      });
    } finally {
      attaching--;
    }
    const wantsSessionFrame = wantsSubprotocol(
      req.headers.get("sec-websocket-protocol") ?? undefined,
    );
    // The request's headers are gone once it is upgraded: read them now.
    const userAgent = req.headers.get("user-agent") ?? "";
    let upgraded;
    try {
      upgraded = upgradeWebSocket(req, {
        protocol: wantsSessionFrame ? SUBPROTOCOL : undefined,
        idleTimeoutS: settings.idleTimeoutS,
      });
    } catch (error) {
      session.release();
      throw new HttpError(400, "Invalid WebSocket upgrade request", {
        errorType: "bad_upgrade",
        cause: error,
      });
    }
    upgraded.response.headers.set("X-Session-UUID", sessionId);
    hub.add(upgraded.socket, session, {
      remoteAddr: c.env?.remoteAddr ?? "",
      userAgent,
      requestId: c.get("requestId"),
      wantsSessionFrame,
    });
    return upgraded.response;
  };
  app.get("/ws/chat/", upgrade);
  app.get("/ws/chat", upgrade);

  return app;
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

/** Compares secrets in constant time (equal-length digests for node:crypto). */
function secretsEqual(a: string, b: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(a), digest(b));
}
