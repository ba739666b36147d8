/**
 * Every cause for refusing an upgrade or closing a socket, in one table:
 * its answer (an RFC 6455 close code, an HTTP status, or a frame), its
 * `websocket_errors_total{error_type}` label, the reason the client reads and
 * the level of its one log line.
 *
 * A cause is a value, not a `(code, label, reason)` triple repeated at call
 * sites; the pre-exported label set of `websocket_errors_total` and the
 * README's refusal table (checked by a test) come from here.
 *
 * @module
 */

/** RFC 6455 §7.4.1 close codes the service sends. */
export const CloseCode = {
  /** 1000: normal closure. */
  normal: 1000,
  /** 1001: going away (drain, idle timeout). */
  goingAway: 1001,
  /** 1002: protocol error. */
  protocolError: 1002,
  /** 1003: unsupported data (binary frame). */
  unsupportedData: 1003,
  /** 1008: policy violation (rate limit, slow consumer, token expired). */
  policyViolation: 1008,
  /** 1009: message too big. */
  messageTooBig: 1009,
  /** 1011: internal error. */
  internalError: 1011,
  /** 4001 (private use, RFC 6455 §7.4.2): an operator ended the session. */
  operatorDisconnect: 4001,
} as const;

/**
 * Close codes kept as their own `websocket_disconnects_total{code}` label:
 * RFC 6455's registered codes and the private-use code this server sends.
 */
const LABELLED_CLOSE_CODES: ReadonlySet<number> = new Set([
  1000,
  1001,
  1002,
  1003,
  1005,
  1006,
  1007,
  1008,
  1009,
  1010,
  1011,
  1012,
  1013,
  1014,
  1015,
  CloseCode.operatorDisconnect,
]);

/**
 * The `code` label of `websocket_disconnects_total` for a close code, bounded:
 * any code not registered by RFC 6455 nor sent by this server is `other`.
 *
 * @param code The close code sent or received (1006 for none).
 * @returns The code as a string, or `other`.
 */
export function closeCodeLabel(code: number): string {
  return LABELLED_CLOSE_CODES.has(code) ? String(code) : "other";
}

/**
 * A close code as counted until the scrape labels it: the code itself when
 * it has a label of its own, else 0 (which {@link closeCodeLabel} calls
 * `other`), so the counts are as bounded as the labels.
 *
 * @param code The close code sent or received (1006 for none).
 * @returns The code, or 0.
 */
export function closeCodeKey(code: number): number {
  return LABELLED_CLOSE_CODES.has(code) ? code : 0;
}

/** A cause answered by closing an open socket. */
export interface CloseRefusal {
  /** How the cause is answered. */
  readonly kind: "close";
  /** The RFC 6455 close code sent. */
  readonly code: number;
  /** `websocket_errors_total` label. */
  readonly errorType: string;
  /** The close reason (at most 123 bytes of UTF-8). */
  readonly reason: string;
  /** Level of the cause's log line. */
  readonly level: "warning" | "error";
}

/** A cause answered with an HTTP status before the upgrade. */
export interface HttpRefusal {
  /** How the cause is answered. */
  readonly kind: "http";
  /** The HTTP status. */
  readonly status: number;
  /** `websocket_errors_total` label, also the JSON body's `error`. */
  readonly errorType: string;
  /** The JSON body's `message`. */
  readonly reason: string;
  /** Level of the cause's log line. */
  readonly level: "warning" | "error";
  /** Extra response headers, e.g. `Retry-After`. */
  readonly headers: Readonly<Record<string, string>>;
}

/** A cause answered with a frame; the socket stays open. */
export interface FrameRefusal {
  /** How the cause is answered. */
  readonly kind: "frame";
  /** `websocket_errors_total` label. */
  readonly errorType: string;
  /** What the log line says. */
  readonly reason: string;
  /** Level of the cause's log line. */
  readonly level: "warning" | "error";
}

/**
 * A violation the runtime answers itself by ending the connection (no close
 * frame, or 1002 for a bad close frame); sockeye counts and logs it.
 */
export interface DropRefusal {
  /** How the cause is answered. */
  readonly kind: "drop";
  /** `websocket_errors_total` label. */
  readonly errorType: string;
  /** What the log line says. */
  readonly reason: string;
  /** Level of the cause's log line. */
  readonly level: "warning" | "error";
}

