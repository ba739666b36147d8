/**
 * Metrics: the contract's Prometheus metrics, through prom-client.
 *
 * Per-frame figures are plain numbers in {@link FrameStats}, read only at
 * scrape time (a counter's `collect()`, a {@link CollectedHistogram}): a
 * labelled `inc()` and a `Histogram.observe()` per frame cost the hot path
 * 0.8–0.9× of its throughput, plain additions next to nothing. The connect
 * path's figures (accepts, resumes, closes, HTTP requests) are plain numbers
 * too, in {@link ConnectionStats} and {@link HttpStats}; rarer events
 * (errors, refusals) update prom-client directly. The `process_*` metrics
 * come from process_metrics.ts.
 *
 * Every metric carries the default label `color`.
 *
 * @module
 */
import {
  Counter,
  Gauge,
  type PrometheusContentType,
  Registry,
} from "prom-client";
import { LISTENER_ERROR_REASONS, runtimeVersion } from "../platform.ts";
import { closeCodeLabel, ERROR_TYPES } from "../sessions/refusals.ts";
import { VERSION } from "../version.ts";
import { CollectedHistogram, CollectedHistogramFamily } from "./collector.ts";
import {
  ConnectionStats,
  HttpStats,
  PendingCounts,
  type RouteFigures,
} from "./event_stats.ts";
import { FrameStats, MESSAGE_DURATION_BUCKETS } from "./frame_stats.ts";
import { LoopLagMonitor, registerProcessMetrics } from "./process_metrics.ts";

export {
  ConnectionStats,
  FrameStats,
  HttpStats,
  MESSAGE_DURATION_BUCKETS,
  PendingCounts,
  type RouteFigures,
};

/** Close codes exported from the start at 0. */
const COMMON_CLOSE_CODES = ["1000", "1001", "1006"];

/** Upper bounds in seconds of `http_request_duration_seconds`. */
export const HTTP_DURATION_BUCKETS: readonly number[] = [
  0.001,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
];

/**
 * The memory store's figures as plain numbers, updated by the store and
 * read at scrape time (`websocket_sessions_stored`,
 * `websocket_sessions_evicted_total`).
 */
export class SessionStats {
  /** Sessions kept in this process's memory now; 0 with Redis. */
  stored = 0;
  /** Released sessions forgotten to make room under `MAX_SESSIONS`. */
  evictedCapacity = 0;
  /** Released sessions dropped `SESSION_TTL_S` after their last activity. */
  evictedExpired = 0;
}

function registerSessionMetrics(
  registry: Registry<PrometheusContentType>,
  stats: SessionStats,
): void {
  const registers = [registry];
  new Gauge({
    name: "websocket_sessions_stored",
    help:
      "Sessions kept in this process's memory (memory store), held or released.",
    registers,
    collect() {
      this.set(stats.stored);
    },
  });
  const seen = { capacity: 0, expired: 0 };
  const evicted = new Counter<"reason">({
    name: "websocket_sessions_evicted_total",
    help: "Released sessions forgotten by the memory store: capacity " +
      "(room for a new one under MAX_SESSIONS) or expired (SESSION_TTL_S).",
    labelNames: ["reason"],
    registers,
    collect() {
      this.labels("capacity").inc(stats.evictedCapacity - seen.capacity);
      this.labels("expired").inc(stats.evictedExpired - seen.expired);
      seen.capacity = stats.evictedCapacity;
      seen.expired = stats.evictedExpired;
    },
  });
  evicted.labels("capacity").inc(0);
  evicted.labels("expired").inc(0);
}

/** Values the metrics read from the running service at scrape time. */
export interface MetricsSources {
  /** Sockets open now. */
  activeConnections(): number;
  /** Whether `/readyz` answers 200 now (ready state, store available). */
  ready(): boolean;
  /** Seconds since the running drain started; `undefined` when not draining. */
  drainingSeconds(): number | undefined;
}

/**
 * The service's metric registry.
 *
 * Create one per server; tests run several in one process. Creating it
 * starts nothing; {@link Metrics.start} starts the event-loop lag timer and
 * disposing stops it.
 */
