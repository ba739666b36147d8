/**
 * The Redis session store: counts live in Redis, so a session resumes on any
 * instance (blue or green) and survives a crash of this one.
 *
 * Each text frame is an `INCR` + `PEXPIRE` of its session key, answered
 * only after Redis acknowledged it: two instances never hand out the same
 * number and an acknowledged count is never forgotten. The frames of one
 * event-loop turn go to Redis as one Lua script call per master
 * (`redis_batcher.ts`; the scripts are in `redis_scripts.ts`, the command
 * limits and errors in `redis_commands.ts`, the masters in
 * `redis_topology.ts`, Redis's clock in `redis_clock.ts`).
 *
 * ## "Not counted" stays true
 *
 * A frame that cannot be counted in time is answered
 * `{"error": "unavailable", "retry": true}` and must never be counted later.
 * A timeout alone cannot promise that: the command may already sit in
 * Redis's socket buffer (Redis stopped, swapping, blocked by a slow command)
 * and run when Redis resumes, or it may have run with its reply lost when the
 * connection dropped (a restart with `appendfsync always` keeps the write).
 * Three layers close the gap:
 *
 * 1. **A deadline on Redis's clock.** Each batch carries a deadline in Redis
 *    time: its send time on our monotonic clock, plus a lower bound of the
 *    offset between our clock and its master's `TIME` (measured at every
 *    (re)connect and every {@link CLOCK_SYNC_INTERVAL_MS}: Redis's reading
 *    happened before its reply arrived, so `redis_ms - local_ms_at_reply` can
 *    only underestimate the offset), plus {@link COMMAND_TIMEOUT_MS}, minus
 *    {@link DEADLINE_MARGIN_MS}. The script reads `TIME` first and refuses
 *    the whole batch, counting nothing, past the deadline. We answer
 *    `unavailable` no earlier than {@link COMMAND_TIMEOUT_MS} after the send
 *    on the same monotonic clock, when Redis's clock reads at least the
 *    deadline plus the margin; so a batch Redis runs after our answer is
 *    refused. The margin covers the millisecond rounding of both clocks and
 *    their drift between two syncs (NTP slews at most 500 ppm: 5 ms per
 *    10 s); it does not cover Redis's clock being stepped back by more than
 *    that mid-stall, which layer 2 catches. The script is safe under effects
 *    replication (`redis_scripts.ts`).
 * 2. **Late replies are read.** The batcher keeps its own timer per batch,
 *    so a late reply that says "counted" makes those frames *orphans*:
 *    counted, never acknowledged (`redis_batcher.ts`).
 * 3. **Lost replies are looked up.** Each batch also records its counts in a
 *    small ring (`sockeye:batches:<store id>`, or one per Cluster master,
 *    field `seq mod` {@link MAX_IN_FLIGHT}, value `seq:counts`) in the same
 *    atomic script. A batch whose connection dropped before its reply is
 *    looked up once Redis answers again and its clock has passed the batch's
 *    deadline (so it can no longer run): recorded means counted (orphans),
 *    missing means not.
 *
 * Orphans are withdrawn before the store reports itself available again
 * (`redis_withdrawal.ts`); until then the store stays unavailable and
 * sends nothing.
 *
 * ## Failover: "acknowledged" stays true
 *
 * Replication is asynchronous: a master that fails over can take its last
 * writes with it, and a count acknowledged from them would be handed out
 * again. With `waitReplicas` above 0 (`REDIS_WAIT_REPLICAS`; 1 by default
 * with Sentinel or Cluster) each batch is followed on its connection by
 * `WAIT waitReplicas` {@link WAIT_TIMEOUT_MS}, and its frames are answered
 * only when that many replicas hold it; a promoted replica (Sentinel and
 * Cluster promote the most up-to-date one) then has every acknowledged
 * count. A batch that ran without enough acknowledgements is answered
 * unavailable and its counts are orphans, withdrawn as above (the ring
 * check tells whether the data in force holds them). A master that turned
 * into a replica answers `READONLY` (or, in a Cluster, `MOVED`) without
 * running anything: its frames are answered unavailable, or sent again to
 * the new master in a Cluster.
 *
 * Failure policy: increments never wait on a queue while Redis is away
 * (`enableOfflineQueue: false`, no resend of unanswered commands) and fail
 * as {@link StoreUnavailableError} after {@link COMMAND_TIMEOUT_MS}; the
 * client gets `{"error": "unavailable", "retry": true}` for that frame. A
 * command that times out, a connection that closes, or a master that lost
 * its replicas or its role marks the store unavailable at once: later
 * frames and upgrades are refused without touching Redis, readiness fails,
 * `app_dependency_up{dependency="redis"}` is 0 and one log line marks the
 * outage. One probe (`TIME`) per master waits for Redis; once it answers,
 * every batch sent before it has answered too (one connection replies in
 * order), orphans are withdrawn, each master shows it takes writes (and has
 * its replicas), and one line marks the recovery.
 *
 * @module
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { RedisOptions } from "ioredis";
import type { Logger } from "@logtape/logtape";
import { type Timer, unrefTimer } from "../platform.ts";
import {
  SessionForbiddenError,
  type SessionHandle,
  type SessionStore,
  StoreUnavailableError,
} from "./store.ts";
import {
  evalScript,
  isNoScript,
  type RedisTarget,
  type Shard,
  Topology,
} from "./redis_topology.ts";
import {
  CLOCK_SYNC_INTERVAL_MS,
  COMMAND_TIMEOUT_MS,
  CommandTimeoutError,
  CONNECT_TIMEOUT_MS,
  isReplicaRefusal,
  isReplyError,
  MAX_BATCH,
  MAX_IN_FLIGHT,
  parseCount,
  ReplicasMissingError,
  timed,
  translate,
  WAIT_TIMEOUT_MS,
} from "./redis_commands.ts";
import { NOT_ASKED, NOT_HERE, SCRIPTS } from "./redis_scripts.ts";
import { type BatchReply, IncrementBatcher } from "./redis_batcher.ts";
import {
  lookUpDoubtful,
  withdraw,
  type WithdrawalOwner,
} from "./redis_withdrawal.ts";
import { RedisClock } from "./redis_clock.ts";

export {
  BATCHES_PREFIX,
  KEY_PREFIX,
  OWNER_PREFIX,
  type RedisTarget,
} from "./redis_topology.ts";
export {
  CLOCK_SYNC_INTERVAL_MS,
  COMMAND_TIMEOUT_MS,
  CONNECT_TIMEOUT_MS,
  DEADLINE_MARGIN_MS,
  MAX_BATCH,
  MAX_IN_FLIGHT,
  WAIT_TIMEOUT_MS,
} from "./redis_commands.ts";

/** Events the store reports to the service. */
export interface RedisStoreEvents {
  /** Redis went from answering to not answering, or back. */
  onAvailability(up: boolean): void;
}

