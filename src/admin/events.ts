/**
 * `GET /admin/events`: this instance's figures once a second as Server-Sent
 * Events (`text/event-stream`), for the operator page. Each event is worked
 * out from a scrape of the same registry `/metrics` renders, with the
 * monitor's pure functions (`rates`, `histogramQuantile`), so the page and
 * Prometheus never disagree. Nothing runs while nobody watches: the first
 * watcher starts the once-a-second timer and the last one to leave stops
 * it; the frame path only keeps the plain numbers it always keeps.
 *
 * @module
 */
import type { Hono } from "hono";
import type { AppEnv } from "../app.ts";
import { rates, type Scrape } from "../cli/monitor_sample.ts";
import { parsePrometheusText, seriesKey } from "../cli/prometheus_text.ts";
import type { Lifecycle } from "../lifecycle.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { SessionStore } from "../sessions/store.ts";
import { VERSION } from "../version.ts";

/** Milliseconds between two events. */
export const EVENT_INTERVAL_MS = 1000;

/** Most watchers at once; one more gets 503 (each costs a scrape a second). */
export const MAX_WATCHERS = 16;

/** What the events are worked out from. */
export interface AdminEventsDeps {
  /** `COLOR`. */
  readonly color: string;
  /** State and uptime. */
  readonly lifecycle: Lifecycle;
  /** The registry `/metrics` renders. */
  readonly metrics: Metrics;
  /** Kind and availability of the session store. */
  readonly store: SessionStore;
}

/** One event's data (JSON): the instance now and what moved in the last second. */
export interface AdminSnapshot {
  /** When it was taken, ISO-8601 UTC. */
  readonly time: string;
  /** `COLOR`. */
  readonly color: string;
  /** The service's version. */
  readonly version: string;
  /** `starting`, `ready`, `draining` or `stopped`. */
  readonly state: string;
  /** Seconds since the process started. */
  readonly uptime_seconds: number;
  /** The session store: `memory` or `redis`, and whether it answers. */
  readonly store: { readonly kind: string; readonly up: boolean };
  /** Failing checks besides the store (`listener`, `process_memory`). */
  readonly faults: Readonly<Record<string, string>>;
  /** `websocket_connections_active`. */
  readonly active_connections: number;
  /** `websocket_connections_total` per second; `null` on the first event. */
  readonly connects_per_second: number | null;
  /** Text frames received per second; `null` on the first event. */
  readonly messages_per_second: number | null;
  /** Reply latency (receive → reply queued) over the last second, in seconds; `null` when no frame was answered. */
  readonly latency_seconds:
    | { readonly p50: number; readonly p99: number }
    | null;
  /** `websocket_errors_total` by `error_type`, non-zero only. */
  readonly errors_total: Readonly<Record<string, number>>;
  /** The same per second over the last second, non-zero only. */
  readonly errors_per_second: Readonly<Record<string, number>>;
}

const encoder = new TextEncoder();

/**
 * The figures the operator page shows, pushed once a second to every
 * watcher; computed only while at least one watches.
 */
export class AdminEvents {
  readonly #deps: AdminEventsDeps;
  readonly #intervalMs: number;
  readonly #watchers = new Set<ReadableStreamDefaultController<Uint8Array>>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #previous: Scrape | undefined;
  #latest: Uint8Array | undefined;
  #busy = false;
  #closed = false;

  /**
   * Creates the source; starts nothing until someone watches.
   *
   * @param deps Where the figures come from.
   * @param intervalMs Milliseconds between events.
   */
  constructor(deps: AdminEventsDeps, intervalMs: number = EVENT_INTERVAL_MS) {
    this.#deps = deps;
    this.#intervalMs = intervalMs;
  }

  /** Streams open now. */
  get watchers(): number {
    return this.#watchers.size;
  }

