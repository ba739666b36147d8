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
import {
  Authenticator,
  AuthFailure,
  AuthUnavailableError,
  tokenFrom,
} from "./auth.ts";
import { limitKey } from "./client_address.ts";
import { ClientLimits } from "./client_limits.ts";
import { SUBPROTOCOL } from "./frames.ts";
import { type HttpRefusal, REFUSALS } from "./refusals.ts";
import { SessionIds } from "./session_ids.ts";
import {
  SessionForbiddenError,
  type SessionHandle,
  SessionLimitError,
  type SessionStore,
  StoreUnavailableError,
} from "./store.ts";
import { TokenExpiry } from "./token_expiry.ts";

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

/** What a {@link Refused} adds to its cause's answer and log line. */
export interface RefusedDetail {
  /** Response headers over the cause's own, e.g. a computed `Retry-After`. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Fields for the log line, e.g. `reason` (which token check failed). */
  readonly fields?: Readonly<Record<string, unknown>>;
}

/** An upgrade refused before it happened: the cause, what to say, why. */
export class Refused {
  /** The cause, with its status, label and headers. */
  readonly refusal: HttpRefusal;
  /** The message for the client (the cause's reason unless more is known). */
  readonly message: string;
  /** The underlying error, for the log line. */
  readonly cause: unknown;
  /** The response headers: the cause's, and any the detail adds. */
  readonly headers: Readonly<Record<string, string>>;
  /** Extra fields for the log line. */
  readonly fields: Readonly<Record<string, unknown>>;

  /**
   * Creates the refusal.
   *
   * @param refusal A cause from {@link REFUSALS}.
   * @param message A more specific message than the cause's reason.
   * @param cause The underlying error, if any.
   * @param detail Headers and log fields beyond the cause's.
   */
  constructor(
    refusal: HttpRefusal,
    message?: string,
    cause?: unknown,
    detail: RefusedDetail = {},
  ) {
    this.refusal = refusal;
    this.message = message ?? refusal.reason;
    this.cause = cause;
    this.headers = detail.headers === undefined
      ? refusal.headers
      : { ...refusal.headers, ...detail.headers };
    this.fields = detail.fields ?? {};
  }
}

/** An upgrade that passed every check, its session attached. */
export interface Admitted {
  /**
   * The session id: the client's, or a fresh one (a UUID v4, or a MAC'd id
   * with `SESSION_SECRET`).
   */
  readonly sessionId: string;
  /** The attached session; release it if the upgrade fails after all. */
  readonly session: SessionHandle;
  /** Whether the client listed the `sockeye.v1` subprotocol. */
  readonly wantsSessionFrame: boolean;
  /** The client's address (behind a trusted proxy, from `X-Forwarded-For`). */
  readonly remoteAddr: string;
  /** The token's subject, with authentication on. */
  readonly userId: string | undefined;
  /** When the token expires, in epoch ms; `undefined` without one or its `exp`. */
  readonly expiresAt: number | undefined;
  /**
   * Arms the token's expiry for the open connection: `expire` runs once,
   * within a second after `exp`, unless {@link Admitted.release} ran first.
   * Nothing happens without an `exp`.
   *
   * @param expire Closes the connection (1008 `token expired`).
   */
  watch(expire: () => void): void;
  /**
   * Gives back what admission holds for the connection (its per-client slot,
   * its place in the expiry schedule); call once the socket has closed, or
   * when the upgrade fails after admission. Idempotent.
   */
  release(): void;
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
  /**
   * Verifies tokens; by default the one the settings ask for (none leaves
   * authentication off).
   */
  readonly auth?: Authenticator;
}

/** What an upgrade URL without a query has: no parameters. */
const NO_PARAMETERS: URLSearchParams = new URLSearchParams();

/**
 * The query parameters of a request URL as `Deno.serve` gives it, without
 * parsing the rest of the URL: an upgrade seldom has a query (a resume
 * has one, a fresh connection none), and parsing the URL costs more than
 * reading it.
 *
 * @param url An absolute request URL, e.g. `http://host/ws/chat/?a=b`.
 * @returns Its parameters (WHATWG URL's `application/x-www-form-urlencoded`
 *   parsing, as `URL#searchParams`); an empty, shared set without a query.
 */
export function queryOf(url: string): URLSearchParams {
  const start = url.indexOf("?");
  if (start < 0) return NO_PARAMETERS;
  const hash = url.indexOf("#", start);
  return new URLSearchParams(
    hash < 0 ? url.slice(start + 1) : url.slice(start + 1, hash),
  );
}

