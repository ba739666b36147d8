/**
 * Process and runtime metrics: CPU, memory, file descriptors, start time and
 * event-loop lag, with the names Prometheus' process collectors use.
 *
 * prom-client's `collectDefaultMetrics()` is not used: on Deno 2.9 its
 * event-loop lag missed a 500 ms block (3 µs), GC durations never arrive,
 * resident memory and open descriptors read 0 and `process_max_fds` is
 * missing without `--allow-all`, and it starts timers it cannot stop. What it
 * reads correctly (CPU from `getrusage`, the V8 heap) is read here from the same
 * sources. docs/OBSERVABILITY.md has the series-by-series check.
 *
 * @module
 */
import {
  Counter,
  type PrometheusContentType,
  type Registry,
} from "prom-client";
import {
  cpuSeconds,
  maxFds,
  memoryUsage,
  openFds,
  type Timer,
  unrefTimer,
} from "../platform.ts";
import { CollectedGauge } from "./collector.ts";

/**
 * Measures event-loop lag as timer drift: a timer due every 250 ms that
 * fires late shows how long the loop was blocked. Reports the largest drift
 * of the last 10-20 s, so a short block is still visible at the next scrape.
 *
 * Measures nothing until {@link LoopLagMonitor.start}; disposing stops the
 * timer and keeps the figures measured so far.
 *
 * @example
 * ```ts
 * import { LoopLagMonitor } from "./process_metrics.ts";
 * using lag = new LoopLagMonitor();
 * lag.start();
 * lag.maxLagSeconds(); // 0 until the loop is blocked
 * ```
 */
export class LoopLagMonitor implements Disposable {
  /** Timer period in milliseconds. */
  static readonly INTERVAL_MS = 250;
  /** Length of one window of the maximum, in milliseconds. */
  static readonly WINDOW_MS = 10_000;
  #current = 0;
  #previous = 0;
  #windowStart = 0;
  #last = 0;
  #started = false;
  #timer: Timer | undefined;

  /** Starts the timer; does nothing while it runs. */
  start(): void {
    if (this.#timer !== undefined) return;
    this.#started = true;
    this.#last = this.#windowStart = performance.now();
    this.#timer = setInterval(() => this.#tick(), LoopLagMonitor.INTERVAL_MS);
    // The process may exit while the timer is pending.
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

  /**
   * The largest drift in the last window or two.
   *
   * @returns Seconds; `undefined` before {@link LoopLagMonitor.start}.
   */
  maxLagSeconds(): number | undefined {
    if (!this.#started) return undefined;
    // A loop blocked right now has not ticked yet: count the wait so far too.
    const pending = this.#timer === undefined ? 0 : Math.max(
      0,
      performance.now() - this.#last - LoopLagMonitor.INTERVAL_MS,
    );
    return Math.max(this.#current, this.#previous, pending) / 1000;
  }

  /** Stops the timer. */
  [Symbol.dispose](): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/** Unix time of the runtime's time origin (process start), in seconds. */
const START_TIME_S = (Date.now() - performance.now()) / 1000;

/**
 * Registers the `process_*` metrics, all read at scrape time.
 *
 * `process_open_fds` and `process_max_fds` read `/proc/self`, which Deno
 * opens only to `--allow-all`: without it they have no sample.
 *
 * @param registry Where to register them.
 * @param lag Source of `process_event_loop_lag_seconds` (started by its owner).
 */
export function registerProcessMetrics(
  registry: Registry<PrometheusContentType>,
  lag: LoopLagMonitor,
): void {
  const registers = [registry];
  const cpu = (key: "user" | "system" | "total") =>
    function (this: Counter) {
      const s = cpuSeconds();
      this.reset();
      this.inc(key === "total" ? s.user + s.system : s[key]);
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
    new CollectedGauge({ name, help, registers, read });
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
