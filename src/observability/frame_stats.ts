/**
 * The hot path's figures: per-frame counts and message latencies as plain
 * numbers, read by the metrics only at scrape time.
 *
 * @module
 */

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
