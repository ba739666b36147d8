/**
 * Withdrawal of orphans for the Redis session store: counts of frames that
 * were answered unavailable but that Redis counted after all (a late reply,
 * or a batch lost with its connection and found in its ring).
 *
 * Orphans are withdrawn before the store reports itself available again: a
 * script decrements a session whose count is still the orphan's number (so
 * nothing was counted after it and no acknowledged number is reused) and
 * whose batch record is still in the ring (so the count is in the data Redis
 * holds now, not lost with a master that failed over), highest first, under
 * its own deadline, and deletes the record in the same script, so a
 * withdrawal whose fate is unknown is simply sent again. Until then the
 * store stays unavailable and sends nothing, so this instance counts nothing
 * in between. An orphan that cannot be withdrawn (another instance counted
 * the session in between, or it is older than `SESSION_TTL_S` so the key may
 * have been recreated) stays counted: a gap of one in that session, never a
 * repeat, logged as a warning. One more edge: a client that
 * attaches to the same session on another instance between the orphan and
 * its withdrawal is told a count so far that includes the orphan, so its
 * first frame's number equals that count instead of exceeding it; the
 * numbers handed out stay distinct.
 *
 * @module
 */
import { StoreUnavailableError } from "./store.ts";
import { evalScript, type Topology } from "./redis_topology.ts";
import {
  COMMAND_TIMEOUT_MS,
  MAX_IN_FLIGHT,
  ReplicasMissingError,
  WAIT_TIMEOUT_MS,
} from "./redis_commands.ts";
import { SCRIPTS } from "./redis_scripts.ts";
import {
  type IncrementBatcher,
  type Orphan,
  orphansOf,
} from "./redis_batcher.ts";

/** The log lines of a withdrawal; LogTape's `Logger` is one. */
export interface WithdrawalLog {
  /** Logs the counts withdrawn. */
  info(message: string, properties: Record<string, unknown>): void;
  /** Logs the counts that stay counted. */
  warning(message: string, properties: Record<string, unknown>): void;
}

/** What the withdrawal needs from its store. */
export interface WithdrawalOwner {
  /** The store's client and masters. */
  readonly topology: Topology;
  /** Holds the doubtful batches and the orphans. */
  readonly batcher: IncrementBatcher;
  /** Logger for the withdrawal's outcome. */
  readonly log: WithdrawalLog;
  /** Session lifetime after its last activity, in ms. */
  readonly ttlMs: number;
  /** Replicas that must hold each write (`REDIS_WAIT_REPLICAS`). */
  readonly waitReplicas: number;
  /** Masters (by address) counting without replicas for now. */
  readonly alone: ReadonlySet<string>;
  /** Whether the store has closed. */
  closed(): boolean;
  /** Redis time (epoch ms) past which a command sent at `sentAt` must not run. */
  deadline(sentAt: number): number;
  /** Rejects when `promise` takes longer than a command may. */
  timed<T>(promise: Promise<T>, what: string): Promise<T>;
  /** Maps a failed command to the store's errors (and marks Redis down). */
  failure(error: unknown): Error;
  /** Resolves after `ms` milliseconds, or once the store closes. */
  pause(ms: number): Promise<void>;
}

/** Finds out which batches lost with a connection were counted. */
export async function lookUpDoubtful(
  owner: WithdrawalOwner,
): Promise<void> {
  const byRing = Map.groupBy(owner.batcher.doubtful, (b) => b.shard.ring);
  for (const [ring, doubtful] of byRing) {
    const latest = Math.max(...doubtful.map((b) => b.deadline));
    const fields = doubtful.map((b) => String(b.seq % MAX_IN_FLIGHT));
    let records: Array<string | null>;
    while (true) {
      const reply = await owner.timed(
        evalScript(owner.topology.client, SCRIPTS.lookup, [
          1,
          ring,
          latest,
          ...fields,
        ]) as Promise<Array<string | null> | number>,
        "a lookup of batch records",
      );
      if (!Array.isArray(reply)) {
        // A batch could still run until Redis's clock passes its deadline.
        await owner.pause(reply);
        if (owner.closed()) return;
        continue;
      }
      records = reply;
      break;
    }
    const orphans = owner.batcher.orphans;
    doubtful.forEach((batch, i) => {
      const record = records[i];
      const prefix = `${batch.seq}:`;
      if (typeof record !== "string" || !record.startsWith(prefix)) return;
      const counts = record.slice(prefix.length).split(",").map(Number);
      orphansOf(batch, counts, orphans);
    });
    owner.batcher.doubtful = owner.batcher.doubtful.filter((b) =>
      b.shard.ring !== ring
    );
  }
}

