/**
 * The WebSocket upgrade at `/ws/chat/` (and `/ws/chat`): admission, the
 * refusal's answer, the handover to the hub, and the request's figures.
 *
 * A release moves every client of a color at once, so the upgrade is served
 * straight from the listener ({@link UpgradeRoute.direct}): a `GET` of the
 * route skips the router and middleware chain and does what they would do
 * for it (request id, HTTP metrics, span name, debug line, JSON 500 on an
 * unexpected error) in one function. Anything else (e.g. `HEAD`, an encoded
 * path) goes through the app's route, which calls the same
 * {@link UpgradeRoute.handle}.
 *
 * @module
 */
import type { Metrics } from "./observability/metrics.ts";
import { levelFlags, logger } from "./observability/logging.ts";
import {
  activeSpan,
  nameServerSpan,
  recordError,
} from "./observability/tracing.ts";
import { type ConnInfo, upgradeWebSocket } from "./platform.ts";
import type { Settings } from "./settings.ts";
import type { Lifecycle } from "./lifecycle.ts";
import { Admission, type Admitted, Refused } from "./sessions/admission.ts";
import type { TrustedProxies } from "./sessions/client_address.ts";
import { SUBPROTOCOL } from "./sessions/frames.ts";
import type { Hub } from "./sessions/hub.ts";
import { REFUSALS } from "./sessions/refusals.ts";
import { randomUuid } from "./sessions/session_ids.ts";
import type { SessionStore } from "./sessions/store.ts";

/** The request id header, read and echoed on every response. */
export const REQUEST_ID_HEADER = "X-Request-ID";

/** Longest request id taken from a client; a longer one is replaced. */
const REQUEST_ID_MAX_LENGTH = 128;

/** Characters a client's request id may use (Hono's request-id rule). */
const REQUEST_ID_FORBIDDEN = /[^\w\-=]/;

/**
 * The request's id: the client's `X-Request-ID` when it is at most 128
 * word characters, `-` or `=`, else a new UUID (a string of its own: see
 * `randomUuid`).
 *
 * @param header The header's value, or `null`.
 * @returns The id to log and echo.
 */
export function requestIdFrom(header: string | null): string {
  return header && header.length <= REQUEST_ID_MAX_LENGTH &&
      !REQUEST_ID_FORBIDDEN.test(header)
    ? header
    : randomUuid();
}

/**
 * Records one answered request: `http_requests_total`,
 * `http_request_duration_seconds`, the server span's name and route
 * (OpenTelemetry HTTP semantic conventions) and a debug line.
 */
export type RequestRecorder = (
  method: string,
  route: string | undefined,
  path: string,
  status: number,
  seconds: number,
  requestId: string,
) => void;

/**
 * Builds the {@link RequestRecorder} every route of an app shares.
 *
 * @param metrics Where the HTTP figures go.
 * @param methodLabel The bounded `method` label of a request method.
 * @returns The recorder.
 */
export function requestRecorder(
  metrics: Metrics,
  methodLabel: (method: string) => string,
): RequestRecorder {
  const httpLog = logger("http");
  return (method, route, path, status, seconds, requestId) => {
    nameServerSpan(method, route);
    // Every label from a fixed set: the method, the route table, and a status
    // this app chose (a client cannot make up any of them).
    const label = methodLabel(method);
    const endpoint = route ?? "unmatched";
    metrics.http.record(label, endpoint, status, seconds);
    if (!levelFlags.debug) return;
    httpLog.debug("{method} {path} {status}", {
      method,
      path,
      status,
      duration_ms: Math.round(seconds * 1e6) / 1000,
      request_id: requestId,
    });
  };
}

/** What the upgrade works with. */
export interface UpgradeDeps {
  /** `IDLE_TIMEOUT_S` and the admission settings. */
  readonly settings: Settings;
  /** Lifecycle state: upgrades are refused while starting or draining. */
  readonly lifecycle: Lifecycle;
  /** Refusals are counted here. */
  readonly metrics: Metrics;
  /** Takes over upgraded sockets. */
  readonly hub: Hub;
  /** Where sessions are attached. */
  readonly store: SessionStore;
  /** The effective `MAX_CONNECTIONS`; 0 means unlimited. */
  readonly maxConnections: number;
  /** Finds the client's address behind trusted proxies. */
  readonly proxies: TrustedProxies;
  /** Records the answered request. */
  readonly record: RequestRecorder;
}

/** The `/ws/chat/` upgrade, served from the app's route or the listener. */
export class UpgradeRoute {
  readonly #deps: UpgradeDeps;
  readonly #admission: Admission;
  readonly #log = logger("ws");

