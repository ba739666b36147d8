/**
 * What `sockeye monitor` reads from one instance and what it works out:
 * probes (`/healthz`, `/readyz`), a `/metrics` scrape, and between two
 * scrapes the rates: messages per second, reply latency percentiles from
 * the `websocket_message_duration_seconds` histogram, errors by type, and
 * the fastest-moving counters, less the monitor's own probe requests.
 *
 * @module
 */
import {
  parsePrometheusText,
  type Sample,
  seriesKey,
} from "./prometheus_text.ts";

/** What one instance's probes answered. */
export interface InstanceView {
  /** Base URL probed. */
  readonly url: string;
  /** `/healthz` answered 200. */
  readonly up: boolean;
  /** Color from `/healthz`, `?` when unknown. */
  readonly color: string;
  /** `healthy`, another status, or `unreachable`. */
  readonly health: string;
  /** `ready`, `starting`, `draining`, `not_ready`, or `unreachable`. */
  readonly readiness: string;
  /** The store's checks from `/readyz`, e.g. `{ redis: "ok" }`. */
  readonly checks: Readonly<Record<string, string>> | undefined;
  /** Open sockets from `/readyz`. */
  readonly activeConnections: number | undefined;
  /** Our own requests answered, endpoint → status → count (to leave out of rates). */
  readonly requests: OwnRequests;
}

/** Requests the monitor made itself: route → HTTP status → count. */
export type OwnRequests = ReadonlyMap<string, ReadonlyMap<string, number>>;

/** One `/metrics` scrape. */
export interface Scrape {
  /** When it was answered, `performance.now()` in ms. */
  readonly at: number;
  /** Every sample, by {@link seriesKey}. */
  readonly samples: ReadonlyMap<string, Sample>;
}

/** A series and how fast it moved. */
export interface Mover {
  /** Series key, e.g. `websocket_messages_total{color="blue",type="sent"}`. */
  readonly series: string;
  /** Change per second between two scrapes. */
  readonly perSecond: number;
}

/** Reply latency percentiles in seconds. */
export interface Latency {
  /** Median. */
  readonly p50: number;
  /** 95th percentile. */
  readonly p95: number;
  /** 99th percentile. */
  readonly p99: number;
}

/** What moved between two scrapes. */
export interface Rates {
  /** Seconds between the scrapes. */
  readonly seconds: number;
  /** Text frames received per second. */
  readonly messagesPerSecond: number;
  /** Receive → reply percentiles; `undefined` when no frame was answered. */
  readonly latency: Latency | undefined;
  /** `websocket_errors_total` per second by `error_type`, non-zero only. */
  readonly errorsPerSecond: Readonly<Record<string, number>>;
  /** The fastest-moving counters, fastest first. */
  readonly movers: readonly Mover[];
}

async function fetchJson(
  url: string,
): Promise<{ status: number; body: Record<string, unknown> } | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    const text = await res.text();
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(text);
    } catch { /* not JSON: the status still counts */ }
    return { status: res.status, body };
  } catch {
    return undefined;
  }
}

/**
 * Reads one instance's probes.
 *
 * @param base Base URL, e.g. `http://127.0.0.1:8000`.
 * @returns Health, readiness, store checks and connections; `unreachable`
 *   when it does not answer.
 */
export async function probe(base: string): Promise<InstanceView> {
  const [health, ready] = await Promise.all([
    fetchJson(`${base}/healthz`),
    fetchJson(`${base}/readyz`),
  ]);
  const requests = new Map<string, Map<string, number>>();
  if (health) requests.set("/healthz", new Map([[String(health.status), 1]]));
  if (ready) requests.set("/readyz", new Map([[String(ready.status), 1]]));
  const checks = ready?.body.checks;
  return {
    url: base,
    up: health?.status === 200,
    color: String(health?.body.color ?? ready?.body.color ?? "?"),
    health: health === undefined
      ? "unreachable"
      : String(health.body.status ?? health.status),
    readiness: ready === undefined
      ? "unreachable"
      : String(ready.body.status ?? ready.status),
    checks: typeof checks === "object" && checks !== null
      ? checks as Record<string, string>
      : undefined,
    activeConnections: typeof ready?.body.active_connections === "number"
      ? ready.body.active_connections
      : undefined,
    requests,
  };
}

/**
 * Scrapes `/metrics`.
 *
 * @param base Base URL.
 * @param token Bearer token, if `/metrics` needs one.
 * @returns The samples, or `undefined` when it does not answer 200.
 */
export async function scrape(
  base: string,
  token: string | undefined,
): Promise<Scrape | undefined> {
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
    return {
      at: performance.now(),
      samples: new Map(samples.map((s) => [seriesKey(s), s])),
    };
  } catch {
    return undefined;
  }
}

/**
 * Describes the session store's state: the `/readyz` checks, or else
 * `app_dependency_up` from the scrape.
 *
 * @param view The probes.
 * @param metrics The latest scrape, if any.
 * @returns e.g. `memory ok`, `redis error: …`, `redis down`, or `-`.
 */
