/**
 * Per-turn batching of the Redis session store's increments. Frames that
 * arrive in the same event-loop turn, from any socket, go to Redis as one Lua
 * script call per master (one master for a single server or Sentinel, one per
 * Cluster master, see `redis_topology.ts`): one command for many frames keeps
 * the client's per-command cost off each frame. A key that holds no integer
 * fails only its own frame.
 *
 * Late replies are read: the batcher keeps its own timer per batch instead of
 * ioredis's `commandTimeout`, so a reply that arrives after the frames were
 * answered `unavailable` is still seen. If it says "counted" (the batch ran
 * before its deadline, its reply held up by a stall), those frames are
 * *orphans*: counted, never acknowledged, for the store to withdraw. A batch
 * whose connection dropped before its reply is kept as *doubtful* for the
 * store to look up.
 *
 * @module
 */
import type { Timer } from "../platform.ts";
import { StoreUnavailableError } from "./store.ts";
import type { Shard } from "./redis_topology.ts";
import {
  COMMAND_TIMEOUT_MS,
  CommandTimeoutError,
  isReplyError,
  MAX_BATCH,
  MAX_IN_FLIGHT,
  replyKind,
  translate,
  WAIT_TIMEOUT_MS,
} from "./redis_commands.ts";
import { NOT_ASKED, NOT_HERE } from "./redis_scripts.ts";

/** One script call's frames, from send to reply (or loss). */
export interface Batch {
  /** Its number, from 1, in this store. */
  readonly seq: number;
  /** The master it went to. */
  readonly shard: Shard;
  /** The session keys, one per frame. */
  readonly keys: string[];
  /** Each key's Cluster slot (0 outside a Cluster), to send it again. */
  readonly slots: number[];
  /** Per frame, the promise its connection awaits. */
  readonly waiters: Array<PromiseWithResolvers<number>>;
  /** `performance.now()` just before sending. */
  readonly sentAt: number;
  /** Redis time (epoch ms) after which the script refuses to count. */
  readonly deadline: number;
  /** The timer that answers it unavailable; cleared once it settles. */
  timer: Timer | undefined;
  /** Whether the waiters have their answer (a count or an error). */
  answered: boolean;
}

/** What a batch's script call and its `WAIT` answered. */
export interface BatchReply {
  /** Per key the new count (or -1, -3), or `REFUSED` (`redis_scripts.ts`). */
  readonly counts: number[] | number;
  /** Replicas that acknowledged it (`WAIT`); {@link NOT_ASKED} without one. */
  readonly acks: number;
}

/** A frame answered unavailable that Redis counted after all. */
export interface Orphan {
  /** The session key. */
  readonly key: string;
  /** The number Redis gave the frame. */
  readonly count: number;
  /** `performance.now()` when its batch was sent. */
  readonly sentAt: number;
  /** The ring its batch recorded it in, and the batch's number. */
  readonly ring: string;
  /** The batch's number. */
  readonly seq: number;
}

/** What the batcher needs from its store. */
export interface BatchOwner {
  /** Replicas a batch on this master must reach before it is answered. */
  replicasNeeded(shard: Shard): number;
  /**
   * A batch's `WAIT` fell short: whether the master may count alone (a
   * master new to us, without replicas yet) rather than be unavailable.
   */
  countsAlone(shard: Shard): boolean;
  /** A batch's replicas acknowledged: the master has its replicas. */
  replicated(shard: Shard): void;
  /** Whether frames may be sent to Redis now. */
  isUp(): boolean;
  /** The error for frames refused while Redis is unavailable. */
  downError(): StoreUnavailableError;
  /** The master for a slot now (the only one outside a Cluster). */
  shardOf(slot: number): Shard | undefined;
  /** Sends one batch's script call (and its `WAIT`). */
  run(batch: Batch): Promise<BatchReply>;
  /** Redis time (epoch ms) past which a batch sent at `sentAt` must not count. */
  deadline(sentAt: number, shard: Shard): number;
  /** Redis stopped answering in time, or the connection failed. */
  stalled(reason: string): void;
  /** Orphans were found (a late reply counted answered frames). */
  orphaned(): void;
  /** A master refused keys it does not serve: re-read the slot map. */
  moved(): Promise<void>;
}

