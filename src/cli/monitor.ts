/**
 * `sockeye monitor`: a terminal view for the operator. Per instance (color):
 * health, readiness, active connections; the five series moving fastest
 * between refreshes; and the latest error lines tailed from a log file or
 * stdin (`docker compose logs -f | sockeye monitor --logs -`).
 *
 * On a terminal the screen is redrawn every `--interval` seconds; otherwise
 * each refresh is printed as a plain block.
 *
 * @module
 */
import { parseCommand } from "./_args.ts";
import {
  print,
  printError,
  readFrom,
  stdio,
  stdoutIsTerminal,
} from "../platform.ts";
import { parsePrometheusText, seriesKey } from "./prometheus_text.ts";

/** What one instance answered at one refresh. */
export interface InstanceView {
  /** Base URL probed. */
  readonly url: string;
  /** Color from `/healthz`, `?` when unknown. */
  readonly color: string;
  /** `healthy`, another status, or `unreachable`. */
  readonly health: string;
  /** `ready`, or the failing status with its checks, or `unreachable`. */
  readonly readiness: string;
  /** Open sockets from `/readyz`. */
  readonly activeConnections: number | undefined;
}

/** A series and how fast it moved, per second. */
export interface Mover {
  /** Series key, e.g. `websocket_messages_total{color="blue",type="sent"}`. */
  readonly series: string;
  /** Change per second between two refreshes. */
  readonly perSecond: number;
}

const HELP = `Usage: sockeye monitor [options]

  --url URL          an instance's base URL; repeat for several (default http://127.0.0.1:$PORT)
  --interval S       seconds between refreshes (default 2)
  --duration S       stop after S seconds; 0 runs until interrupted (default 0)
  --logs FILE|-      tail error lines from FILE, or from stdin with -
  --token TOKEN      bearer token for /metrics (default $METRICS_TOKEN)
  --metrics-only     show instances and metrics, no logs
  --logs-only        show only the log lines
`;

async function fetchJson(
  url: string,
): Promise<{ status: number; body: Record<string, unknown> } | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return { status: res.status, body: await res.json() };
  } catch {
    return undefined;
  }
}

/**
 * Reads one instance's probes.
 *
 * @param base Base URL, e.g. `http://127.0.0.1:8000`.
 * @returns Health, readiness and connections; `unreachable` when it does not answer.
 */
export async function probe(base: string): Promise<InstanceView> {
  const [health, ready] = await Promise.all([
    fetchJson(`${base}/healthz`),
    fetchJson(`${base}/readyz`),
  ]);
  return {
    url: base,
    color: String(health?.body.color ?? ready?.body.color ?? "?"),
    health: health === undefined
      ? "unreachable"
      : String(health.body.status ?? health.status),
    readiness: ready === undefined
      ? "unreachable"
      : `${ready.body.status ?? ready.status}${
        ready.status === 200
          ? ""
          : ` ${JSON.stringify(ready.body.checks ?? {})}`
      }`,
    activeConnections: typeof ready?.body.active_connections === "number"
      ? ready.body.active_connections
      : undefined,
  };
}

/**
 * Ranks series by how fast they changed between two scrapes.
 *
 * @param before Series key → value at the earlier scrape.
 * @param after Series key → value now.
 * @param seconds Time between the scrapes.
 * @param n How many to keep.
 * @returns The `n` fastest-moving counters (`*_total`, histogram `*_count`).
 */
