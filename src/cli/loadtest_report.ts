/**
 * The report of `sockeye loadtest`: its shape, the latency summary
 * (nearest-rank percentiles) and its text rendering; the JSON form is the
 * report itself, as `JSON.stringify` writes it.
 *
 * @module
 */
/**
 * Latency summary in milliseconds; every field is `NaN` when there were no
 * samples (`null` in JSON, `n/a` in the text report), as a Prometheus
 * summary reports an empty quantile.
 */
export interface Percentiles {
  /** Median. */
  readonly p50: number;
  /** 90th percentile. */
  readonly p90: number;
  /** 99th percentile. */
  readonly p99: number;
  /** Largest sample. */
  readonly max: number;
  /** Arithmetic mean. */
  readonly mean: number;
}

/** What the clients of a `reconnect` run saw of the server's closes. */
export interface ReconnectReport {
  /**
   * Closes the server started, by close code (RFC 6455; 1006 when no close
   * frame was read), e.g. `{"1001": 2000}`.
   */
  readonly closes: Readonly<Record<string, number>>;
  /** `{"bye": true, "total": n}` frames received. */
  readonly byes: number;
  /**
   * 1006 closes that came after a bye: the goodbye arrived, the close frame
   * did not. Deno's WebSocket client reports this when a frame it was
   * sending crossed the server's close: it writes that frame after
   * answering the close, the peer resets the connection, and the close
   * frame already read is reported as none.
   */
  readonly resetsAfterBye: number;
  /** Reconnects whose session frame said `"resumed": true`. */
  readonly resumes: number;
  /** Clients that resumed their session at least once. */
  readonly clientsResumed: number;
  /** Reconnect attempts that failed (refused, unreachable, no session frame). */
  readonly failedAttempts: number;
  /**
   * Counts the server forgot: a reply, bye total or resumed count below the
   * last count the client knew.
   */
  readonly lost: number;
  /**
   * Counts of frames the client never sent (or counted twice): a count
   * above the last known plus the frames still unanswered.
   */
  readonly repeated: number;
  /**
   * Frames the server did not count, by its bye total or resumed count:
   * sent as it stopped counting, or lost with their socket. Not an error:
   * they were never answered; with `messages` they are sent again.
   */
  readonly uncounted: number;
  /**
   * Frames the server counted whose reply never came: the socket closed
   * first (the bye total or resumed count holds them). With `lost` and
   * `repeated` at 0, `sent` = `ok` + `uncounted` + `unanswered`.
   */
  readonly unanswered: number;
  /** Gap samples: closes followed by a reply on a resumed socket. */
  readonly gaps: number;
  /** Client-visible gap, close → first reply after resuming, in ms. */
  readonly gapMs: Percentiles;
}

/** What {@link runLoadtest} measured. */
export interface LoadtestReport {
  /** The WebSocket URL tested. */
  readonly url: string;
  /** Sockets asked for, opened, and open together at most. */
  readonly connections: {
    /** Sockets asked for. */
    readonly requested: number;
    /** Sockets whose handshake completed (first connects, not reconnects). */
    readonly opened: number;
    /** Most sockets open at the same moment. */
    readonly peakOpen: number;
  };
  /** Messages sent and correctly answered. */
  readonly messages: {
    /** Messages sent. */
    readonly sent: number;
    /** Replies whose count was exactly the expected next count. */
    readonly ok: number;
    /** Correct replies per second over the send phase. */
    readonly perSecond: number;
  };
  /** Send → reply, in ms. */
  readonly latencyMs: Percentiles;
  /** Handshake time, in ms. */
  readonly connectMs: Percentiles;
  /** Send phase duration in seconds. */
  readonly sendSeconds: number;
  /** Whole run in seconds. */
  readonly durationSeconds: number;
  /**
   * Error counts by kind: connect_failed, connect_timeout, bad_count,
   * bad_frame, unavailable, closed_early, timeout.
   */
  readonly errors: Readonly<Record<string, number>>;
  /** With `reconnect`: closes, resumes, continuity and the gap. */
  readonly reconnect?: ReconnectReport;
}

/**
 * Summarises samples.
 *
 * @param samples Values in any order (sorted in place).
 * @returns Nearest-rank percentiles, max and mean; `NaN` when empty (no
 *   samples, no figure).
 */
export function percentiles(samples: number[] | Float64Array): Percentiles {
  const n = samples.length;
  if (n === 0) return { p50: NaN, p90: NaN, p99: NaN, max: NaN, mean: NaN };
  samples.sort((a, b) => a - b);
  const at = (q: number) => samples[Math.min(n - 1, Math.ceil(q * n) - 1)]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += samples[i]!;
  const r = (v: number) => Math.round(v * 1000) / 1000;
  return {
    p50: r(at(0.5)),
    p90: r(at(0.9)),
    p99: r(at(0.99)),
    max: r(samples[n - 1]!),
    mean: r(sum / n),
  };
}

/**
 * Formats a report for people.
 *
 * @param r A report from {@link runLoadtest}.
 * @returns Multi-line text.
 */
export function formatReport(r: LoadtestReport): string {
  const errs =
    Object.entries(r.errors).map(([k, v]) => `${k}=${v}`).join(" ") ||
    "none";
  const ms = (v: number) => Number.isNaN(v) ? "n/a" : `${v} ms`;
  const p = (x: Percentiles) =>
    `p50 ${ms(x.p50)}, p90 ${ms(x.p90)}, p99 ${ms(x.p99)}, max ${ms(x.max)}`;
  const rc = r.reconnect;
  const byCode = (closes: Readonly<Record<string, number>>) =>
    Object.entries(closes).map(([k, v]) => `${k}=${v}`).join(" ") || "none";
  return [
    `target       ${r.url}`,
    `connections  ${r.connections.opened}/${r.connections.requested} opened, peak ${r.connections.peakOpen} open together`,
    `messages     ${r.messages.ok}/${r.messages.sent} correct in ${r.sendSeconds} s = ${r.messages.perSecond} msg/s`,
    `latency      ${p(r.latencyMs)}`,
    `connect      ${p(r.connectMs)}`,
    ...(rc
      ? [
        `closes       ${
          byCode(rc.closes)
        } (by the server); ${rc.byes} byes, ${rc.resetsAfterBye} of them followed by 1006`,
        `resumed      ${rc.resumes} reconnects by ${rc.clientsResumed} clients, ${rc.failedAttempts} failed attempts`,
        `continuity   lost ${rc.lost}, repeated ${rc.repeated}; at closes ${rc.uncounted} frames not counted, ${rc.unanswered} counted without a reply`,
        `gap          ${p(rc.gapMs)} (close → first reply, ${rc.gaps} samples)`,
      ]
      : []),
    `errors       ${errs}`,
    `duration     ${r.durationSeconds} s`,
  ].join("\n");
}

/**
 * Whether a run failed: no socket connected, a reply's count was wrong, a
 * count was lost or repeated (with `failOnError`, any error counted).
 *
 * @param report A report from {@link runLoadtest}.
 * @param failOnError Count every error as a failure.
 * @returns `true` when the run failed.
 */
export function failed(report: LoadtestReport, failOnError = false): boolean {
  const errorCount = Object.values(report.errors).reduce((a, b) => a + b, 0);
  return report.connections.opened === 0 ||
    (report.errors.bad_count ?? 0) > 0 ||
    (report.reconnect?.lost ?? 0) > 0 ||
    (report.reconnect?.repeated ?? 0) > 0 ||
    (failOnError && errorCount > 0);
}
