/**
 * Closes sockets when their token expires, with one timer for all of them:
 * connections wait in buckets by the second of their token's `exp`, and a
 * one-second tick runs (only while any wait) and closes the buckets whose
 * second has come. A socket is closed within a second after `exp`; nothing
 * is checked per frame, and a closed socket leaves its bucket at once.
 *
 * @module
 */
import { type Timer, unrefTimer } from "../platform.ts";

/** Milliseconds between ticks (the resolution of `exp`, a NumericDate in seconds). */
export const TICK_MS = 1000;

/** Beyond this many seconds behind (a clock step), walk the buckets, not the seconds. */
const MAX_STEPS = 64;

/** Calls each connection's expiry at its token's `exp`. */
export class TokenExpiry {
  readonly #buckets = new Map<number, Set<() => void>>();
  readonly #now: () => number;
  #timer: Timer | undefined;
  /** The last second whose bucket has run. */
  #done = 0;

  /**
   * Creates an empty schedule; the tick starts with the first entry.
   *
   * @param now The wall clock in epoch ms (`exp` is wall-clock time).
   */
  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Connections waiting for their token to expire. */
  get size(): number {
    let n = 0;
    for (const bucket of this.#buckets.values()) n += bucket.size;
    return n;
  }

  /**
   * Schedules `expire` at `atMs`.
   *
   * @param atMs The token's `exp` in epoch ms.
   * @param expire Closes the connection; called at most once.
   * @returns Cancels the call (idempotent); call it when the socket closes.
   */
  add(atMs: number, expire: () => void): () => void {
    if (this.#timer === undefined) {
      this.#done = Math.floor(this.#now() / 1000);
      this.#timer = setInterval(() => this.#tick(), TICK_MS);
      unrefTimer(this.#timer);
    }
    // A token that expired between its check and now goes at the next tick.
    const second = Math.max(Math.ceil(atMs / 1000), this.#done + 1);
    const entry = () => expire();
    let bucket = this.#buckets.get(second);
    if (bucket === undefined) this.#buckets.set(second, bucket = new Set());
    bucket.add(entry);
    return () => {
      const held = this.#buckets.get(second);
      if (held === undefined || !held.delete(entry)) return;
      if (held.size === 0) this.#buckets.delete(second);
      if (this.#buckets.size === 0) this.#stop();
    };
  }

  #tick(): void {
    const now = Math.floor(this.#now() / 1000);
    if (now <= this.#done) return; // the clock stepped back: wait for it
    const due: Array<Set<() => void>> = [];
    if (now - this.#done <= MAX_STEPS) {
      for (let s = this.#done + 1; s <= now; s++) {
        const bucket = this.#buckets.get(s);
        if (bucket === undefined) continue;
        this.#buckets.delete(s);
        due.push(bucket);
      }
    } else {
      for (const [s, bucket] of this.#buckets) {
        if (s > now) continue;
        this.#buckets.delete(s);
        due.push(bucket);
      }
    }
    this.#done = now;
    if (this.#buckets.size === 0) this.#stop();
    for (const bucket of due) for (const expire of bucket) expire();
  }

  #stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
