/**
 * The in-memory session store: counts live in this process and are lost with
 * it. The default when `REDIS_URL` is unset.
 *
 * The number of sessions is bounded (`MAX_SESSIONS`): a session that needs
 * room takes it from the session released longest ago. Sessions held by an
 * open socket are never forgotten; when every stored session is held, an
 * upgrade that would create one more is refused ({@link SessionLimitError}).
 *
 * One `Map` finds a session by id; released sessions are also chained in a
 * list in the order they were released (a release moves a session to the
 * newest end). The oldest end is both the longest idle and the next to
 * expire, so eviction and the expiry sweep touch only that end: O(1) per
 * session. (A second `Map` in release order would do the same on paper, but
 * V8 leaves a hole per deleted entry and a fresh iterator walks every hole
 * at the front: 50 µs per eviction at 100,000 sessions, measured.)
 *
 * @module
 */
import { type Timer, unrefTimer } from "../platform.ts";
import {
  SessionForbiddenError,
  type SessionHandle,
  SessionLimitError,
  type SessionStore,
} from "./store.ts";

interface SessionRecord {
  readonly id: string;
  count: number;
  /** The subject that created it, with authentication on. */
  readonly owner: string | undefined;
  /** Connections holding the session; it cannot expire or be evicted while above 0. */
  holders: number;
  /** `performance.now()` after which a released session is gone. */
  expiresAt: number;
  /** The session released just before this one; `null` at the oldest end or while held. */
  older: SessionRecord | null;
  /** The session released just after this one; `null` at the newest end or while held. */
  newer: SessionRecord | null;
}

/** Figures the store keeps for metrics, read at scrape time. */
export interface SessionCounters {
  /** Sessions stored now, held and released. */
  stored: number;
  /** Released sessions forgotten to make room under `MAX_SESSIONS`. */
  evictedCapacity: number;
  /** Released sessions dropped `SESSION_TTL_S` after their last activity. */
  evictedExpired: number;
}

/** Options for {@link MemorySessionStore}. */
export interface MemoryStoreOptions {
  /**
   * Most sessions kept, held and released together (at least 1).
   * @default 250000
   */
  readonly maxSessions?: number;
  /** Where the store counts sessions and evictions; a private object if omitted. */
  readonly counters?: SessionCounters;
}

/**
 * `MAX_SESSIONS` when unset. A released session costs about 200 bytes of
 * heap (its record, its `Map` entry and a 36-character id: 203 B measured on
 * Deno 2.9.6), so the bound keeps sessions under about 50 MB.
 */
export const DEFAULT_MAX_SESSIONS = 250_000;

class MemoryHandle implements SessionHandle {
  readonly id: string;
  readonly initialCount: number;
  readonly resumed: boolean;
  readonly #store: MemorySessionStore;
  readonly #record: SessionRecord;
  #released = false;

  constructor(
    store: MemorySessionStore,
    id: string,
    record: SessionRecord,
    resumed: boolean,
  ) {
    this.#store = store;
    this.id = id;
    this.#record = record;
    this.initialCount = record.count;
    this.resumed = resumed;
  }

  increment(): number {
    return ++this.#record.count;
  }

  total(): number {
    return this.#record.count;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#store.release(this.#record);
  }
}

/**
 * Sessions in memory, at most `maxSessions` of them. A session expires
 * `ttlS` seconds after its last connection closed; expired sessions are
 * dropped when looked up, when room is needed, and by a sweep every
 * `min(ttlS, 60)` seconds.
 */
export class MemorySessionStore implements SessionStore {
  readonly kind = "memory" as const;
  readonly available = true;
  readonly #sessions = new Map<string, SessionRecord>();
  /** The released session idle longest (next to go), and the newest one. */
  #oldest: SessionRecord | null = null;
  #newest: SessionRecord | null = null;
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #counters: SessionCounters;
  #sweeper: Timer | undefined;

  /**
   * Creates the store; {@link start} starts its expiry sweep.
   *
   * @param ttlS Session lifetime after its last connection closed, in seconds.
   * @param options The bound and where to count.
   */
  constructor(ttlS: number, options: MemoryStoreOptions = {}) {
    this.#ttlMs = ttlS * 1000;
    this.#max = Math.max(1, options.maxSessions ?? DEFAULT_MAX_SESSIONS);
    this.#counters = options.counters ??
      { stored: 0, evictedCapacity: 0, evictedExpired: 0 };
  }