/** Options of {@link RedisSessionStore}. */
export interface RedisStoreOptions {
  /**
   * Replicas that must hold each batch (`WAIT`) before its frames are
   * answered; 0 answers once the master has it.
   * @default {0}
   */
  readonly waitReplicas?: number;
  /** Extra ioredis options for every connection, e.g. `tls`. */
  readonly ioredis?: RedisOptions;
}

class RedisHandle implements SessionHandle {
  readonly id: string;
  readonly initialCount: number;
  readonly resumed: boolean;
  readonly #store: RedisSessionStore;
  readonly #key: string;
  readonly #slot: number;
  #released = false;

  constructor(
    store: RedisSessionStore,
    id: string,
    key: string,
    slot: number,
    initialCount: number,
    resumed: boolean,
  ) {
    this.#store = store;
    this.id = id;
    this.#key = key;
    this.#slot = slot;
    this.initialCount = initialCount;
    this.resumed = resumed;
  }

  increment(): Promise<number> {
    return this.#store.increment(this.#key, this.#slot);
  }

  total(): Promise<number> {
    return this.#store.total(this.#key, this.#slot);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#store.release(this.id);
  }
}

/** A bye's total, waiting for the read of its turn. */
interface TotalRead {
  readonly key: string;
  readonly waiter: PromiseWithResolvers<number>;
}

