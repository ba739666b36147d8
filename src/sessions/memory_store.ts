/**
 * The in-memory session store: counts live in this process and are lost with
 * it. The default when `REDIS_URL` is unset.
 *
 * @module
 */
import { type Timer, unrefTimer } from "../platform.ts";
import type { SessionHandle, SessionStore } from "./store.ts";

interface SessionRecord {
  count: number;
  /** Connections holding the session; it cannot expire while above 0. */
  holders: number;
  /** Epoch ms after which an unheld session is gone. */
  expiresAt: number;
}

class MemoryHandle implements SessionHandle {
  readonly id: string;
  readonly initialCount: number;
  readonly resumed: boolean;
  #record: SessionRecord;
  #ttlMs: number;
  #released = false;

  constructor(
    id: string,
    record: SessionRecord,
    resumed: boolean,
    ttlMs: number,
  ) {
    this.id = id;
    this.#record = record;
    this.initialCount = record.count;
    this.resumed = resumed;
    this.#ttlMs = ttlMs;
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
    this.#record.holders--;
    this.#record.expiresAt = Date.now() + this.#ttlMs;
  }
}

/**
 * Sessions in a `Map`. A session expires `ttlS` seconds after its last
 * connection closed; expired sessions are dropped when looked up and by a
 * sweep every `min(ttlS, 60)` seconds.
 */
export class MemorySessionStore implements SessionStore {
  readonly kind = "memory" as const;
  readonly available = true;
  #sessions = new Map<string, SessionRecord>();
  #ttlMs: number;
  #sweeper: Timer;

  /**
   * Creates the store and its expiry sweep.
   *
   * @param ttlS Session lifetime after its last activity, in seconds.
   */
  constructor(ttlS: number) {
    this.#ttlMs = ttlS * 1000;
    this.#sweeper = setInterval(
      () => this.#sweep(),
      Math.min(this.#ttlMs, 60_000),
    );
    unrefTimer(this.#sweeper);
  }

  attach(id: string): SessionHandle {
    let record = this.#sessions.get(id);
    const live = record !== undefined &&
      (record.holders > 0 || record.expiresAt > Date.now());
    if (!live) {
      record = { count: 0, holders: 0, expiresAt: 0 };
      this.#sessions.set(id, record);
    }
    record!.holders++;
    return new MemoryHandle(id, record!, live, this.#ttlMs);
  }

  check(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    clearInterval(this.#sweeper);
    return Promise.resolve();
  }

  #sweep(): void {
    const now = Date.now();
    for (const [id, record] of this.#sessions) {
      if (record.holders === 0 && record.expiresAt <= now) {
        this.#sessions.delete(id);
      }
    }
  }
}
