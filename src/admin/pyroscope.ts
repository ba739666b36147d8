/**
 * Continuous profiling: a CPU profile of this process runs all the time and
 * every `PROFILE_INTERVAL_S` the piece just recorded is pushed to Grafana
 * Pyroscope's ingest HTTP API (`POST /ingest`, `format=pprof`, the gzipped
 * profile as the multipart field `profile`), named
 * `sockeye{service_name=sockeye,color=…,version=…}`.
 *
 * A push never blocks the frame path (it is a `fetch` off the event loop's
 * critical work) and never queues: at most one is in flight, with a timeout
 * under the interval; a piece recorded while the previous push still runs is
 * dropped and counted as a failure. Failures count in
 * `app_profile_pushes_total{result="error"}` and are logged once per outage.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import {
  Counter,
  type PrometheusContentType,
  type Registry,
} from "prom-client";
import { type Timer, unrefTimer } from "../platform.ts";
import { cpuToPprof, encodeGzipped } from "./pprof.ts";
import { CpuRecorder } from "./profiler.ts";

/** Longest wait for Pyroscope's answer, in ms (less when the interval is shorter). */
export const PUSH_TIMEOUT_MS = 10_000;

/** Options for {@link PyroscopePusher}. */
export interface PyroscopeOptions {
  /** Pyroscope's base URL; user information becomes HTTP basic auth. */
  readonly url: string;
  /** Seconds between pushes, each covering that long. */
  readonly intervalS: number;
  /** Labels of the series: `color` and `version` (`service_name` is added). */
  readonly labels: { readonly color: string; readonly version: string };
  /** Registry that gets `app_profile_pushes_total`. */
  readonly registry: Registry<PrometheusContentType>;
  /** Where the outage lines go. */
  readonly log: Logger;
}

/**
 * Builds the ingest URL for one profile.
 *
 * @param base Pyroscope's base URL, without credentials.
 * @param name Application name with labels, e.g. `sockeye{color=blue}`.
 * @param from Start, ms since the Unix epoch.
 * @param until End, ms since the Unix epoch.
 * @returns `…/ingest?name=…&from=…&until=…&format=pprof` (Unix seconds).
 */
export function ingestUrl(
  base: URL,
  name: string,
  from: number,
  until: number,
): URL {
  const url = new URL("ingest", base.href.endsWith("/") ? base : `${base}/`);
  url.searchParams.set("name", name);
  url.searchParams.set("from", String(Math.floor(from / 1000)));
  url.searchParams.set("until", String(Math.ceil(until / 1000)));
  url.searchParams.set("format", "pprof");
  return url;
}

/** Pushes a CPU profile to Pyroscope every interval. */
export class PyroscopePusher {
  readonly #base: URL;
  readonly #auth: string | undefined;
  readonly #name: string;
  readonly #intervalMs: number;
  readonly #log: Logger;
  readonly #pushes: Counter<"result">;
  readonly #recorder = new CpuRecorder();
  readonly #stopping = new AbortController();
  #timer: Timer | undefined;
  #inFlight = false;
  /** Failures since the last success; the first one is logged. */
  #failures = 0;
  #failingSince = 0;

  /**
   * Creates the pusher and its metric; nothing runs until {@link start}.
   *
   * @param options Where to push, how often, labels, metrics and logger.
   */
  constructor(options: PyroscopeOptions) {
    const url = new URL(options.url);
    if (url.username || url.password) {
      const user = decodeURIComponent(url.username);
      const password = decodeURIComponent(url.password);
      this.#auth = `Basic ${btoa(`${user}:${password}`)}`;
      url.username = url.password = "";
    }
    this.#base = url;
    const { color, version } = options.labels;
    this.#name =
      `sockeye{service_name=sockeye,color=${color},version=${version}}`;
    this.#intervalMs = options.intervalS * 1000;
    this.#log = options.log;
    this.#pushes = new Counter({
      name: "app_profile_pushes_total",
      help: "CPU profiles pushed to Pyroscope, by result: ok, or error " +
        "(refused, unreachable, timed out, or dropped while the previous " +
        "push still ran).",
      labelNames: ["result"],
      registers: [options.registry],
    });
    this.#pushes.labels("ok").inc(0);
    this.#pushes.labels("error").inc(0);
  }

  /**
   * Starts the profile and the push timer.
   *
   * @returns Resolves once V8 samples.
   */
  async start(): Promise<void> {
    await this.#recorder.start();
    this.#timer = setInterval(() => this.#tick(), this.#intervalMs);
    unrefTimer(this.#timer);
  }

  /** Stops profiling and abandons a push in flight. */
  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#stopping.abort();
    this.#recorder.stop();
  }

  async #tick(): Promise<void> {
    let taken;
    try {
      taken = await this.#recorder.cut();
    } catch (error) {
      if (this.#stopping.signal.aborted) return;
      return this.#failed(error);
    }
    if (this.#inFlight) {
      return this.#failed(new Error("the previous push is still running"));
    }
    this.#inFlight = true;
    try {
      const body = new FormData();
      body.append(
        "profile",
        new Blob([await encodeGzipped(cpuToPprof(taken)) as BlobPart]),
        "profile.pb.gz",
      );
      const res = await fetch(
        ingestUrl(this.#base, this.#name, taken.startedAt, taken.endedAt),
        {
          method: "POST",
          body,
          headers: this.#auth ? { Authorization: this.#auth } : {},
          signal: AbortSignal.any([
            this.#stopping.signal,
            AbortSignal.timeout(Math.min(PUSH_TIMEOUT_MS, this.#intervalMs)),
          ]),
        },
      );
      const text = await res.text();
      if (!res.ok) {
        throw new Error(
          `Pyroscope answered ${res.status}: ${text.slice(0, 200)}`,
        );
      }
      this.#succeeded();
    } catch (error) {
      if (!this.#stopping.signal.aborted) this.#failed(error);
    } finally {
      this.#inFlight = false;
    }
  }

  #succeeded(): void {
    this.#pushes.labels("ok").inc();
    if (this.#failures === 0) return;
    this.#log.info("Pyroscope push recovered after {failures} failures", {
      failures: this.#failures,
      outage_seconds: Math.round(performance.now() - this.#failingSince) /
        1000,
    });
    this.#failures = 0;
  }

  #failed(error: unknown): void {
    this.#pushes.labels("error").inc();
    if (this.#failures++ > 0) return;
    this.#failingSince = performance.now();
    this.#log.warning(
      "Cannot push a CPU profile to Pyroscope: {reason}; counting failures " +
        "until a push succeeds",
      {
        reason: error instanceof Error ? error.message : String(error),
        pyroscope_url: this.#base.href,
      },
    );
  }
}
