/**
 * `sockeye monitor`: a view for the operator. Per instance (color): health,
 * readiness, the session store, active connections; between refreshes the
 * messages per second, reply latency p50/p95/p99 (from the
 * `websocket_message_duration_seconds` histogram), errors by type and the
 * five series moving fastest, leaving out the monitor's own probes; and the
 * latest error lines tailed from a log file or stdin
 * (`docker compose logs -f | sockeye monitor --logs -`).
 *
 * On a terminal the screen is redrawn every `--interval` seconds; otherwise
 * each refresh is printed as a plain block, or as one JSON object with
 * `--json`. `--once` takes one sample (two scrapes an interval apart) and
 * exits.
 *
 * @module
 */
import { type CommandSpec, parseCommand, usageError } from "./_args.ts";
import {
  print,
  printError,
  readFrom,
  stdio,
  stdoutIsTerminal,
} from "../platform.ts";
import { type Env } from "../settings.ts";
import { ErrorTail } from "./monitor_logs.ts";
import {
  type InstanceView,
  type OwnRequests,
  probe,
  type Rates,
  rates,
  type Scrape,
  scrape,
  storeState,
} from "./monitor_sample.ts";

/** One instance at one refresh. */
export interface InstanceSample extends InstanceView {
  /** The store's state, e.g. `memory ok`, `redis error: …`, `-`. */
  readonly store: string;
  /** What moved since the previous refresh; `undefined` on the first. */
  readonly rates: Rates | undefined;
}

const MONITOR = {
  name: "monitor",
  summary: "Shows, per instance: health, readiness, the session store and " +
    "open sockets; per second\nsince the last refresh: messages, reply " +
    "latency p50/p95/p99, errors by type and the\nfastest-moving counters " +
    "(its own probe requests left out); and the latest error lines\nof a " +
    "log file or of stdin.",
  options: {
    url: {
      type: "string",
      multiple: true,
      arg: "URL",
      doc: "an instance's base URL; repeat for several (default " +
        "http://127.0.0.1:$ADMIN_PORT, else :$PORT: where /metrics is)",
    },
    interval: {
      type: "string",
      arg: "S",
      default: "2",
      doc: "seconds between refreshes",
    },
    duration: {
      type: "string",
      arg: "S",
      default: "0",
      doc: "stop after S seconds; 0 runs until interrupted",
    },
    once: {
      type: "boolean",
      default: false,
      doc: "one sample (two scrapes an interval apart), then exit",
    },
    json: {
      type: "boolean",
      default: false,
      doc: "print each sample as one JSON object (a line)",
    },
    logs: {
      type: "string",
      arg: "FILE|-",
      doc: "tail error lines from FILE, or from stdin with -",
    },
    token: {
      type: "string",
      arg: "TOKEN",
      doc: "bearer token for /metrics (default $METRICS_TOKEN)",
    },
    "metrics-only": {
      type: "boolean",
      default: false,
      doc: "show instances and metrics, no logs",
    },
    "logs-only": {
      type: "boolean",
      default: false,
      doc: "show only the log lines",
    },
  },
  footer: "Exit codes: 0; with --once, 1 when an instance's /healthz does " +
    "not answer 200; 2 on a bad\ncommand line.",
} as const satisfies CommandSpec;

const fixed = (v: number, digits = 2) => v.toFixed(digits);
const ms = (seconds: number | undefined) =>
  seconds === undefined || Number.isNaN(seconds)
    ? "n/a"
    : fixed(seconds * 1000, 3);

/**
 * Renders one refresh as text.
 *
 * @param instances Each instance's probes and rates.
 * @param errors Error lines to show, or `undefined` when logs are off.
 * @param now The time to stamp.
 * @returns The screen's text.
 */