export function topMovers(
  before: Map<string, number>,
  after: Map<string, number>,
  seconds: number,
  n = 5,
): Mover[] {
  const movers: Mover[] = [];
  for (const [series, value] of after) {
    // Counters only: their rates compare; gauges in bytes would drown them.
    if (!/^\w+_(total|count)(\{|$)/.test(series)) continue;
    const previous = before.get(series);
    if (previous === undefined || !Number.isFinite(value - previous)) continue;
    const perSecond = (value - previous) / seconds;
    if (perSecond !== 0) movers.push({ series, perSecond });
  }
  movers.sort((a, b) => Math.abs(b.perSecond) - Math.abs(a.perSecond));
  return movers.slice(0, n);
}

async function scrape(
  base: string,
  token: string | undefined,
): Promise<Map<string, number> | undefined> {
  try {
    const res = await fetch(`${base}/metrics`, {
      signal: AbortSignal.timeout(2000),
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
    if (!res.ok) {
      await res.body?.cancel();
      return undefined;
    }
    const { samples } = parsePrometheusText(await res.text());
    return new Map(samples.map((s) => [seriesKey(s), s.value]));
  } catch {
    return undefined;
  }
}

/**
 * Whether a log line reports an error: a JSON line at `error` or
 * `critical`, possibly behind a `docker compose logs` prefix, or a plain
 * line containing ERROR.
 *
 * @param line One line of log text.
 * @returns The line to show (the JSON part), or `undefined`.
 */
export function errorLine(line: string): string | undefined {
  const start = line.indexOf("{");
  if (start >= 0) {
    try {
      const event = JSON.parse(line.slice(start));
      if (event.level === "error" || event.level === "critical") {
        return `${event.timestamp ?? ""} ${event.color ?? ""} ${
          String(event.level).toUpperCase()
        } ${event.logger ?? ""}: ${event.message ?? ""}`.trim();
      }
      return undefined;
    } catch { /* not JSON: fall through */ }
  }
  return /\b(ERROR|CRITICAL)\b/.test(line) ? line.trim() : undefined;
}

/** Keeps the last error lines of a log text that arrives in pieces. */
class ErrorTail {
  readonly lines: string[] = [];
  readonly #keep: number;
  #rest = "";

  constructor(keep: number) {
    this.#keep = keep;
  }

  /** Takes the next piece of text; complete lines are examined. */
  push(text: string): void {
    this.#rest += text;
    let nl;
    while ((nl = this.#rest.indexOf("\n")) >= 0) {
      const shown = errorLine(this.#rest.slice(0, nl));
      this.#rest = this.#rest.slice(nl + 1);
      if (shown === undefined) continue;
      this.lines.push(shown);
      if (this.lines.length > this.#keep) this.lines.shift();
    }
  }

  /** Reads a stream (stdin) until it ends or `signal` aborts. */
  async follow(stream: ReadableStream<Uint8Array>, signal: AbortSignal) {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener("abort", () => reader.cancel().catch(() => {}), {
      once: true,
    });
    try {
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        this.push(value);
      }
    } catch { /* cancelled */ }
  }
}

/**
 * Renders one refresh.
 *
 * @returns The screen's text.
 */
export function render(
  instances: readonly InstanceView[],
  movers: readonly Mover[],
  errors: readonly string[] | undefined,
  now: Date,
): string {
  const out = [`sockeye monitor  ${now.toISOString()}`];
  if (instances.length > 0) {
    out.push(
      "",
      "COLOR    HEALTH       READINESS                 CONNECTIONS  URL",
    );
    for (const i of instances) {
      out.push(
        `${i.color.padEnd(8)} ${i.health.padEnd(12)} ${
          i.readiness.padEnd(25)
        } ${String(i.activeConnections ?? "-").padEnd(12)} ${i.url}`,
      );
    }
    out.push("", "FASTEST-MOVING SERIES (per second)");
    if (movers.length === 0) out.push("  (none moved since the last refresh)");
    for (const m of movers) {
      out.push(`  ${m.perSecond.toFixed(2).padStart(12)}  ${m.series}`);
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
 * The `monitor` subcommand.
 *
 * @param args Command-line options (see `--help`).
 * @param env The environment, for `PORT` and `METRICS_TOKEN`.
 * @returns Exit code: 0, or 2 on bad options.
 */
export async function monitorCommand(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): Promise<number> {
  const values = parseCommand("monitor", args, {
    url: { type: "string", multiple: true },
    interval: { type: "string", default: "2" },
    duration: { type: "string", default: "0" },
    logs: { type: "string" },
    token: { type: "string" },
    "metrics-only": { type: "boolean", default: false },
    "logs-only": { type: "boolean", default: false },
  }, HELP);
  if (typeof values === "number") return values;
  const interval = Number(values.interval);
  const duration = Number(values.duration);
  if (!(interval > 0) || !(duration >= 0)) {
    printError(
      `sockeye monitor: Cannot parse --interval "${values.interval}" or --duration "${values.duration}": expected positive numbers`,
    );
    return 2;
  }
  const urls = (values.url ?? [`http://127.0.0.1:${env.PORT || "8000"}`])
    .map((u) => u.replace(/\/+$/, ""));
  const token = values.token ?? env.METRICS_TOKEN;
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

  const terminal = stdoutIsTerminal();
  const started = performance.now();
  let previous = new Map<string, Map<string, number>>();
  let previousAt = performance.now();
  while (true) {
    if (showLogs && values.logs !== "-") await readFile().catch(() => {});
    const instances = showMetrics ? await Promise.all(urls.map(probe)) : [];
    const now = performance.now();
    const current = new Map<string, Map<string, number>>();
    let movers: Mover[] = [];
    if (showMetrics) {
      for (const url of urls) {
        const metrics = await scrape(url, token);
        if (metrics === undefined) continue;
        current.set(url, metrics);
        const before = previous.get(url);
        if (before !== undefined) {
          const label = urls.length > 1 ? `${url} ` : "";
          movers.push(
            ...topMovers(before, metrics, (now - previousAt) / 1000, 5)
              .map((m) => ({ ...m, series: label + m.series })),
          );
        }
      }
      movers = movers.sort((a, b) =>
        Math.abs(b.perSecond) - Math.abs(a.perSecond)
      )
        .slice(0, 5);
    }
    previous = current;
    previousAt = now;
    const screen = render(
      instances,
      movers,
      showLogs ? tail.lines : undefined,
      new Date(),
    );
    print(terminal ? `\x1b[2J\x1b[H${screen}` : `${screen}\n`);
    const elapsed = (performance.now() - started) / 1000;
    if (duration > 0 && elapsed + interval > duration) break;
    await new Promise((r) => setTimeout(r, interval * 1000));
  }
  stop.abort();
  await following;
  return 0;
}