export class Metrics implements Disposable {
  /** The prom-client registry serving `/metrics`. */
  readonly registry: Registry<PrometheusContentType>;
  /** Hot-path figures, read at scrape time. */
  readonly frames: FrameStats = new FrameStats();
  /** Session-store figures, read at scrape time. */
  readonly sessions: SessionStats = new SessionStats();
  /**
   * `websocket_connections_total`, `websocket_session_resumes_total` and
   * `websocket_disconnects_total{code}`, read at scrape time.
   */
  readonly connections: ConnectionStats = new ConnectionStats();
  /**
   * `http_requests_total{method,endpoint,status}` and
   * `http_request_duration_seconds{method,endpoint}`, read at scrape time.
   */
  readonly http: HttpStats = new HttpStats(HTTP_DURATION_BUCKETS);
  /** `websocket_errors_total{error_type}`. */
  readonly errors: Counter<"error_type">;
  /** `app_startup_time_seconds`. */
  readonly startupTime: Gauge;
  /** `app_shutdown_time_seconds`. */
  readonly shutdownTime: Gauge;
  /** `app_dependency_up{dependency}`. */
  readonly dependencyUp: Gauge<"dependency">;
  /** `http_listener_errors_total{reason}`. */
  readonly listenerErrors: Counter<"reason">;
  /** `http_listener_up`. */
  readonly listenerUp: Gauge;
  /** `app_memory_limit_bytes`. */
  readonly memoryLimit: Gauge;

  #scrapes: Promise<unknown> = Promise.resolve();
  #lag: LoopLagMonitor;

