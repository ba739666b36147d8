/**
 * The session store interface: where each session's count lives.
 *
 * `memory_store.ts` keeps counts in this process (the default);
 * `redis_store.ts` keeps them in Redis so any instance can resume them.
 *
 * @module
 */

/** One connection's hold on a session. */
export interface SessionHandle {
  /** The session id. */
  readonly id: string;
  /** The count when the connection attached. */
  readonly initialCount: number;
  /** Whether the session existed before this connection. */
  readonly resumed: boolean;
  /**
   * Counts one text frame. The memory store answers synchronously so the
   * hot path never awaits; stores over the network answer with a promise.
   *
   * @returns The new count, durable once returned.
   * @throws {StoreUnavailableError} When the count cannot be stored durably.
   */
  increment(): number | Promise<number>;
  /**
   * Reads the session's count, for the drain's bye frame.
   *
   * @returns The session's durable count now.
   * @throws {StoreUnavailableError} When the store cannot answer.
   */
  total(): number | Promise<number>;
  /** Ends this connection's hold; the session's TTL runs from now. */
  release(): void;
}

/** Where sessions live. */
export interface SessionStore {
  /** `memory` or `redis`, reported by `/status` and `/readyz`. */
  readonly kind: "memory" | "redis";
  /** Whether the store answered its last connection attempt (always true in memory). */
  readonly available: boolean;
  /**
   * Attaches a connection to a session, creating it when missing or expired.
   * With an owner (authentication on), a new session is stored with it,
   * atomically with its count, and an existing one attaches only for the
   * same owner.
   *
   * @param id A session id matching `^[A-Za-z0-9_-]{1,64}$`.
   * @param owner The token subject connecting, with authentication on.
   * @returns The connection's handle.
   * @throws {StoreUnavailableError} When the store cannot answer.
   * @throws {SessionLimitError} When the session is new and the store is full.
   * @throws {SessionForbiddenError} When `owner` is given and the session
   *   exists with another owner or none (it was created without
   *   authentication).
   */
  attach(id: string, owner?: string): SessionHandle | Promise<SessionHandle>;
  /**
   * Deletes a session's stored count, for an operator (the admin port's
   * `DELETE /admin/sessions/{id}?forget=true`): the next connection with
   * this id starts at 0. Sockets still holding it keep no claim on it.
   *
   * @param id A session id.
   * @returns Whether a session was stored under `id`.
   * @throws {StoreUnavailableError} When the store cannot answer.
   */
  forget(id: string): boolean | Promise<boolean>;
  /**
   * Readiness check.
   *
   * @returns Resolves when the store answers.
   * @throws {StoreUnavailableError} Naming what failed.
   */
  check(): Promise<void>;
  /**
   * Starts the store's timers and connections (the constructor starts
   * none); a second call does nothing.
   */
  start(): void;
  /** Releases timers and connections; the store is unusable afterwards. */
  close(): Promise<void>;
}

/** The store cannot answer now; the client may retry. */
export class StoreUnavailableError extends Error {
  /**
   * Creates the error.
   *
   * @param message What failed, e.g. `Redis did not answer within 500 ms`.
   * @param options The underlying error as `cause`.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreUnavailableError";
  }
}

/**
 * The store is full: every session it may keep is held by an open socket,
 * so a new one cannot be created (`MAX_SESSIONS`). Answered with HTTP 503
 * `max_sessions` before the upgrade.
 */
export class SessionLimitError extends Error {
  /**
   * Creates the error.
   *
   * @param message What is full, e.g. `all 1000 stored sessions are held`.
   */
  constructor(message: string) {
    super(message);
    this.name = "SessionLimitError";
  }
}

/**
 * The session belongs to another subject (or to none): answered with HTTP
 * 403 `session_forbidden` before the upgrade, saying nothing about it.
 */
export class SessionForbiddenError extends Error {
  /** Creates the error. */
  constructor() {
    super("Cannot attach the session: it belongs to another subject");
    this.name = "SessionForbiddenError";
  }
}