  /**
   * Creates the route.
   *
   * @param deps Settings, lifecycle, metrics, hub, store and limits.
   */
  constructor(deps: UpgradeDeps) {
    this.#deps = deps;
    const { settings, lifecycle, store, hub, maxConnections } = deps;
    this.#admission = new Admission({
      settings,
      lifecycle,
      store,
      openSockets: () => hub.size,
      maxConnections,
    });
  }

  /**
   * Serves a `GET` of `/ws/chat/` or `/ws/chat` from the listener, recording
   * it as the app's middleware would.
   *
   * @param req The request.
   * @param info The peer.
   * @returns The 101 or the refusal (a promise of it when admission
   *   waits); `undefined` when the request is not such a `GET` (the app
   *   serves it).
   */
  direct(
    req: Request,
    info: ConnInfo,
  ): Response | Promise<Response> | undefined {
    if (req.method !== "GET") return undefined;
    const path = pathOf(req.url);
    if (path !== "/ws/chat/" && path !== "/ws/chat") return undefined;
    return this.#direct(req, info, path);
  }

  #direct(
    req: Request,
    info: ConnInfo,
    path: string,
  ): Response | Promise<Response> {
    const start = performance.now();
    const requestId = requestIdFrom(req.headers.get(REQUEST_ID_HEADER));
    const proxies = this.#deps.proxies;
    let res: Response | Promise<Response>;
    try {
      res = this.handle(
        req,
        proxies.enabled
          ? proxies.clientAddress(
            info.remoteAddr,
            req.headers.get("X-Forwarded-For"),
          )
          : info.remoteAddr,
        requestId,
      );
    } catch (error) {
      return this.#done(
        this.#failed(error, path, requestId),
        path,
        start,
        requestId,
      );
    }
    // Answered at once without a token or a store to wait for: no promise.
    if (!(res instanceof Promise)) {
      return this.#done(res, path, start, requestId);
    }
    return res.then(
      (r) => this.#done(r, path, start, requestId),
      (error) =>
        this.#done(
          this.#failed(error, path, requestId),
          path,
          start,
          requestId,
        ),
    );
  }

  /** Stamps the request id on the answer and records the request. */
  #done(
    res: Response,
    path: string,
    start: number,
    requestId: string,
  ): Response {
    res.headers.set(REQUEST_ID_HEADER, requestId);
    this.#deps.record(
      "GET",
      path,
      path,
      res.status,
      (performance.now() - start) / 1000,
      requestId,
    );
    return res;
  }

  /** The answer to an unexpected error: one line, a JSON 500. */
  #failed(error: unknown, path: string, requestId: string): Response {
    logger("http").error("Unhandled error in {path}: {error}", {
      path,
      error,
      request_id: requestId,
    });
    return Response.json(
      { error: "internal", message: "Internal server error" },
      { status: 500 },
    );
  }

  /**
   * Admits the request and upgrades it, or refuses it: status, JSON body,
   * `websocket_errors_total`, the span's error and one log line.
   *
   * @param req The upgrade request.
   * @param remoteAddr The client's address.
   * @param requestId The request's id, for the connection's log lines.
   * @returns The 101 or the refusal; a promise of it when admission waits
   *   (a token to verify, a store over the network).
   * @throws {Error} Only on an error of the service's own (answered 500).
   */
  handle(
    req: Request,
    remoteAddr: string,
    requestId: string,
  ): Response | Promise<Response> {
    const admitted = this.#admission.admit(req, remoteAddr);
    return admitted instanceof Promise
      ? admitted.then((a) => this.#upgrade(req, a, remoteAddr, requestId))
      : this.#upgrade(req, admitted, remoteAddr, requestId);
  }

  /** Upgrades an admitted request, or renders its refusal. */
  #upgrade(
    req: Request,
    admitted: Admitted | Refused,
    remoteAddr: string,
    requestId: string,
  ): Response {
    if (admitted instanceof Refused) {
      return this.#refuse(req, admitted, remoteAddr, requestId);
    }
    const { session, sessionId, wantsSessionFrame } = admitted;
    // The request's headers are gone once it is upgraded: read them now.
    const userAgent = req.headers.get("user-agent") ?? "";
    let upgraded;
    try {
      upgraded = upgradeWebSocket(req, {
        protocol: wantsSessionFrame ? SUBPROTOCOL : undefined,
        idleTimeoutS: this.#deps.settings.idleTimeoutS,
      });
    } catch (error) {
      session.release();
      admitted.release();
      return this.#refuse(
        req,
        new Refused(REFUSALS.badUpgrade, undefined, error),
        remoteAddr,
        requestId,
      );
    }
    upgraded.response.headers.set("X-Session-UUID", sessionId);
    const conn = this.#deps.hub.add(upgraded.socket, session, {
      remoteAddr,
      userAgent,
      requestId,
      wantsSessionFrame,
      userId: admitted.userId,
      onClose: admitted.release,
    });
    admitted.watch(() => conn.reject(REFUSALS.tokenExpired));
    return upgraded.response;
  }

  /** Renders a refusal: status, JSON body, metric, span, one log line. */
  #refuse(
    req: Request,
    refused: Refused,
    remoteAddr: string,
    requestId: string,
  ): Response {
    const { refusal, message, cause } = refused;
    this.#deps.metrics.error(refusal.errorType);
    recordError(activeSpan(), refusal.errorType, message);
    this.#log[refusal.level]("Refusing WebSocket upgrade: {message}", {
      message,
      status: refusal.status,
      error_type: refusal.errorType,
      ...refused.fields,
      ...(cause === undefined ? {} : { error: cause }),
      remote_addr: remoteAddr,
      user_agent: req.headers.get("User-Agent") ?? undefined,
      request_id: requestId,
    });
    return Response.json(
      { error: refusal.errorType, message },
      { status: refusal.status, headers: refused.headers },
    );
  }
}

/**
 * The path of a request URL as `Deno.serve` gives it (`http://host/path?q`),
 * without parsing the whole URL.
 *
 * @param url An absolute URL.
 * @returns The path, undecoded, e.g. `/ws/chat/`.
 */
export function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("://") + 3);
  if (start < 0) return "/";
  const query = url.indexOf("?", start);
  return query < 0 ? url.slice(start) : url.slice(start, query);
}