  /**
   * Opens one watcher's stream: the latest event at once (or the first one
   * as soon as it is worked out), then one every interval.
   *
   * @returns The event stream, or `undefined` when {@link MAX_WATCHERS}
   *   watch already or the events were closed (the drain).
   */
  watch(): ReadableStream<Uint8Array> | undefined {
    if (this.#closed || this.#watchers.size >= MAX_WATCHERS) return undefined;
    let self: ReadableStreamDefaultController<Uint8Array>;
    return new ReadableStream<Uint8Array>({
      start: (controller) => {
        self = controller;
        this.#watchers.add(controller);
        if (this.#latest) controller.enqueue(this.#latest);
        if (this.#timer === undefined) {
          this.#timer = setInterval(() => this.#tick(), this.#intervalMs);
          this.#tick();
        }
      },
      // The client went away: Deno cancels the response body.
      cancel: () => this.#leave(self),
    });
  }

  /**
   * Ends every stream with an `end` event naming the state, and refuses new
   * ones: the drain calls it so no stream holds a listener open.
   */
  close(): void {
    this.#closed = true;
    const end = encoder.encode(
      `event: end\ndata: ${
        JSON.stringify({ state: this.#deps.lifecycle.state })
      }\n\n`,
    );
    for (const controller of [...this.#watchers]) {
      try {
        controller.enqueue(end);
        controller.close();
      } catch { /* already gone */ }
      this.#leave(controller);
    }
  }

  #leave(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.#watchers.delete(controller);
    if (this.#watchers.size > 0 || this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
    // Rates start afresh with the next watcher, not across the idle gap.
    this.#previous = undefined;
    this.#latest = undefined;
  }

  async #tick(): Promise<void> {
    // A scrape slower than the interval skips a beat rather than piling up.
    if (this.#busy) return;
    this.#busy = true;
    try {
      const snapshot = await this.snapshot();
      if (this.#watchers.size === 0) return;
      this.#latest = encoder.encode(`data: ${JSON.stringify(snapshot)}\n\n`);
      for (const controller of [...this.#watchers]) {
        try {
          controller.enqueue(this.#latest);
        } catch {
          this.#leave(controller);
        }
      }
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Scrapes the registry and works out the figures since the previous
   * snapshot.
   *
   * @returns The snapshot (rates `null` on the first one).
   */
  async snapshot(): Promise<AdminSnapshot> {
    const { color, lifecycle, metrics, store } = this.#deps;
    const { body } = await metrics.scrape(false);
    const samples = parsePrometheusText(body).samples;
    const now: Scrape = {
      at: performance.now(),
      samples: new Map(samples.map((s) => [seriesKey(s), s])),
    };
    const moved = this.#previous && rates(this.#previous, now, undefined, 100);
    this.#previous = now;
    let active = 0;
    const errorsTotal: Record<string, number> = {};
    for (const s of samples) {
      if (s.name === "websocket_connections_active") active = s.value;
      if (s.name === "websocket_errors_total" && s.value > 0) {
        errorsTotal[s.labels.error_type ?? ""] = s.value;
      }
    }
    const connects = moved?.movers.find((m) =>
      m.series.startsWith("websocket_connections_total")
    );
    return {
      time: new Date().toISOString(),
      color,
      version: VERSION,
      state: lifecycle.state,
      uptime_seconds: Math.round(lifecycle.uptimeSeconds),
      store: { kind: store.kind, up: store.available },
      faults: Object.fromEntries(lifecycle.faults),
      active_connections: active,
      connects_per_second: moved ? connects?.perSecond ?? 0 : null,
      messages_per_second: moved ? moved.messagesPerSecond : null,
      latency_seconds: moved?.latency
        ? { p50: moved.latency.p50, p99: moved.latency.p99 }
        : null,
      errors_total: errorsTotal,
      errors_per_second: moved?.errorsPerSecond ?? {},
    };
  }
}

/**
 * Adds `GET /admin/events` to an app, behind the admin API's bearer token
 * (registered after it).
 *
 * @param app The app serving the admin API.
 * @param events The source.
 */
export function eventRoutes(app: Hono<AppEnv>, events: AdminEvents): void {
  app.get("/admin/events", (c) => {
    const stream = events.watch();
    if (stream === undefined) {
      return c.json({
        error: "unavailable",
        message: events.watchers >= MAX_WATCHERS
          ? `Too many watchers: at most ${MAX_WATCHERS} at once`
          : "The instance is shutting down",
      }, 503);
    }
    return c.body(stream, 200, {
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-store",
      // nginx would otherwise hold the events back in its buffer.
      "X-Accel-Buffering": "no",
    });
  });
}