/**
 * Takes back the counts of frames answered unavailable. A withdrawal that
 * fails (its fate unknown, or its replicas short) is sent again by the
 * next round of the recovery: it withdraws each count at most once.
 */
export async function withdraw(owner: WithdrawalOwner): Promise<void> {
  const orphans = owner.batcher.orphans;
  if (orphans.length === 0) return;
  owner.batcher.orphans = [];
  const now = performance.now();
  // Past its TTL a key may have expired and been recreated by others.
  const fresh = orphans.filter((o) =>
    now - o.sentAt < owner.ttlMs - COMMAND_TIMEOUT_MS
  );
  const tally = {
    withdrawn: 0,
    kept: orphans.length - fresh.length,
    gone: 0,
  };
  const byRing = [...Map.groupBy(fresh, (o) => o.ring).values()];
  try {
    while (byRing.length > 0) {
      await withdrawFrom(owner, byRing[0]!, tally);
      byRing.shift();
    }
  } finally {
    for (const group of byRing) owner.batcher.orphans.push(...group);
    logWithdrawal(owner.log, tally);
  }
}

/**
 * One ring's orphans: one script call on the master holding the ring,
 * then `WAIT`, so a withdrawal counts only once replicas hold it.
 */
async function withdrawFrom(
  owner: WithdrawalOwner,
  group: Orphan[],
  tally: { withdrawn: number; kept: number; gone: number },
): Promise<void> {
  const ring = group[0]!.ring;
  const shard = owner.topology.shardOf(owner.topology.slot(ring));
  if (shard === undefined) {
    throw new StoreUnavailableError(`No Redis master is known for ${ring}`);
  }
  group.sort((a, b) =>
    a.key < b.key ? -1 : a.key > b.key ? 1 : b.count - a.count
  );
  const clustered = owner.topology.clustered;
  const triples = group.flatMap((o) => [
    String(o.seq % MAX_IN_FLIGHT),
    `${o.seq}:`,
    o.count,
  ]);
  const keys = group.map((o) => o.key);
  const deadline = owner.deadline(performance.now());
  const args = clustered
    ? [1, ring, deadline, ...triples, ...keys]
    : [keys.length + 1, ring, ...keys, deadline, ...triples];
  let reply: number[] | number;
  try {
    reply = await owner.timed(
      evalScript(
        shard.conn,
        clustered ? SCRIPTS.cluster.withdraw : SCRIPTS.server.withdraw,
        args,
      ) as Promise<number[] | number>,
      "a withdrawal",
    );
  } catch (error) {
    throw owner.failure(error);
  }
  if (!Array.isArray(reply)) {
    // Refused, so it did nothing: try again with a fresh deadline.
    throw new StoreUnavailableError("Redis ran a withdrawal too late");
  }
  const needed = owner.waitReplicas;
  if (needed > 0 && !owner.alone.has(owner.topology.server(shard))) {
    const acks = await owner.timed(
      shard.conn.wait(needed, WAIT_TIMEOUT_MS),
      `WAIT at ${shard.id}`,
    );
    if (acks < needed) {
      throw new ReplicasMissingError(
        `Only ${acks} of ${needed} replicas of ${shard.id} acknowledged ` +
          `a withdrawal within ${WAIT_TIMEOUT_MS} ms`,
      );
    }
  }
  for (const done of reply) {
    if (done === 1) tally.withdrawn++;
    else if (done === 2) tally.gone++;
    else tally.kept++;
  }
}

function logWithdrawal(
  log: WithdrawalLog,
  { withdrawn, kept, gone }: {
    withdrawn: number;
    kept: number;
    gone: number;
  },
): void {
  if (withdrawn > 0 || gone > 0) {
    log.info(
      "Withdrew {withdrawn} counts of frames answered unavailable",
      { withdrawn, not_in_redis: gone },
    );
  }
  if (kept > 0) {
    log.warning(
      "{kept} frames answered unavailable stay counted: a gap in their sessions",
      { kept },
    );
  }
}