/** The session id a client asked for, and the parameter that named it. */
interface RequestedId {
  readonly name: string;
  readonly value: string;
}

function requestedSessionId(
  query: URLSearchParams,
): RequestedId | Refused | undefined {
  for (const name of SESSION_PARAMS) {
    const value = query.get(name);
    if (value === null || value === "") continue;
    if (!SESSION_ID_RE.test(value)) {
      return new Refused(
        REFUSALS.invalidSessionId,
        `Cannot use ${name}: expected 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'`,
      );
    }
    return { name, value };
  }
  return undefined;
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

/** {@link Admitted.watch} without a token expiry: nothing to arm. */
function noWatch(): void {}

/** Admits upgrades; one per server. */
export class Admission {
  readonly #deps: AdmissionDeps;
  readonly #auth: Authenticator | undefined;
  readonly #ids: SessionIds;
  readonly #limits: ClientLimits;
  readonly #limitsOn: boolean;
  readonly #expiry = new TokenExpiry();
  /** Upgrades being admitted (token, store): they count toward `MAX_CONNECTIONS`. */
  #attaching = 0;

  /**
   * Creates the gate; it starts nothing (a key set is fetched at the first
   * token, the expiry tick runs only while a token waits to expire).
   *
   * @param deps Settings, lifecycle, socket count, store and limit.
   */
  constructor(deps: AdmissionDeps) {
    const { settings } = deps;
    this.#deps = deps;
    this.#auth = deps.auth ?? Authenticator.fromSettings(settings);
    this.#ids = new SessionIds(settings.sessionSecret);
    this.#limits = new ClientLimits({
      connectRatePerS: settings.connectRateLimitPerS,
      maxConnectionsPerClient: settings.maxConnectionsPerClient,
    });
    this.#limitsOn = settings.connectRateLimitPerS > 0 ||
      settings.maxConnectionsPerClient > 0;
  }

  /**
   * Runs every check and attaches the session.
   *
   * @param req The upgrade request.
   * @param remoteAddr The client's address (see `TrustedProxies`).
   * @returns The admitted upgrade, or why it is refused; at once when
   *   nothing had to be awaited (no token, a store that answers at once),
   *   else a promise of it. The promise rejects, and a call throws, only on
   *   an error of the service's own.
   */
  admit(
    req: Request,
    remoteAddr: string,
  ): Admitted | Refused | Promise<Admitted | Refused> {
    const { settings, lifecycle, maxConnections } = this.#deps;
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
    // Before the token: a flood of bad tokens must not cost a signature
    // check each.
    const addressKey = this.#limitsOn ? limitKey(remoteAddr) : remoteAddr;
    const wait = this.#limits.takeConnect(addressKey);
    if (wait > 0) {
      return new Refused(REFUSALS.connectRateLimited, undefined, undefined, {
        headers: { "Retry-After": String(wait) },
      });
    }
    const query = queryOf(req.url);
    const requested = requestedSessionId(query);
    if (requested instanceof Refused) return requested;
    const client = { remoteAddr, addressKey };
    const result = this.#auth === undefined
      ? this.#attach(req, requested, client, undefined, undefined)
      : this.#authenticate(this.#auth, req, query).then((verdict) =>
        verdict instanceof Refused ? verdict : this.#attach(
          req,
          requested,
          client,
          verdict.subject,
          verdict.expiresAt,
        )
      );
    if (!(result instanceof Promise)) return result;
    // Until it is attached, an upgrade that waits counts toward
    // `MAX_CONNECTIONS`.
    this.#attaching++;
    return result.finally(() => this.#attaching--);
  }

  /** The token's check: its subject and expiry, or why it is refused. */
  async #authenticate(
    auth: Authenticator,
    req: Request,
    query: URLSearchParams,
  ): Promise<
    { subject: string | undefined; expiresAt: number | undefined } | Refused
  > {
    let verdict;
    try {
      verdict = await auth.verify(tokenFrom(req.headers, query));
    } catch (error) {
      return new Refused(
        error instanceof AuthUnavailableError
          ? REFUSALS.authUnavailable
          : REFUSALS.internalUpgrade,
        undefined,
        error,
      );
    }
    if (verdict instanceof AuthFailure) {
      return new Refused(
        verdict.reason === "missing"
          ? REFUSALS.tokenMissing
          : REFUSALS.tokenInvalid,
        verdict.message,
        undefined,
        { fields: { reason: verdict.reason } },
      );
    }
    return verdict;
  }

  /**
   * The client's own checks after its token: session id, per-client cap,
   * store.
   */
  #attach(
    req: Request,
    requested: RequestedId | undefined,
    client: { remoteAddr: string; addressKey: string },
    subject: string | undefined,
    expiresAt: number | undefined,
  ): Admitted | Refused | Promise<Admitted | Refused> {
    const userFields = subject === undefined ? {} : { user_id: subject };
    let sessionId: string;
    if (requested === undefined) sessionId = this.#ids.issue(subject);
    else if (this.#ids.verify(requested.value, subject)) {
      sessionId = requested.value;
    } else if (subject !== undefined) {
      // Not issued to this subject: issued to another, or never. The answer
      // is the same either way, and the store is not asked.
      return new Refused(REFUSALS.sessionForbidden, undefined, undefined, {
        fields: userFields,
      });
    } else {
      return new Refused(
        REFUSALS.invalidSessionId,
        `Cannot use ${requested.name}: not a session id this server issued`,
      );
    }
    const releaseSlot = this.#limits.acquire(
      subject === undefined ? client.addressKey : `sub:${subject}`,
    );
    if (releaseSlot === undefined) {
      return new Refused(REFUSALS.tooManyConnections, undefined, undefined, {
        fields: userFields,
      });
    }
    let session: SessionHandle | Promise<SessionHandle>;
    try {
      session = this.#deps.store.attach(sessionId, subject);
    } catch (error) {
      return this.#attachFailed(error, releaseSlot, userFields);
    }
    if (!(session instanceof Promise)) {
      return this.#admitted(
        req,
        sessionId,
        session,
        client,
        subject,
        expiresAt,
        releaseSlot,
      );
    }
    return session.then(
      (s) =>
        this.#admitted(
          req,
          sessionId,
          s,
          client,
          subject,
          expiresAt,
          releaseSlot,
        ),
      (error) => this.#attachFailed(error, releaseSlot, userFields),
    );
  }

  /** The store could not attach the session: the slot back, the refusal. */
  #attachFailed(
    error: unknown,
    releaseSlot: () => void,
    userFields: Readonly<Record<string, unknown>>,
  ): Refused {
    releaseSlot();
    if (error instanceof SessionForbiddenError) {
      return new Refused(REFUSALS.sessionForbidden, undefined, undefined, {
        fields: userFields,
      });
    }
    return new Refused(
      error instanceof SessionLimitError
        ? REFUSALS.maxSessions
        : error instanceof StoreUnavailableError
        ? REFUSALS.storeUnavailable
        : REFUSALS.internalUpgrade,
      undefined,
      error,
    );
  }

  /** The admitted upgrade, its session attached. */
  #admitted(
    req: Request,
    sessionId: string,
    session: SessionHandle,
    client: { remoteAddr: string },
    subject: string | undefined,
    expiresAt: number | undefined,
    releaseSlot: () => void,
  ): Admitted {
    const holds = this.#holds(releaseSlot, expiresAt);
    return {
      sessionId,
      session,
      wantsSessionFrame: wantsSubprotocol(
        req.headers.get("sec-websocket-protocol"),
      ),
      remoteAddr: client.remoteAddr,
      userId: subject,
      expiresAt,
      watch: holds.watch,
      release: holds.release,
    };
  }

  /**
   * `watch` and `release` for an admitted upgrade. An open socket keeps its
   * `release`: without a token expiry that is the slot's own release
   * (idempotent; one shared no-op without a per-client cap), so a socket
   * keeps a closure of admission's (about 130 bytes) only when it has a
   * token expiry to cancel.
   */
  #holds(
    releaseSlot: () => void,
    expiresAt: number | undefined,
  ): Pick<Admitted, "watch" | "release"> {
    if (expiresAt === undefined) {
      return { watch: noWatch, release: releaseSlot };
    }
    let cancelExpiry: (() => void) | undefined;
    let released = false;
    return {
      watch: (expire) => {
        if (released) return;
        cancelExpiry = this.#expiry.add(expiresAt, expire);
      },
      release: () => {
        if (released) return;
        released = true;
        releaseSlot();
        cancelExpiry?.();
      },
    };
  }
}