export function render(
  instances: readonly InstanceSample[],
  errors: readonly string[] | undefined,
  now: Date,
): string {
  const out = [`sockeye monitor  ${now.toISOString()}`];
  if (instances.length > 0) {
    const tag = (i: InstanceSample) => instances.length > 1 ? `${i.url} ` : "";
    out.push(
      "",
      "COLOR    HEALTH       READINESS    STORE            CONNECTIONS  URL",
    );
    for (const i of instances) {
      out.push(
        `${i.color.padEnd(8)} ${i.health.padEnd(12)} ${
          i.readiness.padEnd(12)
        } ${i.store.padEnd(16)} ${
          String(i.activeConnections ?? "-").padEnd(12)
        } ${i.url}`,
      );
    }
    const seconds = instances.find((i) => i.rates)?.rates?.seconds;
    out.push(
      "",
      `TRAFFIC (per second${
        seconds ? ` over the last ${fixed(seconds, 1)} s` : ""
      })`,
      "COLOR    MESSAGES/S   P50 ms     P95 ms     P99 ms     URL",
    );
    for (const i of instances) {
      const r = i.rates;
      out.push(
        `${i.color.padEnd(8)} ${
          (r ? fixed(r.messagesPerSecond) : "-").padEnd(12)
        } ${(r ? ms(r.latency?.p50) : "-").padEnd(10)} ${
          (r ? ms(r.latency?.p95) : "-").padEnd(10)
        } ${(r ? ms(r.latency?.p99) : "-").padEnd(10)} ${i.url}`,
      );
    }
    out.push("", "ERRORS BY TYPE (per second)");
    const errs = instances.flatMap((i) =>
      Object.entries(i.rates?.errorsPerSecond ?? {}).map(([type, rate]) =>
        `  ${fixed(rate).padStart(12)}  ${tag(i)}${type}`
      )
    );
    out.push(...(errs.length > 0 ? errs : ["  (none)"]));
    out.push("", "FASTEST-MOVING SERIES (per second)");
    const movers = instances.flatMap((i) =>
      (i.rates?.movers ?? []).map((m) => ({ ...m, series: tag(i) + m.series }))
    ).sort((a, b) => b.perSecond - a.perSecond).slice(0, 5);
    if (movers.length === 0) out.push("  (none moved since the last refresh)");
    for (const m of movers) {
      out.push(`  ${fixed(m.perSecond).padStart(12)}  ${m.series}`);
    }
  }
  if (errors !== undefined) {
    out.push("", "ERROR LINES");
    if (errors.length === 0) out.push("  (none)");
    for (const line of errors) out.push(`  ${line}`);
  }
  return out.join("\n");
}

/**
 * Renders one refresh as a JSON object, for scripts.
 *
 * @param instances Each instance's probes and rates.
 * @param errors Error lines, or `undefined` when logs are off.
 * @param now The time to stamp.
 * @returns One line of JSON: `timestamp`, `instances` (rates `null` on the
 *   first refresh; latency in seconds, `null` without replies) and
 *   `error_lines` when logs are read.
 */
export function renderJson(
  instances: readonly InstanceSample[],
  errors: readonly string[] | undefined,
  now: Date,
): string {
  const round = (v: number) => Math.round(v * 1e6) / 1e6;
  return JSON.stringify({
    timestamp: now.toISOString(),
    instances: instances.map((i) => ({
      url: i.url,
      up: i.up,
      color: i.color,
      health: i.health,
      readiness: i.readiness,
      store: i.store,
      active_connections: i.activeConnections ?? null,
      interval_seconds: i.rates ? round(i.rates.seconds) : null,
      messages_per_second: i.rates ? round(i.rates.messagesPerSecond) : null,
      reply_latency_seconds: i.rates?.latency
        ? {
          p50: round(i.rates.latency.p50),
          p95: round(i.rates.latency.p95),
          p99: round(i.rates.latency.p99),
        }
        : null,
      errors_per_second: i.rates
        ? Object.fromEntries(
          Object.entries(i.rates.errorsPerSecond).map((
            [k, v],
          ) => [k, round(v)]),
        )
        : null,
      fastest: i.rates
        ? i.rates.movers.map((m) => ({
          series: m.series,
          per_second: round(m.perSecond),
        }))
        : null,
    })),
    ...(errors === undefined ? {} : { error_lines: errors }),
  });
}

/** Keeps each instance's last scrape, to work out rates at the next one. */
class Sampler {
  readonly #urls: readonly string[];
  readonly #token: string | undefined;
  readonly #previous = new Map<string, Scrape>();

  constructor(urls: readonly string[], token: string | undefined) {
    this.#urls = urls;
    this.#token = token;
  }

