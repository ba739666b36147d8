/**
 * The process memory guard (soketi's "accept traffic" threshold): while
 * resident memory is above a share of the memory limit, readiness fails and
 * new WebSockets are refused, so load balancers and clients go elsewhere
 * before the kernel's OOM killer ends every session at once. Open sockets
 * keep serving.
 *
 * @module
 */
import { memoryUsage, type Timer, unrefTimer } from "./platform.ts";

/** How often resident memory is read, in ms. */
export const MEMORY_CHECK_INTERVAL_MS = 1000;

/**
 * Pressure ends once resident memory is below this share of the threshold,
 * so a reading that hovers at the threshold does not flap readiness.
 */
export const MEMORY_RELIEF_RATIO = 0.95;

/** Options for {@link MemoryGuard}. */
export interface MemoryGuardOptions {
  /** The memory limit in bytes (cgroup `memory.max` or `MEMORY_LIMIT_BYTES`). */
  readonly limitBytes: number;
  /** Share of the limit (0–1] above which the guard holds. */
  readonly ratio: number;
  /** Reads resident memory in bytes; `Deno.memoryUsage().rss` by default. */
  readonly readRss?: () => number;
}

/** What the guard reports, each once per transition. */
export interface MemoryGuardEvents {
  /**
   * Resident memory went above the threshold.
   *
   * @param rssBytes The reading, in bytes.
   */
  onPressure(rssBytes: number): void;
  /**
   * Resident memory fell below {@link MEMORY_RELIEF_RATIO} of the threshold.
   *
   * @param rssBytes The reading, in bytes.
   */
  onRelief(rssBytes: number): void;
  /**
   * A reading while the guard holds (each check), to keep the readiness
   * detail current.
   *
   * @param rssBytes The reading, in bytes.
   */
  onReading?(rssBytes: number): void;
}

/** Watches resident memory against a threshold; starts no timer until {@link MemoryGuard.start}. */
export class MemoryGuard {
  /** The memory limit in bytes. */
  readonly limitBytes: number;
  /** `limitBytes × ratio`, in bytes: above it the guard holds. */
  readonly thresholdBytes: number;
  readonly #readRss: () => number;
  readonly #events: MemoryGuardEvents;
  #pressure = false;
  #timer: Timer | undefined;

  /**
   * Creates the guard.
   *
   * @param options Limit, ratio and the reading.
   * @param events Transitions, for readiness, logs and refusals.
   */
  constructor(options: MemoryGuardOptions, events: MemoryGuardEvents) {
    this.limitBytes = options.limitBytes;
    this.thresholdBytes = Math.floor(options.limitBytes * options.ratio);
    this.#readRss = options.readRss ?? (() => memoryUsage().rss);
    this.#events = events;
  }

  /** Whether resident memory is above the threshold (until it falls below the relief level). */
  get underPressure(): boolean {
    return this.#pressure;
  }

  /**
   * Reads resident memory once and reports a transition, if any.
   *
   * @returns The reading, in bytes.
   */
  check(): number {
    const rss = this.#readRss();
    if (!this.#pressure && rss > this.thresholdBytes) {
      this.#pressure = true;
      this.#events.onPressure(rss);
    } else if (
      this.#pressure && rss < this.thresholdBytes * MEMORY_RELIEF_RATIO
    ) {
      this.#pressure = false;
      this.#events.onRelief(rss);
    } else if (this.#pressure) {
      this.#events.onReading?.(rss);
    }
    return rss;
  }

  /**
   * Checks now, then every `intervalMs` on a timer that does not keep the
   * process alive.
   *
   * @param intervalMs Milliseconds between readings.
   */
  start(intervalMs: number = MEMORY_CHECK_INTERVAL_MS): void {
    this.check();
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.check(), intervalMs);
    unrefTimer(this.#timer);
  }

  /** Stops the timer. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Stops the timer, as {@link stop} does. */
  [Symbol.dispose](): void {
    this.stop();
  }
}
