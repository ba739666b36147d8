/**
 * Upgrade admission: the checks a `GET /ws/chat/` passes before it becomes a
 * socket, in the order a client can fix them (RFC 6455 §4.2.1 handshake,
 * then the server's state, then the client's own request), ending with the
 * session attached in the store.
 *
 * Returns a typed {@link Refused} instead of throwing, so the route renders
 * every refusal the same way (status, JSON body, metric, log line).
 *
 * @module
 */
import type { Lifecycle } from "../lifecycle.ts";
import type { Settings } from "../settings.ts";
import { SUBPROTOCOL } from "./frames.ts";
import { type HttpRefusal, REFUSALS } from "./refusals.ts";
import {
  type SessionHandle,
  SessionLimitError,
  type SessionStore,
  StoreUnavailableError,
} from "./store.ts";

/** Session ids clients may choose (UUIDs match). */
export const SESSION_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Query parameters naming the session, in order of precedence. */
export const SESSION_PARAMS = [
  "session_uuid",
  "session_id",
  "session",
] as const;

/** The base64 encoding of 16 bytes: 22 characters and `==` (RFC 6455 §4.1). */
const WEBSOCKET_KEY_RE = /^[A-Za-z0-9+/]{22}==$/;

/** An upgrade refused before it happened: the cause, what to say, why. */
export class Refused {
  /** The cause, with its status, label and headers. */
  readonly refusal: HttpRefusal;
  /** The message for the client (the cause's reason unless more is known). */
  readonly message: string;
  /** The underlying error, for the log line. */
  readonly cause: unknown;

  /**
   * Creates the refusal.
   *
   * @param refusal A cause from {@link REFUSALS}.
   * @param message A more specific message than the cause's reason.
   * @param cause The underlying error, if any.
   */
  constructor(refusal: HttpRefusal, message?: string, cause?: unknown) {
    this.refusal = refusal;
    this.message = message ?? refusal.reason;
    this.cause = cause;
  }
}

/** An upgrade that passed every check, its session attached. */
export interface Admitted {
  /** The session id (the client's, or a fresh UUID v4). */
  readonly sessionId: string;
  /** The attached session; release it if the upgrade fails after all. */
  readonly session: SessionHandle;
  /** Whether the client listed the `sockeye.v1` subprotocol. */
  readonly wantsSessionFrame: boolean;
}

/** What admission reads. */
export interface AdmissionDeps {
  /** Parsed settings (`ALLOWED_ORIGINS`). */
  readonly settings: Settings;
  /** Whether upgrades are accepted, and the memory guard's fault. */
  readonly lifecycle: Lifecycle;
  /** Sockets open now. */
  readonly openSockets: () => number;
  /** Where sessions are attached. */
  readonly store: SessionStore;
  /** The effective `MAX_CONNECTIONS`; 0 is unlimited. */
  readonly maxConnections: number;
}

/**
 * Reads the session id from an upgrade URL.
 *
 * @param url The request URL.
 * @returns The client's id or a fresh UUID v4 when none (or an empty one) is
 *   given; a {@link Refused} `invalid_session_id` when the id does not match
 *   {@link SESSION_ID_RE}.
 */
export function sessionIdFrom(url: URL): string | Refused {
  for (const name of SESSION_PARAMS) {
    const value = url.searchParams.get(name);
    if (value === null || value === "") continue;
    if (!SESSION_ID_RE.test(value)) {
      return new Refused(
        REFUSALS.invalidSessionId,
        `Cannot use ${name}: expected 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'`,
      );
    }
    return value;
  }
  return crypto.randomUUID();
}

/**
 * Tells whether a `Sec-WebSocket-Protocol` list names `sockeye.v1`: a
 * comma-separated list, whitespace around the commas optional (RFC 9110 §5.6.1).
 *
 * @param header The header's value, if any.
 * @returns `true` when the list holds {@link SUBPROTOCOL}.
 */
export function wantsSubprotocol(header: string | null): boolean {
  if (!header) return false;
  return header.split(",").some((p) => p.trim() === SUBPROTOCOL);
}

/**
 * Checks the handshake headers Deno's upgrade does not: the protocol version
 * and the form of the key (RFC 6455 §4.2.1).
 *
 * @param headers The upgrade request's headers.
 * @returns `undefined` when both are right; else a {@link Refused}
 *   `bad_upgrade`, with `Sec-WebSocket-Version: 13` for a wrong version
 *   (RFC 6455 §4.4).
 */
export function checkHandshake(headers: Headers): Refused | undefined {
  if (headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return new Refused(REFUSALS.upgradeRequired);
  }
  if (headers.get("sec-websocket-version") !== "13") {
    return new Refused(REFUSALS.badVersion);
  }
  const key = headers.get("sec-websocket-key");
  if (key === null || !WEBSOCKET_KEY_RE.test(key)) {
    return new Refused(REFUSALS.badKey);
  }
  return undefined;
}

/** Admits upgrades; one per server. */
export class Admission {
  readonly #deps: AdmissionDeps;
  /** Upgrades waiting on the store: they count toward `MAX_CONNECTIONS`. */
  #attaching = 0;

  /**
   * Creates the gate; it starts nothing.
   *
   * @param deps Settings, lifecycle, socket count, store and limit.
   */
  constructor(deps: AdmissionDeps) {
    this.#deps = deps;
  }

  /**
   * Runs every check and attaches the session.
   *
   * @param req The upgrade request.
   * @returns The admitted upgrade, or why it is refused.
   */
  async admit(req: Request): Promise<Admitted | Refused> {
    const { settings, lifecycle, store, maxConnections } = this.#deps;
    const handshake = checkHandshake(req.headers);
    if (handshake !== undefined) return handshake;
    if (!lifecycle.acceptingUpgrades) return new Refused(REFUSALS.draining);
    if (lifecycle.faults.has("process_memory")) {
      return new Refused(REFUSALS.memoryPressure);
    }
    const origin = req.headers.get("origin");
    if (
      origin !== null && settings.allowedOrigins !== undefined &&
      !settings.allowedOrigins.includes(origin)
    ) {
      return new Refused(
        REFUSALS.originNotAllowed,
        `Origin ${origin} is not allowed`,
      );
    }
    if (
      maxConnections > 0 &&
      this.#deps.openSockets() + this.#attaching >= maxConnections
    ) {
      return new Refused(REFUSALS.maxConnections);
    }
    const sessionId = sessionIdFrom(new URL(req.url));
    if (sessionId instanceof Refused) return sessionId;
    let session: SessionHandle;
    this.#attaching++;
    try {
      session = await store.attach(sessionId);
    } catch (error) {
      return new Refused(
        error instanceof SessionLimitError
          ? REFUSALS.maxSessions
          : error instanceof StoreUnavailableError
          ? REFUSALS.storeUnavailable
          : REFUSALS.internalUpgrade,
        undefined,
        error,
      );
    } finally {
      this.#attaching--;
    }
    return {
      sessionId,
      session,
      wantsSessionFrame: wantsSubprotocol(
        req.headers.get("sec-websocket-protocol"),
      ),
    };
  }
}
