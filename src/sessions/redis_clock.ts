/**
 * Redis's clock as the session store sees it: per master, lower bounds of the
 * offset between our monotonic clock and its `TIME`, measured at every
 * (re)connect and every {@link CLOCK_SYNC_INTERVAL_MS}. Redis's reading
 * happened before its reply arrived, so `redis_ms - local_ms_at_reply` can
 * only underestimate the offset. A batch's deadline on Redis's clock is its
 * send time plus that offset, plus {@link COMMAND_TIMEOUT_MS}, minus
 * {@link DEADLINE_MARGIN_MS}.
 *
 * @module
 */
import type { Shard } from "./redis_topology.ts";
import {
  CLOCK_SYNC_INTERVAL_MS,
  COMMAND_TIMEOUT_MS,
  DEADLINE_MARGIN_MS,
} from "./redis_commands.ts";

/** Redis's clock offsets per master, and the deadlines drawn from them. */
export class RedisClock {
  /** Per master: lower bounds of (Redis epoch ms − `performance.now()`), newest last. */
  #offsets = new Map<string, Array<{ offset: number; at: number }>>();

  /** Forgets every measurement (another server may answer now). */
  clear(): void {
    this.#offsets.clear();
  }

  /**
   * Redis time past which a command sent at `sentAt` must not run.
   *
   * @param sentAt `performance.now()` at the send.
   * @param shard The master it runs on. Without one, or for a master not
   *   measured yet (just found in a Cluster, measured in the background),
   *   the lowest offset of any master: the nodes' clocks agree within the
   *   margin, and a lower offset only makes the deadline earlier.
   */
  deadline(sentAt: number, shard?: Shard): number {
    const now = performance.now();
    const best = (samples: Array<{ offset: number; at: number }>) => {
      let offset = -Infinity;
      // Each sample is a lower bound; the largest recent one is the tightest.
      for (const sample of samples) {
        if (now - sample.at < 6 * CLOCK_SYNC_INTERVAL_MS) {
          offset = Math.max(offset, sample.offset);
        }
      }
      return offset === -Infinity ? samples.at(-1)?.offset : offset;
    };
    const own = this.#offsets.get(shard?.id ?? "");
    let offset = own === undefined ? undefined : best(own);
    if (offset === undefined) {
      for (const samples of this.#offsets.values()) {
        const o = best(samples);
        if (o !== undefined) offset = Math.min(offset ?? Infinity, o);
      }
      if (shard !== undefined && own === undefined) {
        this.#offsets.set(shard.id, []);
        this.sync(shard).catch(() => this.#offsets.delete(shard.id));
      }
    }
    return Math.floor(sentAt + (offset ?? 0)) + COMMAND_TIMEOUT_MS -
      DEADLINE_MARGIN_MS;
  }

  /** Reads a master's `TIME`: one more lower bound of its clock offset. */
  async sync(shard: Shard): Promise<void> {
    const [seconds, micros] = await shard.conn.time();
    const at = performance.now();
    const redisMs = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    if (!Number.isFinite(redisMs)) {
      throw new TypeError(`Cannot read Redis TIME: got ${seconds} ${micros}`);
    }
    let samples = this.#offsets.get(shard.id);
    if (samples === undefined) this.#offsets.set(shard.id, samples = []);
    samples.push({ offset: redisMs - at, at });
    if (samples.length > 6) samples.shift();
  }
}
