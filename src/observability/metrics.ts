/**
 * Metrics: the contract's Prometheus metrics, through prom-client.
 *
 * Per-connection events (accept, close, error) update prom-client directly.
 * Per-frame figures are plain numbers in {@link FrameStats} that prom-client
 * reads at scrape time through each metric's `collect()`: a labelled
 * `inc()` and a `Histogram.observe()` per frame cost the hot path 0.8–0.9×
 * of its throughput, plain additions next to nothing.
 *
 * Every metric carries the default label `color`.
 *
 * @module
 */
import {
  Counter,
  Gauge,
  Histogram,
  type PrometheusContentType,
  Registry,
} from "prom-client";
import {
  cpuSeconds,
  maxFds,
  memoryUsage,
  openFds,
  runtimeVersion,
  type Timer,
  unrefTimer,
} from "../platform.ts";
import { VERSION } from "../version.ts";

/** Upper bounds in seconds of `websocket_message_duration_seconds`. */
export const MESSAGE_DURATION_BUCKETS: readonly number[] = [
  0.00005,
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
];

/**
 * Every `error_type` of `websocket_errors_total`, each exported from the
 * start at 0 so `rate()` and alerts see the series before the first error.
 */
export const ERROR_TYPES: readonly string[] = [
  "binary_frame", // 1003
  "message_too_big", // 1009
  "rate_limited", // 1008
  "slow_consumer", // 1008
  "protocol_error", // the runtime dropped the connection (RFC 6455 violation)
  "internal", // 1011
  "idle_timeout", // 1001 after a missed pong
  "store_unavailable", // frame answered {"error": "unavailable"} or upgrade 503
  "invalid_session_id", // HTTP 400
  "bad_upgrade", // HTTP 400
  "origin_not_allowed", // HTTP 403
  "upgrade_required", // HTTP 426
  "max_connections", // HTTP 503
  "draining", // HTTP 503
];

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
 * Per-frame counters and the message-latency histogram as plain numbers,
 * updated on the hot path without allocation.
 */
export class FrameStats {
  /** Text frames received. */
  received = 0;
  /** Replies sent (`{"count": n}` and error answers). */
  sent = 0;
  /** Heartbeat frames sent. */
  heartbeat = 0;
  /** Non-cumulative bucket counts; the last slot is +Inf. */
  readonly buckets: Float64Array = new Float64Array(
    MESSAGE_DURATION_BUCKETS.length + 1,
  );
  /** Sum of observed durations in seconds. */
  durationSum = 0;
  /** Number of observed durations. */
  durationCount = 0;

  /**
   * Records one receive → reply-queued duration.
   *
   * @param seconds Elapsed time in seconds.
   */
  observe(seconds: number): void {
    let i = 0;
    const bounds = MESSAGE_DURATION_BUCKETS;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    this.buckets[i]!++;
    this.durationSum += seconds;
    this.durationCount++;
  }
}

/** prom-client keeps a histogram's unlabelled series under this key. */
interface HistogramSeries {
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
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
 * Create one per server; tests run several in one process.
 */
export class Metrics {
  /** The prom-client registry serving `/metrics`. */
  readonly registry: Registry<PrometheusContentType>;
  /** Hot-path figures, read at scrape time. */
  readonly frames: FrameStats = new FrameStats();
  /** `websocket_connections_total`. */
  readonly connectionsTotal: Counter;
  /** `websocket_errors_total{error_type}`. */
  readonly errors: Counter<"error_type">;
  /** `websocket_disconnects_total{code}`. */
  readonly disconnects: Counter<"code">;
  /** `websocket_session_resumes_total`. */
  readonly resumes: Counter;
  /** `http_requests_total{method,endpoint,status}`. */
  readonly httpRequests: Counter<"method" | "endpoint" | "status">;
  /** `http_request_duration_seconds{method,endpoint}`. */
  readonly httpDuration: Histogram<"method" | "endpoint">;
  /** `app_startup_time_seconds`. */
  readonly startupTime: Gauge;
  /** `app_shutdown_time_seconds`. */
  readonly shutdownTime: Gauge;
  /** `app_dependency_up{dependency}`. */
  readonly dependencyUp: Gauge<"dependency">;

  #scrapes: Promise<unknown> = Promise.resolve();
  #lag: LoopLagMonitor;