/** Frames for one master, gathered in one turn. */
interface Group {
  readonly keys: string[];
  readonly slots: number[];
  readonly waiters: Array<PromiseWithResolvers<number>>;
}

/**
 * Adds a batch's counted frames to `into` as orphans.
 *
 * @param batch The batch the counts answer.
 * @param counts Per key the count Redis gave (0 or less: not counted).
 * @param into Where the orphans go.
 * @returns Whether any was found.
 */
export function orphansOf(
  batch: Batch,
  counts: number[],
  into: Orphan[],
): boolean {
  let found = false;
  for (let i = 0; i < counts.length; i++) {
    const count = counts[i]!;
    if (count > 0) {
      into.push({
        key: batch.keys[i]!,
        count,
        sentAt: batch.sentAt,
        ring: batch.shard.ring,
        seq: batch.seq,
      });
      found = true;
    }
  }
  return found;
}

/**
 * Collects the increments of one event-loop turn and sends them as one
 * script call per master, flushed from a microtask (so no timer adds
 * latency). Keeps each batch until Redis answers or the connection fails,
 * so a late answer is still read, and remembers the batches whose fate the
 * connection took.
 */
export class IncrementBatcher {
  readonly #owner: BatchOwner;
  readonly #clustered: boolean;
  #keys: string[] = [];
  #slots: number[] = [];
  #waiters: Array<PromiseWithResolvers<number>> = [];
  #scheduled = false;
  #seq = 0;
  readonly #inFlight = new Map<number, Batch>();
  #whenSettled: Array<() => void> = [];
  /** Frames already sent once to a master that did not serve their key. */
  readonly #moved = new WeakSet<PromiseWithResolvers<number>>();
  /** Batches sent on a connection that closed before their reply. */
  doubtful: Batch[] = [];
  /** Frames answered unavailable but counted. */
  orphans: Orphan[] = [];
  /** Frames Redis refused because they reached it past their deadline. */
  refusedLate = 0;

  /**
   * Creates an empty batcher.
   *
   * @param owner The store the batches are sent for.
   * @param clustered Whether Redis is a Cluster (one batch per master).
   */
  constructor(owner: BatchOwner, clustered: boolean) {
    this.#owner = owner;
    this.#clustered = clustered;
  }

  /**
   * Queues one frame's increment for this turn's batch.
   *
   * @param key The session key.
   * @param slot Its Cluster slot (0 outside a Cluster).
   * @returns The new count; rejects with {@link StoreUnavailableError} when
   *   Redis does not count it in time, or a `TypeError` for a key holding no
   *   integer.
   */
  add(key: string, slot: number): Promise<number> {
    const waiter = Promise.withResolvers<number>();
    this.#keys.push(key);
    this.#slots.push(slot);
    this.#waiters.push(waiter);
    if (this.#keys.length >= MAX_BATCH) this.#flush();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.#flush());
    }
    return waiter.promise;
  }

