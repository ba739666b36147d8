/**
 * The connect path's figures: connections accepted and resumed, closes by
 * code, HTTP requests and their durations, as plain numbers read by the
 * metrics at scrape time. A release reconnects every client of a color at
 * once, and prom-client's labelled `inc()` and `observe()` validate and hash
 * their labels on every call: a tenth of the server's own work per
 * connection. Here a connection costs two counter additions, a close a map
 * update, a request three map lookups and a bucket search.
 *
 * @module
 */

/**
 * Counts per value of a bounded key, drained by the scrape: what arrived
 * since the last one.
 */
export class PendingCounts<K> {
  readonly #counts = new Map<K, number>();

  /**
   * Counts one occurrence.
   *
   * @param key A value from a bounded set (the caller bounds it).
   */
  add(key: K): void {
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
  }

  /**
   * Hands each key's count since the last call to `each`, then starts over
   * from 0 (keys stay, so a map of a bounded set is allocated once).
   *
   * @param each Called with each key counted since the last drain.
   */
  drain(each: (key: K, count: number) => void): void {
    for (const [key, count] of this.#counts) {
      if (count === 0) continue;
      each(key, count);
      this.#counts.set(key, 0);
    }
  }
}

/** One `{method, endpoint}`'s durations and counts by status. */
export interface RouteFigures {
  /** The `method` label. */
  readonly method: string;
  /** The `endpoint` label (the route template, or `unmatched`). */
  readonly endpoint: string;
  /** Requests by status since the last scrape (`http_requests_total`). */
  readonly statuses: PendingCounts<number>;
  /** Non-cumulative bucket counts; the last slot is +Inf. */
  readonly counts: Float64Array;
  /** Sum of the durations, in seconds. */
  sum: number;
  /** Number of durations. */
  count: number;
}

/**
 * `http_requests_total` and `http_request_duration_seconds` as plain
 * numbers. Every label comes from a fixed set (the method label, the route
 * table, a status the app chose), so the maps are bounded by the caller.
 */
export class HttpStats {
  /** method → endpoint → figures: lookups of constant strings, no key built. */
  readonly #routes = new Map<string, Map<string, RouteFigures>>();
  readonly #bounds: readonly number[];

  /**
   * Creates empty figures.
   *
   * @param buckets Upper bounds of the duration histogram in seconds,
   *   ascending, without +Inf.
   */
  constructor(buckets: readonly number[]) {
    this.#bounds = buckets;
  }

  /**
   * Records one answered request.
   *
   * @param method The bounded `method` label.
   * @param endpoint The route template, or `unmatched`.
   * @param status The response's status.
   * @param seconds Time until the response was ready, in seconds.
   */
  record(
    method: string,
    endpoint: string,
    status: number,
    seconds: number,
  ): void {
    let byEndpoint = this.#routes.get(method);
    if (byEndpoint === undefined) {
      this.#routes.set(method, byEndpoint = new Map());
    }
    let figures = byEndpoint.get(endpoint);
    if (figures === undefined) {
      figures = {
        method,
        endpoint,
        statuses: new PendingCounts(),
        counts: new Float64Array(this.#bounds.length + 1),
        sum: 0,
        count: 0,
      };
      byEndpoint.set(endpoint, figures);
    }
    figures.statuses.add(status);
    let i = 0;
    const bounds = this.#bounds;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    figures.counts[i]!++;
    figures.sum += seconds;
    figures.count++;
  }

  /**
   * Every `{method, endpoint}` seen, in the order first seen.
   *
   * @returns The figures, live (read them synchronously).
   */
  *routes(): IterableIterator<RouteFigures> {
    for (const byEndpoint of this.#routes.values()) yield* byEndpoint.values();
  }
}

/**
 * Connections accepted and resumed, and closes by code, as plain numbers
 * (`websocket_connections_total`, `websocket_session_resumes_total`,
 * `websocket_disconnects_total`).
 */
export class ConnectionStats {
  /** Connections accepted. */
  accepted = 0;
  /** Connections that continued an existing session's count. */
  resumed = 0;
  /**
   * Closes since the last scrape by close code; the caller maps codes
   * outside the labelled set to one key.
   */
  readonly closes: PendingCounts<number> = new PendingCounts();
}