  /**
   * Creates and registers every metric in a new registry.
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

    this.connectionsTotal = new Counter({
      name: "websocket_connections_total",
      help: "WebSocket connections accepted.",
      registers,
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
    new Histogram({
      name: "websocket_message_duration_seconds",
      help: "Time from receiving a text frame to queueing its reply.",
      buckets: [...MESSAGE_DURATION_BUCKETS],
      registers,
      collect() {
        // prom-client has no bulk observe; fill its unlabelled series in place.
        const series = (this as unknown as {
          hashMap: Record<string, HistogramSeries>;
        }).hashMap[""]!;
        MESSAGE_DURATION_BUCKETS.forEach((bound, i) => {
          series.bucketValues[bound] = frames.buckets[i]!;
        });
        series.sum = frames.durationSum;
        series.count = frames.durationCount;
      },
    });
    this.errors = new Counter({
      name: "websocket_errors_total",
      help: "Refused or failed WebSocket operations, by cause.",
      labelNames: ["error_type"],
      registers,
    });
    for (const type of ERROR_TYPES) this.errors.labels(type).inc(0);
    this.disconnects = new Counter({
      name: "websocket_disconnects_total",
      help: "WebSocket closes, by RFC 6455 close code.",
      labelNames: ["code"],
      registers,
    });
    for (const code of COMMON_CLOSE_CODES) this.disconnects.labels(code).inc(0);
    this.resumes = new Counter({
      name: "websocket_session_resumes_total",
      help: "Connections that continued an existing session's count.",
      registers,
    });
    this.httpRequests = new Counter({
      name: "http_requests_total",
      help: "HTTP requests by method, route template and status.",
      labelNames: ["method", "endpoint", "status"],
      registers,
    });
    this.httpDuration = new Histogram({
      name: "http_request_duration_seconds",
      help: "HTTP request duration until the response is ready.",
      labelNames: ["method", "endpoint"],
      buckets: [...HTTP_DURATION_BUCKETS],
      registers,
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
    this.#lag = new LoopLagMonitor();
    registerProcessMetrics(registry, this.#lag);
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
      return {
        body: await this.registry.metrics(),
        contentType: this.registry.contentType,
      };
    });
    this.#scrapes = next.catch(() => {});
    return next;
  }

  /** Stops the event-loop lag timer. */
  close(): void {
    this.#lag.stop();
  }
}

/**
 * Measures event-loop lag as timer drift: a timer due every 250 ms that
 * fires late shows how long the loop was blocked. Reports the largest drift
 * of the last 10-20 s, so a short block is still visible at the next scrape.
 */
class LoopLagMonitor {
  static readonly INTERVAL_MS = 250;
  static readonly WINDOW_MS = 10_000;
  #current = 0;
  #previous = 0;
  #windowStart = performance.now();
  #last = performance.now();
  #timer: Timer;

  constructor() {
    this.#timer = setInterval(() => this.#tick(), LoopLagMonitor.INTERVAL_MS);
    unrefTimer(this.#timer);
  }

  #tick(): void {
    const now = performance.now();
    const lag = Math.max(0, now - this.#last - LoopLagMonitor.INTERVAL_MS);
    this.#last = now;
    if (now - this.#windowStart >= LoopLagMonitor.WINDOW_MS) {
      this.#previous = this.#current;
      this.#current = 0;
      this.#windowStart = now;
    }
    if (lag > this.#current) this.#current = lag;
  }

  /** @returns The largest drift in the last window or two, in seconds. */
  maxLagSeconds(): number {
    // A loop blocked right now has not ticked yet: count the wait so far too.
    const pending = Math.max(
      0,
      performance.now() - this.#last - LoopLagMonitor.INTERVAL_MS,
    );
    return Math.max(this.#current, this.#previous, pending) / 1000;
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

const START_TIME_S = (Date.now() - performance.now()) / 1000;

function registerProcessMetrics(
  registry: Registry<PrometheusContentType>,
  lag: LoopLagMonitor,
): void {
  const registers = [registry];
  const cpu = (key: "user" | "system" | "total") =>
    function (this: Counter) {
      const s = cpuSeconds();
      if (s === undefined) return;
      const value = key === "total" ? s.user + s.system : s[key];
      this.reset();
      this.inc(value);
    };
  new Counter({
    name: "process_cpu_user_seconds_total",
    help: "User CPU time spent in seconds.",
    registers,
    collect: cpu("user"),
  });
  new Counter({
    name: "process_cpu_system_seconds_total",
    help: "System CPU time spent in seconds.",
    registers,
    collect: cpu("system"),
  });
  new Counter({
    name: "process_cpu_seconds_total",
    help: "Total user and system CPU time spent in seconds.",
    registers,
    collect: cpu("total"),
  });
  const gauge = (name: string, help: string, read: () => number | undefined) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        const v = read();
        if (v !== undefined) this.set(v);
      },
    });
  gauge(
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
    () => memoryUsage().rss,
  );
  gauge(
    "process_heap_used_bytes",
    "JavaScript heap in use, in bytes.",
    () => memoryUsage().heapUsed,
  );
  gauge(
    "process_heap_total_bytes",
    "JavaScript heap reserved, in bytes.",
    () => memoryUsage().heapTotal,
  );
  gauge("process_open_fds", "Number of open file descriptors.", openFds);
  gauge("process_max_fds", "Maximum number of open file descriptors.", maxFds);
  gauge(
    "process_start_time_seconds",
    "Start time of the process since the Unix epoch in seconds.",
    () => START_TIME_S,
  );
  gauge(
    "process_event_loop_lag_seconds",
    "Largest event-loop timer drift over the last 10-20 s, in seconds.",
    () => lag.maxLagSeconds(),
  );
}
