/**
 * The limits applied to every frame: its size in UTF-8 bytes and a token
 * bucket per socket. Pure and allocation-free, for the frame path.
 *
 * @module
 */

/** Limits applied to every frame. */
export interface FrameLimits {
  /** Largest text frame in UTF-8 bytes. */
  readonly maxMessageBytes: number;
  /** Frames per second per socket; 0 is off. */
  readonly rateLimitPerS: number;
  /**
   * Payload bytes queued in the runtime and not yet taken by the kernel
   * (`bufferedAmount`) above which a socket is closed as a slow consumer.
   */
  readonly maxBufferedBytes: number;
}

/**
 * A token bucket holding one second's worth of frames (at least one), full
 * at the start and refilled continuously.
 */
export class RateLimiter {
  #tokens: number;
  #last: number;
  readonly #perMs: number;
  readonly #capacity: number;

  /**
   * Creates a full bucket.
   *
   * @param perS Frames allowed per second, above 0.
   * @param now The clock's reading now, in ms (`performance.now()`).
   */
  constructor(perS: number, now: number = performance.now()) {
    this.#capacity = Math.max(1, perS);
    this.#tokens = this.#capacity;
    this.#perMs = perS / 1000;
    this.#last = now;
  }

  /**
   * Takes a token for one frame.
   *
   * @param now The clock's reading, in ms (`performance.now()`); never
   *   earlier than the last one given.
   * @returns `true` when the frame is within the limit.
   */
  take(now: number = performance.now()): boolean {
    this.#tokens = Math.min(
      this.#capacity,
      this.#tokens + (now - this.#last) * this.#perMs,
    );
    this.#last = now;
    if (this.#tokens < 1) return false;
    this.#tokens--;
    return true;
  }
}

/**
 * UTF-8 length of a string without encoding it.
 *
 * @param s Any string.
 * @returns Its size in bytes as UTF-8.
 */
export function utf8Length(s: string): number {
  let bytes = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) bytes += 1;
    else if (c >= 0xd800 && c <= 0xdbff) i++, bytes += 2; // pair: 4 bytes for 2 units
    else bytes += 2;
  }
  return bytes;
}