/** Any refusal. */
export type Refusal = CloseRefusal | HttpRefusal | FrameRefusal | DropRefusal;

function close(
  code: number,
  errorType: string,
  reason: string,
  level: "warning" | "error" = "warning",
): CloseRefusal {
  return Object.freeze({ kind: "close", code, errorType, reason, level });
}

function drop(errorType: string, reason: string): DropRefusal {
  return Object.freeze({ kind: "drop", errorType, reason, level: "warning" });
}

function http(
  status: number,
  errorType: string,
  reason: string,
  headers: Record<string, string> = {},
  level: "warning" | "error" = "warning",
): HttpRefusal {
  return Object.freeze({
    kind: "http",
    status,
    errorType,
    reason,
    level,
    headers: Object.freeze(headers),
  });
}

const RETRY_SOON = { "Retry-After": "1" };

/** Every cause, by name (see {@link REFUSALS}). */
export interface Refusals {
  /** An operator closed the socket through the admin API: 4001. */
  readonly operatorDisconnect: CloseRefusal;
  /** The token's `exp` passed on an open socket: 1008. */
  readonly tokenExpired: CloseRefusal;
  /** Authentication on and no token: 401. */
  readonly tokenMissing: HttpRefusal;
  /** A token that fails a check: 401. */
  readonly tokenInvalid: HttpRefusal;
  /** Another subject's session: 403. */
  readonly sessionForbidden: HttpRefusal;
  /** Over `CONNECT_RATE_LIMIT_PER_S` for the client: 429. */
  readonly connectRateLimited: HttpRefusal;
  /** At `MAX_CONNECTIONS_PER_CLIENT`: 429. */
  readonly tooManyConnections: HttpRefusal;
  /** The key set cannot be fetched: 503. */
  readonly authUnavailable: HttpRefusal;
  /** A binary frame: 1003. */
  readonly binaryFrame: CloseRefusal;
  /** A text frame over `MAX_MESSAGE_BYTES`: 1009. */
  readonly messageTooBig: CloseRefusal;
  /** Over `RATE_LIMIT_PER_S`: 1008. */
  readonly rateLimited: CloseRefusal;
  /** A client that does not read: 1008. */
  readonly slowConsumer: CloseRefusal;
  /** No pong within `IDLE_TIMEOUT_S`: 1001 (sent by the runtime). */
  readonly idleTimeout: CloseRefusal;
  /** A frame breaking RFC 6455: the runtime ends the connection. */
  readonly protocolError: DropRefusal;
  /** A frame announcing 64 MiB or more: the runtime ends the connection. */
  readonly frameHeaderTooBig: DropRefusal;
  /** An internal error while counting: 1011. */
  readonly internal: CloseRefusal;
  /** The store cannot count a frame: `{"error": "unavailable", "retry": true}`. */
  readonly storeUnavailableFrame: FrameRefusal;
  /** A plain GET: 426. */
  readonly upgradeRequired: HttpRefusal;
  /** `Sec-WebSocket-Version` other than 13: 400. */
  readonly badVersion: HttpRefusal;
  /** A malformed `Sec-WebSocket-Key`: 400. */
  readonly badKey: HttpRefusal;
  /** An upgrade the runtime refuses: 400. */
  readonly badUpgrade: HttpRefusal;
  /** A session id not matching `^[A-Za-z0-9_-]{1,64}$`: 400. */
  readonly invalidSessionId: HttpRefusal;
  /** An `Origin` outside `ALLOWED_ORIGINS`: 403. */
  readonly originNotAllowed: HttpRefusal;
  /** Draining: 503. */
  readonly draining: HttpRefusal;
  /** Above the memory guard's threshold: 503. */
  readonly memoryPressure: HttpRefusal;
  /** At `MAX_CONNECTIONS`: 503. */
  readonly maxConnections: HttpRefusal;
  /** Every stored session held, at `MAX_SESSIONS`: 503. */
  readonly maxSessions: HttpRefusal;
  /** The store cannot attach the session: 503. */
  readonly storeUnavailable: HttpRefusal;
  /** An unexpected error attaching the session: 500. */
  readonly internalUpgrade: HttpRefusal;
}