export function storeState(
  view: InstanceView,
  metrics: Scrape | undefined,
): string {
  if (view.checks && Object.keys(view.checks).length > 0) {
    return Object.entries(view.checks).map(([k, v]) => `${k} ${v}`).join(", ");
  }
  const deps = [...metrics?.samples.values() ?? []]
    .filter((s) => s.name === "app_dependency_up")
    .map((s) => `${s.labels.dependency} ${s.value === 1 ? "up" : "down"}`);
  return deps.length > 0 ? deps.join(", ") : "-";
}

/**
 * The `q`-quantile of a histogram, as PromQL's `histogram_quantile`:
 * linear interpolation inside the bucket that holds the rank.
 *
 * @param q Between 0 and 1.
 * @param buckets Cumulative counts by upper bound (`le`), sorted, ending
 *   with `Infinity`.
 * @returns The estimate in the buckets' unit; `NaN` when the histogram is
 *   empty; the highest finite bound when the rank falls in `+Inf`.
 *
 * @example
 * ```ts
 * histogramQuantile(0.5, [{ le: 1, count: 2 }, { le: 2, count: 4 }, { le: Infinity, count: 4 }]);
 * // 1
 * ```
 */
export function histogramQuantile(
  q: number,
  buckets: readonly { readonly le: number; readonly count: number }[],
): number {
  const total = buckets.at(-1)?.count ?? 0;
  if (!(total > 0)) return NaN;
  const rank = q * total;
  const i = buckets.findIndex((b) => b.count >= rank);
  const bucket = buckets[i]!;
  if (bucket.le === Infinity) return buckets[i - 1]?.le ?? NaN;
  const lower = i === 0 ? 0 : buckets[i - 1]!.le;
  const below = i === 0 ? 0 : buckets[i - 1]!.count;
  const inBucket = bucket.count - below;
  return inBucket === 0
    ? bucket.le
    : lower + (bucket.le - lower) * (rank - below) / inBucket;
}

/** How much a counter grew; a smaller value means it restarted from 0. */
function increase(before: number | undefined, after: number): number {
  if (before === undefined || !Number.isFinite(after - before)) return 0;
  return after >= before ? after - before : after;
}

/** The monitor's own share of an HTTP series' increase. */
function ownShare(sample: Sample, own: OwnRequests): number {
  const byStatus = own.get(sample.labels.endpoint ?? "");
  if (byStatus === undefined || sample.labels.method !== "GET") return 0;
  if (sample.name === "http_requests_total") {
    return byStatus.get(sample.labels.status ?? "") ?? 0;
  }
  if (sample.name === "http_request_duration_seconds_count") {
    let sum = 0;
    for (const n of byStatus.values()) sum += n;
    return sum;
  }
  return 0;
}

/**
 * Works out what moved between two scrapes of one instance.
 *
 * @param before The earlier scrape.
 * @param after The later scrape.
 * @param own The monitor's own requests answered between the two (left out
 *   of the HTTP counters, so an idle service shows nothing moving).
 * @param n How many movers to keep.
 * @returns Messages per second, latency percentiles, errors by type, and
 *   the `n` fastest-moving counters (`*_total`, histogram `*_count`).
 */
export function rates(
  before: Scrape,
  after: Scrape,
  own: OwnRequests = new Map(),
  n = 5,
): Rates {
  const seconds = Math.max((after.at - before.at) / 1000, 1e-3);
  let messages = 0;
  const errorsPerSecond: Record<string, number> = {};
  const buckets = new Map<number, number>();
  const movers: Mover[] = [];
  for (const [key, sample] of after.samples) {
    const grew = increase(before.samples.get(key)?.value, sample.value);
    if (sample.name === "websocket_messages_total") {
      if (sample.labels.type === "received") messages += grew;
    } else if (sample.name === "websocket_errors_total") {
      const type = sample.labels.error_type ?? "";
      if (grew > 0) {
        errorsPerSecond[type] = (errorsPerSecond[type] ?? 0) + grew / seconds;
      }
    } else if (sample.name === "websocket_message_duration_seconds_bucket") {
      const le = Number(sample.labels.le);
      buckets.set(le, (buckets.get(le) ?? 0) + grew);
    }
    // Counters only: their rates compare; gauges in bytes would drown them.
    if (!/^\w+_(total|count)$/.test(sample.name)) continue;
    const moved = Math.max(0, grew - ownShare(sample, own));
    if (moved > 0) movers.push({ series: key, perSecond: moved / seconds });
  }
  movers.sort((a, b) => b.perSecond - a.perSecond);
  const sorted = [...buckets].sort(([a], [b]) => a - b)
    .map(([le, count]) => ({ le, count }));
  const latency = (sorted.at(-1)?.count ?? 0) > 0
    ? {
      p50: histogramQuantile(0.5, sorted),
      p95: histogramQuantile(0.95, sorted),
      p99: histogramQuantile(0.99, sorted),
    }
    : undefined;
  return {
    seconds,
    messagesPerSecond: messages / seconds,
    latency,
    errorsPerSecond,
    movers: movers.slice(0, n),
  };
}