  /**
   * Creates and registers every metric in a new registry; starts nothing
   * (see {@link Metrics.start}).
   *
   * @param color Value of the default `color` label.
   * @param sources Live values read at scrape time.
   */
  constructor(color: string, sources: MetricsSources) {
    const registry = new Registry<PrometheusContentType>();
    registry.setDefaultLabels({ color });
    this.registry = registry;
    const registers = [registry];
    const frames = this.frames;
    const connections = this.connections;
    const http = this.http;

    const seenConnections = { accepted: 0, resumed: 0 };
    new Counter({
      name: "websocket_connections_total",
      help: "WebSocket connections accepted.",
      registers,
      collect() {
        this.inc(connections.accepted - seenConnections.accepted);
        seenConnections.accepted = connections.accepted;
      },
    });
    new Gauge({
      name: "websocket_connections_active",
      help: "WebSocket connections open now.",
      registers,
      collect() {
        this.set(sources.activeConnections());
      },
    });
    const seen = { received: 0, sent: 0, heartbeat: 0 };
    const messages = new Counter<"type">({
      name: "websocket_messages_total",
      help: "WebSocket frames by type: received, sent (replies), heartbeat.",
      labelNames: ["type"],
      registers,
      collect() {
        for (const type of ["received", "sent", "heartbeat"] as const) {
          this.labels(type).inc(frames[type] - seen[type]);
          seen[type] = frames[type];
        }
      },
    });
    for (const type of ["received", "sent", "heartbeat"]) {
      messages.labels(type).inc(0);
    }
    new CollectedHistogram({
      name: "websocket_message_duration_seconds",
      help: "Time from receiving a text frame to queueing its reply.",
      buckets: MESSAGE_DURATION_BUCKETS,
      registers,
      read: () => ({
        counts: frames.buckets,
        sum: frames.durationSum,
        count: frames.durationCount,
      }),
    });
    this.errors = new Counter({
      name: "websocket_errors_total",
      help: "Refused or failed WebSocket operations, by cause.",
      labelNames: ["error_type"],
      registers,
    });
    for (const type of ERROR_TYPES) this.errors.labels(type).inc(0);
    const disconnects = new Counter<"code">({
      name: "websocket_disconnects_total",
      help: "WebSocket closes, by RFC 6455 close code.",
      labelNames: ["code"],
      registers,
      collect() {
        connections.closes.drain((code, n) =>
          this.labels(closeCodeLabel(code)).inc(n)
        );
      },
    });
    for (const code of COMMON_CLOSE_CODES) disconnects.labels(code).inc(0);
    new Counter({
      name: "websocket_session_resumes_total",
      help: "Connections that continued an existing session's count.",
      registers,
      collect() {
        this.inc(connections.resumed - seenConnections.resumed);
        seenConnections.resumed = connections.resumed;
      },
    });
    new Counter<"method" | "endpoint" | "status">({
      name: "http_requests_total",
      help: "HTTP requests by method, route template and status.",
      labelNames: ["method", "endpoint", "status"],
      registers,
      collect() {
        for (const route of http.routes()) {
          route.statuses.drain((status, n) =>
            this.labels(route.method, route.endpoint, String(status)).inc(n)
          );
        }
      },
    });
    new CollectedHistogramFamily({
      name: "http_request_duration_seconds",
      help: "HTTP request duration until the response is ready.",
      buckets: HTTP_DURATION_BUCKETS,
      registers,
      read: function* () {
        for (const { method, endpoint, counts, sum, count } of http.routes()) {
          yield { labels: { method, endpoint }, counts, sum, count };
        }
      },
    });
    this.startupTime = new Gauge({
      name: "app_startup_time_seconds",
      help: "Seconds from process start to ready.",
      registers,
    });
    this.shutdownTime = new Gauge({
      name: "app_shutdown_time_seconds",
      help: "Seconds from drain start to all sockets closed, last drain " +
        "(while a drain runs: its time so far).",
      registers,
      collect() {
        // A scrape during a slow drain sees it grow, before the process exits.
        const running = sources.drainingSeconds();
        if (running !== undefined) this.set(running);
      },
    });
    new Gauge({
      name: "app_info",
      help: "Build information; always 1.",
      labelNames: ["version", "runtime_version"],
      registers,
    }).labels(VERSION, runtimeVersion()).set(1);
    new Gauge({
      name: "app_ready",
      help: "1 while the instance is ready (what /readyz reports), else 0.",
      registers,
      collect() {
        this.set(sources.ready() ? 1 : 0);
      },
    });
    this.dependencyUp = new Gauge({
      name: "app_dependency_up",
      help: "1 when a dependency answers its health check, else 0.",
      labelNames: ["dependency"],
      registers,
    });
    this.listenerErrors = new Counter({
      name: "http_listener_errors_total",
      help: "Failures of the HTTP accept loop, by reason: emfile (process " +
        "out of file descriptors), enfile (system out of them), other.",
      labelNames: ["reason"],
      registers,
    });
    for (const reason of LISTENER_ERROR_REASONS) {
      this.listenerErrors.labels(reason).inc(0);
    }
    this.listenerUp = new Gauge({
      name: "http_listener_up",
      help: "1 while the HTTP listener accepts connections, 0 while it " +
        "re-listens after an accept failure.",
      registers,
    });
    this.memoryLimit = new Gauge({
      name: "app_memory_limit_bytes",
      help: "Memory limit the memory guard works from (cgroup or " +
        "MEMORY_LIMIT_BYTES), in bytes; 0 when the guard is off.",
      registers,
    });
    registerSessionMetrics(registry, this.sessions);
    this.#lag = new LoopLagMonitor();
    registerProcessMetrics(registry, this.#lag);
  }

  /** Starts the event-loop lag timer (`process_event_loop_lag_seconds`). */
  start(): void {
    this.#lag.start();
  }

  /**
   * Counts one refused or failed operation.
   *
   * @param errorType Cause, e.g. `binary_frame` (see docs/OBSERVABILITY.md).
   */
  error(errorType: string): void {
    this.errors.labels(errorType).inc();
  }

  /**
   * Renders every metric.
   *
   * @param openMetrics Use OpenMetrics 1.0.0 instead of the text format 0.0.4.
   * @returns The exposition body and its content type.
   */
  scrape(
    openMetrics: boolean,
  ): Promise<{ body: string; contentType: string }> {
    // The registry holds one content type at a time: serialise scrapes.
    const next = this.#scrapes.then(async () => {
      this.registry.setContentType(
        openMetrics
          ? Registry.OPENMETRICS_CONTENT_TYPE as PrometheusContentType
          : Registry.PROMETHEUS_CONTENT_TYPE,
      );
      // prom-client 15.1.3 strips `_total` from counters' names in place for
      // OpenMetrics; put the names back so a later text scrape keeps it
      // (prometheus/client_js#829).
      const metrics = this.registry.getMetricsAsArray();
      const names = metrics.map((m) => m.name);
      try {
        return {
          body: await this.registry.metrics(),
          contentType: this.registry.contentType,
        };
      } finally {
        metrics.forEach((m, i) => m.name = names[i]!);
      }
    });
    this.#scrapes = next.catch(() => {});
    return next;
  }

  /** Stops the event-loop lag timer. */
  [Symbol.dispose](): void {
    this.#lag[Symbol.dispose]();
  }
}