/** Sessions in Redis through ioredis: one server, Sentinel or Cluster. */
export class RedisSessionStore implements SessionStore {
  readonly kind = "redis" as const;
  readonly #topology: Topology;
  readonly #ttlMs: number;
  /**
   * An owner key outlives its count: twice the TTL (and the refresh
   * interval's slack), so while a count exists so does its owner.
   */
  readonly #ownerTtlMs: number;
  /** Set once a session was attached with an owner: their keys are refreshed too. */
  #owners = false;
  readonly #recordTtlMs: number;
  readonly #waitReplicas: number;
  readonly #log: Logger;
  readonly #events: RedisStoreEvents;
  /** Session id → connections holding it here; their TTL is refreshed. */
  readonly #held = new Map<string, number>();
  #refresher: Timer | undefined;
  #clockSync: Timer | undefined;
  readonly #batcher: IncrementBatcher;
  /** The store as the withdrawal of orphans sees it. */
  readonly #withdrawal: WithdrawalOwner;
  /** Every ring this store wrote, deleted at close. */
  readonly #rings = new Set<string>();
  readonly #stopping = new AbortController();
  /**
   * Runs a function in the context the store was created in: outages are
   * the store's events, not those of the request whose frame noticed them.
   */
  readonly #detached = AsyncLocalStorage.snapshot();
  #up = false;
  #closed = false;
  /** Bumped at every failure, so a recovery notices one that happened meanwhile. */
  #failures = 0;
  #recovering = false;
  /** `performance.now()` when the current outage began. */
  #downSince = 0;
  #downError = new StoreUnavailableError("Redis is not connected yet");
  #whenReady: PromiseWithResolvers<void> | undefined;
  #warnedReplicas = false;
  /**
   * Masters (by address) whose replicas have acknowledged writes: a
   * shortfall there may be an old master cut off by a failover.
   */
  readonly #replicatedAt = new Set<string>();
  /**
   * Masters new to this store with no replica acknowledging yet (a replica
   * promoted in a failover): they count alone until one attaches.
   */
  readonly #alone = new Set<string>();
  /** Redis's clock offsets per master. */
  readonly #clock = new RedisClock();
  /**
   * Totals asked for in this event-loop turn, by master. The drain asks for
   * every socket's at once: one read per master and {@link MAX_BATCH} keys
   * answers them, rather than a command (and a timer) per socket.
   */
  #totals = new Map<Shard, TotalRead[]>();