  /** Starts the expiry sweep; a second call does nothing. */
  start(): void {
    if (this.#sweeper !== undefined) return;
    this.#sweeper = setInterval(
      () => this.#sweep(performance.now()),
      Math.min(this.#ttlMs, 60_000),
    );
    unrefTimer(this.#sweeper);
  }

  /** Sessions stored now, held and released. */
  get size(): number {
    return this.#sessions.size;
  }

  /**
   * Attaches a connection, creating the session when missing or expired.
   *
   * @param id A session id matching `^[A-Za-z0-9_-]{1,64}$`.
   * @param owner The token subject connecting, with authentication on.
   * @returns The connection's handle.
   * @throws {SessionLimitError} When the session is new and every one of
   *   `maxSessions` stored sessions is held by an open socket.
   * @throws {SessionForbiddenError} When `owner` is given and the live
   *   session has another owner or none.
   */
  attach(id: string, owner?: string): SessionHandle {
    const now = performance.now();
    let record = this.#sessions.get(id);
    if (record !== undefined) {
      if (
        owner !== undefined && record.owner !== owner &&
        (record.holders > 0 || record.expiresAt > now)
      ) {
        throw new SessionForbiddenError();
      }
      if (record.holders === 0) {
        this.#unlink(record);
        if (record.expiresAt <= now) {
          // Expired but not swept yet: forget it and start over.
          this.#sessions.delete(id);
          this.#counters.evictedExpired++;
          record = undefined;
        }
      }
      if (record !== undefined) {
        record.holders++;
        return new MemoryHandle(this, id, record, true);
      }
    }
    if (this.#sessions.size >= this.#max) this.#evictOldest(now);
    record = {
      id,
      count: 0,
      owner,
      holders: 1,
      expiresAt: 0,
      older: null,
      newer: null,
    };
    this.#sessions.set(id, record);
    this.#counters.stored = this.#sessions.size;
    return new MemoryHandle(this, id, record, false);
  }

  /**
   * @internal A connection let go of a session: once no connection holds it,
   * its TTL runs from now and it is the most recently released one.
   */
  release(record: SessionRecord): void {
    // A forgotten session is no longer this store's (a new one may have its id).
    if (--record.holders > 0 || this.#sessions.get(record.id) !== record) {
      return;
    }
    record.expiresAt = performance.now() + this.#ttlMs;
    record.older = this.#newest;
    if (this.#newest === null) this.#oldest = record;
    else this.#newest.newer = record;
    this.#newest = record;
  }

  forget(id: string): boolean {
    const record = this.#sessions.get(id);
    if (record === undefined) return false;
    if (record.holders === 0) this.#unlink(record);
    this.#sessions.delete(id);
    this.#counters.stored = this.#sessions.size;
    return true;
  }

  check(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    return Promise.resolve();
  }

  /** Takes a released session out of the release-order list. */
  #unlink(record: SessionRecord): void {
    if (record.older === null) this.#oldest = record.newer;
    else record.older.newer = record.newer;
    if (record.newer === null) this.#newest = record.older;
    else record.newer.older = record.older;
    record.older = record.newer = null;
  }

  /** Forgets the longest-idle released session, or refuses when none is. */
  #evictOldest(now: number): void {
    const oldest = this.#oldest;
    if (oldest === null) {
      throw new SessionLimitError(
        `Cannot create a session: all ${this.#max} stored sessions are held by open sockets`,
      );
    }
    this.#unlink(oldest);
    this.#sessions.delete(oldest.id);
    if (oldest.expiresAt <= now) this.#counters.evictedExpired++;
    else this.#counters.evictedCapacity++;
  }

  #sweep(now: number): void {
    // Released in order with one TTL, so they expire in order too.
    let oldest = this.#oldest;
    while (oldest !== null && oldest.expiresAt <= now) {
      this.#unlink(oldest);
      this.#sessions.delete(oldest.id);
      this.#counters.evictedExpired++;
      oldest = this.#oldest;
    }
    this.#counters.stored = this.#sessions.size;
  }
}