  /** Probes and scrapes every instance once. */
  sample(): Promise<InstanceSample[]> {
    return Promise.all(this.#urls.map(async (url) => {
      const view = await probe(url);
      const metrics = await scrape(url, this.#token);
      const before = this.#previous.get(url);
      let r: Rates | undefined;
      if (metrics !== undefined && before !== undefined) {
        // Between the two scrapes the service answered this round's probes
        // and the previous scrape (counted after its own body was written).
        const own: OwnRequests = new Map([
          ...view.requests,
          ["/metrics", new Map([["200", 1]])],
        ]);
        r = rates(before, metrics, own);
      }
      if (metrics) this.#previous.set(url, metrics);
      else this.#previous.delete(url);
      return { ...view, store: storeState(view, metrics), rates: r };
    }));
  }
}

/** Parses a number of seconds, or says what is wrong with it. */
function seconds(raw: string, name: string, above0: boolean): number | string {
  const v = Number(raw);
  return raw.trim() !== "" && Number.isFinite(v) && (above0 ? v > 0 : v >= 0)
    ? v
    : `cannot parse --${name} "${raw}" for monitor: expected a number ${
      above0 ? "above 0" : "of at least 0"
    }`;
}

/**
 * The `monitor` subcommand.
 *
 * @param args Command-line options (see `--help`).
 * @param env The environment, for `ADMIN_PORT`, `PORT` and `METRICS_TOKEN`.
 * @returns Exit code: 0; with `--once`, 1 when an instance is down; 2 on a
 *   bad command line or an unreadable log file.
 */
export async function monitorCommand(
  args: readonly string[],
  env: Env,
): Promise<number> {
  const parsed = parseCommand(MONITOR, args);
  if (typeof parsed === "number") return parsed;
  const { values } = parsed;
  const interval = seconds(values.interval, "interval", true);
  const duration = seconds(values.duration, "duration", false);
  if (typeof interval === "string") return usageError("monitor", interval);
  if (typeof duration === "string") return usageError("monitor", duration);
  // With ADMIN_PORT set, /metrics is answered on the admin port only.
  const port = env.ADMIN_PORT || env.PORT || "8000";
  const urls = (values.url ?? [`http://127.0.0.1:${port}`])
    .map((u) => u.replace(/\/+$/, ""));
  const bad = urls.find((u) => !/^https?:\/\/[^/]/.test(u) || !URL.canParse(u));
  if (bad !== undefined) {
    return usageError(
      "monitor",
      `cannot parse --url "${bad}" for monitor: expected an http:// or https:// URL`,
    );
  }
  const showMetrics = !values["logs-only"];
  const showLogs = !values["metrics-only"] && values.logs !== undefined;

  const stop = new AbortController();
  const tail = new ErrorTail(10);
  let following: Promise<void> = Promise.resolve();
  // A file is read from its start and followed as it grows, like `tail -f`.
  let fileOffset = 0;
  const decoder = new TextDecoder();
  const readFile = async () => {
    const { bytes, size } = await readFrom(values.logs!, fileOffset);
    fileOffset = size;
    tail.push(decoder.decode(bytes, { stream: true }));
  };
  if (showLogs) {
    if (values.logs === "-") following = tail.follow(stdio.stdin, stop.signal);
    else {
      try {
        await readFile();
      } catch (error) {
        printError(
          `sockeye monitor: Cannot read ${values.logs}: ${
            (error as Error).message
          }`,
        );
        return 2;
      }
    }
  }

  const sampler = new Sampler(
    showMetrics ? urls : [],
    values.token ?? env.METRICS_TOKEN,
  );
  const wait = () => new Promise((r) => setTimeout(r, interval * 1000));
  const terminal = stdoutIsTerminal() && !values.json && !values.once;
  const started = performance.now();
  let instances: InstanceSample[] = [];
  // --once: a first scrape, so the sample shown has rates.
  if (values.once && showMetrics) {
    await sampler.sample();
    await wait();
  }
  while (true) {
    if (showLogs && values.logs !== "-") await readFile().catch(() => {});
    instances = await sampler.sample();
    const errors = showLogs ? tail.lines : undefined;
    const now = new Date();
    if (values.json) print(renderJson(instances, errors, now));
    else {
      const screen = render(instances, errors, now);
      print(terminal ? `\x1b[2J\x1b[H${screen}` : `${screen}\n`);
    }
    if (values.once) break;
    const elapsed = (performance.now() - started) / 1000;
    if (duration > 0 && elapsed + interval > duration) break;
    await wait();
  }
  stop.abort();
  await following;
  return values.once && instances.some((i) => !i.up) ? 1 : 0;
}