/** Every cause, by name. */
export const REFUSALS: Refusals = Object.freeze({
  // On an open socket.
  binaryFrame: close(
    CloseCode.unsupportedData,
    "binary_frame",
    "binary frames are not supported",
  ),
  messageTooBig: close(
    CloseCode.messageTooBig,
    "message_too_big",
    "message too big",
  ),
  rateLimited: close(
    CloseCode.policyViolation,
    "rate_limited",
    "rate limit exceeded",
  ),
  slowConsumer: close(
    CloseCode.policyViolation,
    "slow_consumer",
    "slow consumer",
  ),
  tokenExpired: close(
    CloseCode.policyViolation,
    "token_expired",
    "token expired",
  ),
  idleTimeout: close(
    CloseCode.goingAway,
    "idle_timeout",
    "no pong within the idle timeout",
  ),
  protocolError: drop("protocol_error", "WebSocket dropped by the runtime"),
  frameHeaderTooBig: drop(
    "message_too_big",
    "WebSocket dropped by the runtime: frame too large",
  ),
  internal: close(
    CloseCode.internalError,
    "internal",
    "internal error",
    "error",
  ),
  operatorDisconnect: close(
    CloseCode.operatorDisconnect,
    "closed_by_operator",
    "disconnected by operator",
  ),
  storeUnavailableFrame: Object.freeze(
    {
      kind: "frame",
      errorType: "store_unavailable",
      reason: "session store cannot count the frame",
      level: "error",
    } as const,
  ),
  // Before the upgrade.
  upgradeRequired: http(
    426,
    "upgrade_required",
    "Expected a WebSocket upgrade",
    { Upgrade: "websocket" },
  ),
  badVersion: http(
    400,
    "bad_upgrade",
    "Cannot use Sec-WebSocket-Version: expected 13",
    { "Sec-WebSocket-Version": "13" },
  ),
  badKey: http(
    400,
    "bad_upgrade",
    "Cannot use Sec-WebSocket-Key: expected the base64 encoding of 16 bytes",
  ),
  badUpgrade: http(400, "bad_upgrade", "Invalid WebSocket upgrade request"),
  invalidSessionId: http(
    400,
    "invalid_session_id",
    "Cannot use the session id: expected 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'",
  ),
  originNotAllowed: http(403, "origin_not_allowed", "Origin is not allowed"),
  // RFC 6750 §3.1: a request without credentials gets no error code.
  tokenMissing: http(
    401,
    "unauthorized",
    "Authentication required: send a bearer token",
    { "WWW-Authenticate": 'Bearer realm="sockeye"' },
  ),
  tokenInvalid: http(
    401,
    "unauthorized",
    "Invalid token",
    { "WWW-Authenticate": 'Bearer error="invalid_token"' },
  ),
  sessionForbidden: http(
    403,
    "session_forbidden",
    "Cannot use the session id: it is not this subject's",
  ),
  connectRateLimited: http(
    429,
    "connect_rate_limited",
    "Too many connection attempts from this client",
    RETRY_SOON,
  ),
  tooManyConnections: http(
    429,
    "too_many_connections",
    "Too many open connections for this client",
    { "Retry-After": "5" },
  ),
  authUnavailable: http(
    503,
    "auth_unavailable",
    "Cannot verify tokens now",
    { "Retry-After": "5" },
    "error",
  ),
  draining: http(503, "draining", "Server is shutting down", RETRY_SOON),
  memoryPressure: http(
    503,
    "memory_pressure",
    "Server is under memory pressure",
    { "Retry-After": "5" },
  ),
  maxConnections: http(
    503,
    "max_connections",
    "Server is at MAX_CONNECTIONS",
    RETRY_SOON,
  ),
  maxSessions: http(
    503,
    "max_sessions",
    "Server is at MAX_SESSIONS",
    RETRY_SOON,
  ),
  storeUnavailable: http(
    503,
    "store_unavailable",
    "Session store unavailable",
    RETRY_SOON,
  ),
  internalUpgrade: http(
    500,
    "internal",
    "Cannot open the session",
    {},
    "error",
  ),
});

/** The name of a cause in {@link REFUSALS}. */
export type RefusalName = keyof Refusals;

/**
 * Every `error_type` of `websocket_errors_total`, each exported from the
 * start at 0 so `rate()` and alerts see the series before the first error.
 */
export const ERROR_TYPES: readonly string[] = Object.freeze([
  ...new Set(Object.values(REFUSALS).map((r: Refusal) => r.errorType)),
]);