  /** Resolves once no batch awaits Redis. */
  settled(): Promise<void> {
    if (this.#inFlight.size === 0) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#whenSettled.push(resolve);
    return promise;
  }

  /** Answers every frame not yet sent with `error`. */
  failPending(error: Error): void {
    const waiters = this.#waiters;
    if (waiters.length === 0) return;
    this.#keys = [];
    this.#slots = [];
    this.#waiters = [];
    for (const waiter of waiters) waiter.reject(error);
  }

  /** Stops every batch timer (the store is closing). */
  close(error: Error): void {
    for (const batch of this.#inFlight.values()) {
      clearTimeout(batch.timer);
      batch.timer = undefined;
    }
    this.failPending(error);
  }

  #flush(): void {
    this.#scheduled = false;
    if (this.#keys.length === 0) return;
    if (!this.#owner.isUp()) return this.failPending(this.#owner.downError());
    if (this.#clustered) return this.#flushPerMaster();
    const shard = this.#owner.shardOf(0)!;
    while (this.#keys.length > 0) {
      // Sent when a batch returns; the oldest batch's timer bounds the wait.
      if (this.#inFlight.size >= MAX_IN_FLIGHT) return;
      let keys = this.#keys;
      let slots = this.#slots;
      let waiters = this.#waiters;
      if (keys.length > MAX_BATCH) {
        keys = keys.splice(0, MAX_BATCH);
        slots = slots.splice(0, MAX_BATCH);
        waiters = waiters.splice(0, MAX_BATCH);
      } else {
        this.#keys = [];
        this.#slots = [];
        this.#waiters = [];
      }
      this.#send(shard, keys, slots, waiters);
    }
  }

  /** A Cluster: one script call per master for this turn's frames. */
  #flushPerMaster(): void {
    if (this.#inFlight.size >= MAX_IN_FLIGHT) return;
    const keys = this.#keys;
    const slots = this.#slots;
    const waiters = this.#waiters;
    this.#keys = [];
    this.#slots = [];
    this.#waiters = [];
    const groups = new Map<Shard, Group>();
    let unserved: number | undefined;
    for (let i = 0; i < keys.length; i++) {
      const shard = this.#owner.shardOf(slots[i]!);
      if (shard === undefined) {
        unserved = slots[i];
        waiters[i]!.reject(
          new StoreUnavailableError(
            `No Redis Cluster master is known for slot ${slots[i]}`,
          ),
        );
        continue;
      }
      let group = groups.get(shard);
      if (group === undefined) {
        group = { keys: [], slots: [], waiters: [] };
        groups.set(shard, group);
      }
      group.keys.push(keys[i]!);
      group.slots.push(slots[i]!);
      group.waiters.push(waiters[i]!);
    }
    for (const [shard, group] of groups) {
      for (let from = 0; from < group.keys.length; from += MAX_BATCH) {
        const to = from + MAX_BATCH;
        if (this.#inFlight.size >= MAX_IN_FLIGHT) {
          // Sent when a batch returns, with that turn's frames.
          this.#keys.push(...group.keys.slice(from));
          this.#slots.push(...group.slots.slice(from));
          this.#waiters.push(...group.waiters.slice(from));
          break;
        }
        this.#send(
          shard,
          group.keys.slice(from, to),
          group.slots.slice(from, to),
          group.waiters.slice(from, to),
        );
      }
    }
    if (unserved !== undefined) {
      this.#owner.stalled(
        `no Redis Cluster master is known for slot ${unserved}`,
      );
    }
  }

  #send(
    shard: Shard,
    keys: string[],
    slots: number[],
    waiters: Array<PromiseWithResolvers<number>>,
  ): void {
    const sentAt = performance.now();
    const batch: Batch = {
      seq: ++this.#seq,
      shard,
      keys,
      slots,
      waiters,
      sentAt,
      deadline: this.#owner.deadline(sentAt, shard),
      timer: undefined,
      answered: false,
    };
    this.#inFlight.set(batch.seq, batch);
    batch.timer = setTimeout(() => this.#expire(batch), COMMAND_TIMEOUT_MS);
    this.#owner.run(batch).then(
      (reply) => this.#replied(batch, reply),
      (error) => this.#failed(batch, error),
    );
  }

  #expire(batch: Batch): void {
    // Never answer before the full timeout on the clock the deadline used.
    const left = COMMAND_TIMEOUT_MS - (performance.now() - batch.sentAt);
    if (left > 0) {
      batch.timer = setTimeout(() => this.#expire(batch), left);
      return;
    }
    batch.timer = undefined;
    this.#answer(batch, new CommandTimeoutError("a batch of increments"));
    this.#owner.stalled(`no reply within ${COMMAND_TIMEOUT_MS} ms`);
  }

  #answer(batch: Batch, error: Error): void {
    if (batch.answered) return;
    batch.answered = true;
    for (const waiter of batch.waiters) waiter.reject(error);
  }