  /**
   * Creates the client; {@link start} connects in the background, and the
   * store answers (and readiness passes) once Redis does.
   *
   * @param target Where Redis is; a string is a `redis://` or `rediss://`
   *   URL (user, password and db in the URL).
   * @param ttlS Session lifetime after its last activity, in seconds.
   * @param log Logger for outages and recoveries.
   * @param events Availability changes, for `app_dependency_up`.
   * @param options Replicas to wait for, extra ioredis options.
   */
  constructor(
    target: RedisTarget | string,
    ttlS: number,
    log: Logger,
    events: RedisStoreEvents,
    options: RedisStoreOptions = {},
  ) {
    this.#ttlMs = Math.max(1, Math.round(ttlS * 1000));
    this.#ownerTtlMs = 2 * this.#ttlMs + 2 * 1000;
    this.#recordTtlMs = Math.max(this.#ttlMs, 10 * COMMAND_TIMEOUT_MS);
    this.#waitReplicas = options.waitReplicas ?? 0;
    this.#events = events;
    this.#topology = new Topology(
      typeof target === "string" ? { kind: "server", url: target } : target,
      crypto.randomUUID(),
      {
        lazyConnect: true,
        enableOfflineQueue: false,
        // Never send a command twice: a resent increment could count a frame
        // already answered unavailable.
        autoResendUnfulfilledCommands: false,
        connectTimeout: CONNECT_TIMEOUT_MS,
        // No commandTimeout: the store times its own commands, so that a
        // late reply is still read (see the module documentation).
        maxRetriesPerRequest: 0,
        // Keep trying for as long as the service runs, at most every 2 s.
        retryStrategy: (times) => Math.min(times * 100, 2000),
        // The commands of one event-loop turn go out in one write: a
        // reconnect storm attaches thousands of sessions at once, and a
        // write per command cost more than the rest of the upgrade. Order
        // on a connection is kept, so a WAIT still follows its writes.
        enableAutoPipelining: true,
        ...options.ioredis,
      },
    );
    this.#log = log.with(this.#topology.describe);
    const client = this.#topology.client;
    client.defineCommand("sockeyeAttach", {
      numberOfKeys: 2,
      lua: SCRIPTS.attach.lua,
    });
    const clustered = this.#topology.clustered;
    const increment = clustered
      ? SCRIPTS.cluster.incrementMany
      : SCRIPTS.server.incrementMany;
    this.#batcher = new IncrementBatcher({
      replicasNeeded: () => this.#waitReplicas,
      countsAlone: (shard) => this.#alone.has(this.#topology.server(shard)),
      replicated: (shard) => this.#replicated(shard),
      isUp: () => this.#up,
      downError: () => this.#downError,
      shardOf: (slot) => this.#topology.shardOf(slot),
      run: (batch) => {
        const { shard, keys, seq } = batch;
        this.#rings.add(shard.ring);
        const params = [
          this.#ttlMs,
          batch.deadline,
          seq % MAX_IN_FLIGHT,
          `${seq}:`,
          this.#recordTtlMs,
        ];
        const args = clustered
          ? [1, shard.ring, ...params, ...keys]
          : [keys.length + 1, shard.ring, ...keys, ...params];
        return this.#runBatch(shard, increment, args);
      },
      deadline: (sentAt, shard) => this.#clock.deadline(sentAt, shard),
      stalled: (reason) => this.#markDown(reason),
      orphaned: () => {
        if (!this.#up) return; // the recovery withdraws them
        this.#detached(() => withdraw(this.#withdrawal)).catch(() => {});
      },
      moved: () => this.#topology.refresh(),
    }, clustered);
    this.#withdrawal = {
      topology: this.#topology,
      batcher: this.#batcher,
      log: this.#log,
      ttlMs: this.#ttlMs,
      waitReplicas: this.#waitReplicas,
      alone: this.#alone,
      closed: () => this.#closed,
      deadline: (sentAt) => this.#clock.deadline(sentAt),
      timed: (promise, what) => this.#timed(promise, what),
      failure: (error) => this.#failure(error),
      pause: (ms) => this.#pause(ms),
    };
    client.on("ready", () => {
      // Another server may answer now (Sentinel): its clock is measured anew.
      if (!clustered) this.#clock.clear();
      this.#whenReady?.resolve();
      this.#whenReady = undefined;
    });
    client.on("close", () => this.#markDown("connection closed"));
    client.on("error", (error: Error) => {
      if (this.#up) return; // "close" follows and logs the outage
      this.#log.debug("Redis connection error: {error}", { error });
    });
    client.on("node error", (error: Error, node: string) => {
      this.#log.debug("Redis Cluster node {node} error: {error}", {
        node,
        error,
      });
    });
  }

  /**
   * Connects in the background and starts the refresh, clock and recovery
   * loops; a second call does nothing.
   */
  start(): void {
    if (this.#refresher !== undefined || this.#closed) return;
    this.#topology.client.connect().catch(() => {
      // The recovery loop waits for "ready"; ioredis keeps retrying.
    });
    // Held sessions must not expire in Redis while their socket is idle.
    this.#refresher = setInterval(
      () => this.#refreshHeld(),
      Math.max(1000, Math.min(this.#ttlMs / 2, 60_000)),
    );
    unrefTimer(this.#refresher);
    // Keeps the clock offsets fresh, and finds a stall while no frame flows.
    this.#clockSync = setInterval(() => {
      if (!this.#up) return;
      this.#topology.masters(false).then((shards) =>
        Promise.all(
          shards.map(async (shard) => {
            await this.#timed(this.#clock.sync(shard), `TIME at ${shard.id}`);
            if (this.#alone.has(this.#topology.server(shard))) {
              await this.#probeWrites(shard);
            }
          }),
        )
      ).catch((error) => {
        if (error instanceof StoreUnavailableError) {
          this.#markDown(error.message);
        }
      });
    }, CLOCK_SYNC_INTERVAL_MS);
    unrefTimer(this.#clockSync);
    this.#log.info("Connecting to Redis");
    this.#recover();
  }

  /** Whether Redis answers: connected, not stalled, and reconciled. */
  get available(): boolean {
    return this.#up;
  }

  async attach(id: string, owner?: string): Promise<SessionHandle> {
    if (!this.#up) throw this.#downError;
    const key = this.#topology.key(id);
    if (owner !== undefined) this.#owners = true;
    let reply: [number, string];
    try {
      reply = await this.#timed(
        // deno-lint-ignore no-explicit-any -- a command defineCommand adds
        (this.#topology.client as any).sockeyeAttach(
          key,
          this.#topology.ownerKey(id),
          this.#ttlMs,
          owner ?? "",
          this.#ownerTtlMs,
        ),
        "ATTACH",
      );
    } catch (error) {
      throw this.#failure(error);
    }
    if (reply[0] === -1) throw new SessionForbiddenError();
    const count = parseCount(reply[1], key);
    this.#held.set(id, (this.#held.get(id) ?? 0) + 1);
    return new RedisHandle(
      this,
      id,
      key,
      this.#topology.slot(key),
      count,
      reply[0] === 0,
    );
  }

  /** @internal One frame: the new durable count. */
  increment(key: string, slot: number): Promise<number> {
    return this.#up
      ? this.#batcher.add(key, slot)
      : Promise.reject(this.#downError);
  }

  /**
   * @internal The durable count now, 0 for an expired session. Read with
   * the other totals asked for in the same turn (see {@link #totals}).
   */
  total(key: string, slot: number): Promise<number> {
    if (!this.#up) return Promise.reject(this.#downError);
    const shard = this.#topology.shardOf(slot);
    if (shard === undefined) return this.#totalOf(key);
    if (this.#totals.size === 0) queueMicrotask(() => this.#readTotals());
    let reads = this.#totals.get(shard);
    if (reads === undefined) this.#totals.set(shard, reads = []);
    const waiter = Promise.withResolvers<number>();
    reads.push({ key, waiter });
    return waiter.promise;
  }

  /** One total on its own, through the client (which follows `MOVED`). */
  async #totalOf(key: string): Promise<number> {
    let reply: string | null;
    try {
      reply = await this.#timed(this.#topology.client.get(key), "GET");
    } catch (error) {
      throw this.#failure(error);
    }
    return reply === null ? 0 : parseCount(reply, key);
  }

  #readTotals(): void {
    const totals = this.#totals;
    this.#totals = new Map();
    for (const [shard, reads] of totals) {
      for (let i = 0; i < reads.length; i += MAX_BATCH) {
        this.#readBatch(shard, reads.slice(i, i + MAX_BATCH));
      }
    }
  }

  /** Reads a batch of totals from one master; settles every waiter. */
  async #readBatch(shard: Shard, reads: TotalRead[]): Promise<void> {
    const keys = reads.map((read) => read.key);
    let values: unknown[];
    try {
      values = await this.#timed(
        // A Cluster master serves many slots, and MGET wants one.
        this.#topology.clustered
          ? evalScript(shard.conn, SCRIPTS.cluster.getMany, [0, ...keys])
            .then((reply) => reply as unknown[])
          : shard.conn.mget(keys),
        `MGET of ${keys.length} keys`,
      );
    } catch (error) {
      const failure = this.#failure(error);
      for (const { waiter } of reads) waiter.reject(failure);
      return;
    }
    reads.forEach(({ key, waiter }, i) => {
      const value = values[i];
      try {
        if (value === NOT_HERE) waiter.resolve(this.#totalOf(key));
        else waiter.resolve(value === null ? 0 : parseCount(value, key));
      } catch (error) {
        waiter.reject(error);
      }
    });
  }

  /** @internal A connection let go of a session: its TTL runs from now. */
  release(id: string): void {
    const holders = (this.#held.get(id) ?? 1) - 1;
    if (holders > 0) this.#held.set(id, holders);
    else this.#held.delete(id);
    if (!this.#up || this.#closed) return;
    const client = this.#topology.client;
    const key = this.#topology.key(id);
    // The owner key shares the count's hash tag: one slot, one MULTI.
    const refreshed = this.#owners
      ? client.multi()
        .pexpire(key, this.#ttlMs)
        .pexpire(this.#topology.ownerKey(id), this.#ownerTtlMs)
        .exec()
      : client.pexpire(key, this.#ttlMs);
    refreshed.catch((error) => {
      this.#log.debug("Cannot refresh session TTL: {error}", { error });
    });
  }

  async forget(id: string): Promise<boolean> {
    if (!this.#up) throw this.#downError;
    try {
      const deleted = await this.#timed(
        this.#topology.client.del(
          this.#topology.key(id),
          this.#topology.ownerKey(id),
        ),
        "DEL",
      );
      return deleted > 0;
    } catch (error) {
      throw this.#failure(error);
    }
  }

  async check(): Promise<void> {
    if (!this.#up) throw this.#downError;
    try {
      await this.#timed(this.#topology.client.ping(), "PING");
    } catch (error) {
      throw this.#failure(error);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#refresher);
    clearInterval(this.#clockSync);
    this.#stopping.abort();
    this.#whenReady?.resolve();
    this.#batcher.close(new StoreUnavailableError("Session store closed"));
    const client = this.#topology.client;
    try {
      if (this.#up) {
        // The rings are only for this store's own recovery.
        for (const ring of this.#rings) client.del(ring).catch(() => {});
        await timed(client.quit(), "QUIT");
      } else client.disconnect();
    } catch {
      client.disconnect();
    }
  }

  /** {@link timed}, ended when the store closes. */
  #timed<T>(promise: Promise<T>, what: string): Promise<T> {
    return timed(promise, what, this.#stopping.signal);
  }

  /**
   * Sends a batch on its master's connection, then `WAIT` on the same
   * connection when replicas must hold it. Without the script cached
   * (`NOSCRIPT`: nothing ran) it sends the source, then `WAIT` again, so the
   * `WAIT` always follows the writes it vouches for.
   */
  async #runBatch(
    shard: Shard,
    script: { lua: string; sha: string },
    args: Array<string | number>,
  ): Promise<BatchReply> {
    const conn = shard.conn;
    // A master counting alone is asked about its replicas by the clock sync
    // instead: a WAIT without them would hold up every batch behind it.
    const replicas =
      this.#waitReplicas > 0 && this.#alone.has(this.#topology.server(shard))
        ? 0
        : this.#waitReplicas;
    const [numKeys, ...rest] = args;
    const reply = conn.evalsha(script.sha, numKeys!, ...rest);
    const acks = replicas > 0
      ? conn.wait(replicas, WAIT_TIMEOUT_MS)
      : Promise.resolve(NOT_ASKED);
    let counts: unknown;
    try {
      counts = await reply;
    } catch (error) {
      acks.catch(() => {});
      if (!isNoScript(error)) throw error;
      counts = await conn.eval(script.lua, numKeys!, ...rest);
      return {
        counts: counts as number[] | number,
        acks: replicas > 0
          ? await conn.wait(replicas, WAIT_TIMEOUT_MS).catch(() => 0)
          : NOT_ASKED,
      };
    }
    // The script ran: a WAIT that failed (its connection lost, or
    // UNBLOCKED when the master turned replica) leaves it unconfirmed.
    return {
      counts: counts as number[] | number,
      acks: await acks.catch(() => 0),
    };
  }

  /** A failed command: a timeout means Redis stalls, so mark it down. */
  #failure(error: unknown): Error {
    if (error instanceof CommandTimeoutError) this.#markDown(error.message);
    return translate(error);
  }

  #markDown(reason: string): void {
    this.#detached(() => this.#markDownHere(reason));
  }

  #markDownHere(reason: string): void {
    if (this.#closed) return;
    this.#failures++;
    if (this.#up) {
      this.#up = false;
      this.#downSince = performance.now();
      this.#downError = new StoreUnavailableError(
        `Redis unavailable: ${reason}`,
      );
      this.#events.onAvailability(false);
      this.#log.error(
        "Redis unavailable: frames are answered unavailable until it returns",
        { reason },
      );
    }
    this.#batcher.failPending(this.#downError);
    this.#recover();
  }

  #markUp(): void {
    this.#up = true;
    this.#events.onAvailability(true);
    const outage = this.#downSince === 0 ? {} : {
      outage_seconds: Math.round(performance.now() - this.#downSince) / 1000,
      frames_refused_late: this.#batcher.refusedLate,
    };
    this.#batcher.refusedLate = 0;
    this.#log.info("Redis available: counting resumes", outage);
  }

  /** Runs the recovery loop unless it runs already. */
  #recover(): void {
    if (this.#recovering || this.#closed) return;
    this.#recovering = true;
    this.#recoverLoop().catch((error) => {
      this.#log.error("Redis recovery stopped: {error}", { error });
    }).finally(() => this.#recovering = false);
  }

  /**
   * Waits for Redis, settles every batch whose fate is open, checks every
   * master takes writes (with its replicas), withdraws the orphans, and only
   * then reports the store available.
   */
  async #recoverLoop(): Promise<void> {
    let lastRefusal: string | undefined;
    const clustered = this.#topology.clustered;
    while (!this.#closed && !this.#up) {
      const failures = this.#failures;
      try {
        if (this.#topology.client.status !== "ready") {
          await this.#nextReady();
          continue;
        }
        const masters = await this.#topology.masters();
        for (const shard of masters) {
          // One connection: this probe answers once Redis does, and then
          // every batch sent before it has answered too. A Cluster's master
          // that stopped answering is a failover in progress: ask again.
          const probe = this.#clock.sync(shard);
          await (clustered ? this.#timed(probe, `TIME at ${shard.id}`) : probe);
        }
        await this.#batcher.settled();
        await lookUpDoubtful(this.#withdrawal);
        // Before the withdrawals, which need the same replicas as batches.
        for (const shard of masters) await this.#probeWrites(shard);
        await withdraw(this.#withdrawal);
        if (failures !== this.#failures || this.#closed) continue;
        this.#markUp();
      } catch (error) {
        // Redis's own refusals (e.g. NOPERM for TIME or EVAL, a replica) and
        // missing replicas do not pass by themselves: say so once; connection
        // trouble is the outage itself.
        const message = (error as Error).message;
        if (isReplicaRefusal(error)) this.#topology.reconnect();
        if (
          (isReplyError(error) || error instanceof ReplicasMissingError) &&
          message !== lastRefusal
        ) {
          lastRefusal = message;
          this.#log.warning("Cannot recover the Redis session store: {error}", {
            error,
          });
        } else this.#log.debug("Redis is not back yet: {error}", { error });
        await this.#pause(100);
      }
    }
  }

  /**
   * Shows that a master takes writes (a no-op `PEXPIRE` of its ring: a
   * replica answers `READONLY`, a Cluster node that lost the slot `MOVED`)
   * and, when batches must wait for replicas, that enough acknowledge.
   */
  async #probeWrites(shard: Shard): Promise<void> {
    await this.#timed(
      shard.conn.pexpire(shard.ring, this.#recordTtlMs),
      `a write at ${shard.id}`,
    );
    const needed = this.#waitReplicas;
    if (needed === 0) return;
    const acks = await this.#timed(
      shard.conn.wait(needed, WAIT_TIMEOUT_MS),
      `WAIT at ${shard.id}`,
    );
    if (acks >= needed) {
      this.#replicated(shard);
      if (acks > needed && !this.#warnedReplicas) {
        // A failover may promote a replica that had not acknowledged yet.
        this.#warnedReplicas = true;
        this.#log.warning(
          "{server} has {replicas} replicas but REDIS_WAIT_REPLICAS is " +
            "{needed}: a failover may lose the last acknowledged counts; " +
            "set it to {replicas}",
          { server: this.#topology.server(shard), replicas: acks, needed },
        );
      }
      return;
    }
    const server = this.#topology.server(shard);
    // Its replicas acknowledged before: it may be the old master, cut off
    // by a failover, whose writes would be lost. Or replicas are attached
    // but slow (ROLE lists them; a user without @admin cannot ask).
    if (
      this.#replicatedAt.has(server) ||
      await this.#replicasAttached(shard) > 0
    ) {
      throw new ReplicasMissingError(
        `Only ${acks} of ${needed} replicas of ${server} acknowledged ` +
          `within ${WAIT_TIMEOUT_MS} ms (REDIS_WAIT_REPLICAS=${needed})`,
      );
    }
    if (!this.#alone.has(server)) {
      this.#alone.add(server);
      this.#log.warning(
        "{server} has no replica acknowledging writes yet (a replica just " +
          "promoted, or a Redis without replicas): counting there without " +
          "one until {needed} attach; a failure of {server} before then " +
          "can lose the counts acknowledged meanwhile",
        { server, acks, needed },
      );
    }
  }

  /**
   * Replicas attached to a master, from `ROLE`.
   *
   * @returns Their number; 0 when `ROLE` is refused (e.g. `NOPERM`).
   */
  async #replicasAttached(shard: Shard): Promise<number> {
    try {
      const role = await this.#timed(
        shard.conn.role() as Promise<unknown[]>,
        `ROLE at ${shard.id}`,
      );
      return role[0] === "master" && Array.isArray(role[2])
        ? role[2].length
        : 0;
    } catch (error) {
      if (error instanceof CommandTimeoutError) throw error;
      return 0;
    }
  }

  /** A master's replicas acknowledge its writes (again). */
  #replicated(shard: Shard): void {
    const server = this.#topology.server(shard);
    this.#replicatedAt.add(server);
    if (this.#alone.delete(server)) {
      this.#log.info("{server} has its replicas again", { server });
    }
  }

  #nextReady(): Promise<void> {
    this.#whenReady ??= Promise.withResolvers<void>();
    return this.#whenReady.promise;
  }

  #pause(ms: number): Promise<void> {
    const signal = this.#stopping.signal;
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      function done() {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      }
    });
  }

  #refreshHeld(): void {
    if (!this.#up || this.#held.size === 0) return;
    const topology = this.#topology;
    const pipelines = new Map<Shard, ReturnType<Shard["conn"]["pipeline"]>>();
    for (const id of this.#held.keys()) {
      const key = topology.key(id);
      const shard = topology.shardOf(topology.slot(key));
      if (shard === undefined) continue;
      let pipeline = pipelines.get(shard);
      if (pipeline === undefined) {
        pipelines.set(shard, pipeline = shard.conn.pipeline());
      }
      pipeline.pexpire(key, this.#ttlMs);
      if (this.#owners) {
        pipeline.pexpire(topology.ownerKey(id), this.#ownerTtlMs);
      }
    }
    for (const pipeline of pipelines.values()) {
      pipeline.exec().catch((error) => {
        this.#log.debug("Cannot refresh held sessions: {error}", { error });
      });
    }
  }
}