  #settle(batch: Batch): void {
    clearTimeout(batch.timer);
    batch.timer = undefined;
    this.#inFlight.delete(batch.seq);
    if (this.#inFlight.size === 0 && this.#whenSettled.length > 0) {
      const waiting = this.#whenSettled;
      this.#whenSettled = [];
      for (const resolve of waiting) resolve();
    }
  }

  #replied(batch: Batch, { counts, acks }: BatchReply): void {
    this.#settle(batch);
    const needed = this.#owner.replicasNeeded(batch.shard);
    if (!Array.isArray(counts)) {
      // Redis ran it past its deadline: nothing counted, and Redis is slow.
      this.refusedLate += batch.keys.length;
      this.#answer(
        batch,
        new StoreUnavailableError(
          `Redis ran a batch later than ${COMMAND_TIMEOUT_MS} ms after it was sent`,
        ),
      );
      this.#owner.stalled("a batch reached Redis past its deadline");
    } else if (batch.answered) {
      // Answered unavailable, but it ran before its deadline: orphans.
      if (orphansOf(batch, counts, this.orphans)) this.#owner.orphaned();
    } else if (
      acks !== NOT_ASKED && acks < needed &&
      !this.#owner.countsAlone(batch.shard)
    ) {
      // Counted on the master only: a failover could lose it, so it is
      // neither acknowledged nor left counted.
      const reason =
        `only ${acks} of ${needed} replicas of ${batch.shard.id} acknowledged a batch within ${WAIT_TIMEOUT_MS} ms`;
      this.#answer(batch, new StoreUnavailableError(`Redis ${reason}`));
      orphansOf(batch, counts, this.orphans);
      this.#owner.stalled(reason);
    } else {
      if (needed > 0 && acks >= needed) this.#owner.replicated(batch.shard);
      batch.answered = true;
      const { keys, waiters } = batch;
      let moved: number[] | undefined;
      for (let i = 0; i < waiters.length; i++) {
        const n = counts[i];
        if (n === NOT_HERE) (moved ??= []).push(i);
        else if (n === -1 || typeof n !== "number") {
          waiters[i]!.reject(
            new TypeError(
              `Cannot increment ${keys[i]}: the key holds no integer`,
            ),
          );
        } else waiters[i]!.resolve(n);
      }
      if (moved !== undefined) this.#sendAgain(batch, moved);
    }
    if (this.#keys.length > 0 && !this.#scheduled) this.#flush();
  }

  #failed(batch: Batch, error: unknown): void {
    this.#settle(batch);
    if (isReplyError(error)) {
      // Redis refused the call itself: nothing ran.
      if (batch.answered) return;
      const kind = replyKind(error as Error);
      if (kind === "moved") {
        batch.answered = true;
        this.#sendAgain(batch, batch.keys.map((_, i) => i));
      } else if (kind === "unavailable") {
        const message = (error as Error).message;
        this.#answer(
          batch,
          new StoreUnavailableError(`Redis unavailable: ${message}`, {
            cause: error,
          }),
        );
        this.#owner.stalled(message);
      } else {
        batch.answered = true;
        for (const waiter of batch.waiters) waiter.reject(error);
      }
      return;
    }
    // The connection failed with the batch sent: it may or may not have run.
    this.doubtful.push(batch);
    this.#answer(batch, translate(error));
    this.#owner.stalled("the connection failed with increments in flight");
  }

  /**
   * Frames a master ran nothing for because it does not serve their keys:
   * sent once more after the slot map is read again, then answered
   * unavailable (a slot in migration settles within moments).
   */
  #sendAgain(batch: Batch, indexes: number[]): void {
    const again: number[] = [];
    for (const i of indexes) {
      const waiter = batch.waiters[i]!;
      if (this.#moved.has(waiter)) {
        waiter.reject(
          new StoreUnavailableError(
            `Redis Cluster is moving ${batch.keys[i]} between masters`,
          ),
        );
      } else {
        this.#moved.add(waiter);
        again.push(i);
      }
    }
    if (again.length === 0) return;
    const retry = () => {
      for (const i of again) {
        this.#keys.push(batch.keys[i]!);
        this.#slots.push(batch.slots[i]!);
        this.#waiters.push(batch.waiters[i]!);
      }
      if (!this.#scheduled) {
        this.#scheduled = true;
        queueMicrotask(() => this.#flush());
      }
    };
    this.#owner.moved().then(retry, retry);
  }
}
