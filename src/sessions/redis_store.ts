/**
 * The Redis session store: counts live in Redis, so a session resumes on any
 * instance (blue or green) and survives a crash of this one.
 *
 * Each text frame is an `INCR` + `PEXPIRE` of its session key, answered
 * only after Redis acknowledged it: two instances never hand out the same
 * number and an acknowledged count is never forgotten. Frames that arrive
 * in the same event-loop turn, from any socket, go to Redis as one Lua
 * script call per master ({@link IncrementBatcher}; one master for a single
 * server or Sentinel, one per Cluster master, see `redis_topology.ts`): one
 * command for many frames keeps the client's per-command cost off each
 * frame. A key that holds no integer fails only its own frame.
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
 *    replication (always on since Redis 7; Debian ships 7.0): replicas and
 *    the append-only file receive the resulting `INCR`/`PEXPIREAT`/`HSET`
 *    in one `MULTI`/`EXEC`, never the script or its `TIME`, so a replayed
 *    file or a promoted replica holds exactly what the primary did.
 * 2. **Late replies are read.** The store keeps its own timer per batch
 *    instead of ioredis's `commandTimeout`, so a reply that arrives after the
 *    frames were answered `unavailable` is still seen. If it says "counted"
 *    (the batch ran before its deadline, its reply held up by the stall),
 *    those frames are *orphans*: counted, never acknowledged.
 * 3. **Lost replies are looked up.** Each batch also records its counts in a
 *    small ring (`sockeye:batches:<store id>`, or one per Cluster master,
 *    field `seq mod` {@link MAX_IN_FLIGHT}, value `seq:counts`) in the same
 *    atomic script. A batch whose connection dropped before its reply is
 *    looked up once Redis answers again and its clock has passed the batch's
 *    deadline (so it can no longer run): recorded means counted (orphans),
 *    missing means not.
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
  luaScript,
  type RedisTarget,
  type Shard,
  Topology,
} from "./redis_topology.ts";

export {
  BATCHES_PREFIX,
  KEY_PREFIX,
  OWNER_PREFIX,
  type RedisTarget,
} from "./redis_topology.ts";

/** Milliseconds a command may take before it fails as unavailable. */
export const COMMAND_TIMEOUT_MS = 1000;

/** Milliseconds a connection attempt may take. */
export const CONNECT_TIMEOUT_MS = 2000;

/**
 * Milliseconds, on Redis's clock, between a batch's deadline and the
 * earliest moment its frames can be answered unavailable.
 */
export const DEADLINE_MARGIN_MS = 50;

/** Milliseconds between measurements of Redis's clock while it answers. */
export const CLOCK_SYNC_INTERVAL_MS = 10_000;

/**
 * Milliseconds a batch's `WAIT` gives the replicas; well inside
 * {@link COMMAND_TIMEOUT_MS}, so a master whose replicas lag is told apart
 * from a master that stalls.
 */
export const WAIT_TIMEOUT_MS = 500;

/** Most frames sent to Redis in one script call. */
export const MAX_BATCH = 512;

/**
 * Most increment batches awaiting Redis at once, and the size of the ring of
 * batch records; further frames wait for a batch to return.
 */
export const MAX_IN_FLIGHT = 256;

/** What a script answers instead of running past its deadline. */
const REFUSED = -2;

/** A count for a key its master does not serve (a Cluster slot moved). */
const NOT_HERE = -3;

/** Replicas acknowledging a batch that did not ask (no `WAIT`). */
const NOT_ASKED = -1;

// Redis's clock in ms, as Lua sees it. Writes after TIME need effects
// replication: the default since Redis 5 and the only mode since 7, asked
// for explicitly where the call still exists (3.2 to 7, a no-op from 7).
const NOW = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)`;

// In a Cluster a script may touch keys beyond its declared ones, in other
// slots of the same master, only with this flag (Redis 7).
const CROSS_SLOT = "#!lua flags=allow-cross-slot-keys\n";

/**
 * KEYS[1] is the ring; the session keys are KEYS[2..] (one server), or
 * ARGV[6..] (Cluster: undeclared, in any slot of this master). ARGV: TTL ms,
 * deadline, ring field, record prefix "seq:", ring TTL ms. INCR + PEXPIRE
 * per key; -1 for a key holding no integer, -3 for one this master does not
 * serve; nothing at all past the deadline. An error before the first write
 * (READONLY on a demoted master, OOM) fails the call, so nothing is half
 * done; after it only pcall, so no error can leave a batch half done.
 */
function incrementManyLua(crossSlot: boolean): string {
  return `${crossSlot ? CROSS_SLOT : ""}${NOW}
if now > tonumber(ARGV[2]) then return ${REFUSED} end
local keys, from = ${crossSlot ? "ARGV, 6" : "KEYS, 2"}
local out = {}
local wrote = false
for i = from, #keys do
  local n = redis.pcall('INCR', keys[i])
  if type(n) == 'table' then
    local e = n.err or ''
    if string.find(e, 'non local key', 1, true) then
      out[i - from + 1] = ${NOT_HERE}
    elseif not wrote and not (string.find(e, 'WRONGTYPE', 1, true)
        or string.find(e, 'not an integer', 1, true)
        or string.find(e, 'overflow', 1, true)) then
      return redis.error_reply(e)
    else
      out[i - from + 1] = -1
    end
  else
    wrote = true
    redis.pcall('PEXPIRE', keys[i], ARGV[1])
    out[i - from + 1] = n
  end
end
redis.pcall('HSET', KEYS[1], ARGV[3], ARGV[4] .. table.concat(out, ','))
redis.pcall('PEXPIRE', KEYS[1], ARGV[5])
return out`;
}

// KEYS[1] is the ring; ARGV[1] the latest deadline of the batches asked
// about, ARGV[2..] their fields. Before that deadline has passed a batch
// could still run, so the answer is how many ms to wait; after, the records.
const LOOKUP_SCRIPT = `${NOW}
local deadline = tonumber(ARGV[1])
if now <= deadline then return deadline - now + 1 end
return redis.call('HMGET', KEYS[1], unpack(ARGV, 2))`;

/**
 * KEYS[1] is the ring; ARGV[1] the deadline, then per orphan its batch's
 * ring field, record prefix "seq:" and count, highest count first per key;
 * the session keys are KEYS[2..] (one server) or follow in ARGV (Cluster).
 * Decrements a key still at that count whose batch record is still in the
 * ring: the orphan is then its latest number and in the data Redis holds,
 * so no acknowledged number is handed out again. Then deletes those
 * records, so running it twice withdraws once. Answers per orphan 1
 * (withdrawn), 0 (counted since: kept) or 2 (no record: lost with a master
 * that failed over, or withdrawn before, so not counted).
 */
function withdrawLua(crossSlot: boolean): string {
  return `${crossSlot ? CROSS_SLOT : ""}${NOW}
if now > tonumber(ARGV[1]) then return ${REFUSED} end
local n = ${crossSlot ? "(#ARGV - 1) / 4" : "(#ARGV - 1) / 3"}
local out = {}
local done, seen = {}, {}
for i = 1, n do
  local key = ${crossSlot ? "ARGV[1 + 3 * n + i]" : "KEYS[i + 1]"}
  local field, prefix = ARGV[3 * i - 1], ARGV[3 * i]
  local record = redis.pcall('HGET', KEYS[1], field)
  if type(record) ~= 'string' or string.sub(record, 1, #prefix) ~= prefix then
    out[i] = 2
  else
    if not seen[field] then
      seen[field] = true
      done[#done + 1] = field
    end
    if redis.pcall('GET', key) == ARGV[3 * i + 1] then
      redis.pcall('DECR', key)
      out[i] = 1
    else
      out[i] = 0
    end
  end
end
if #done > 0 then redis.pcall('HDEL', KEYS[1], unpack(done)) end
return out`;
}

// Creates the session at 0 when missing; answers {created, count}.
// KEYS[1] is the count, KEYS[2] the owner (same hash tag in a Cluster);
// ARGV: TTL ms, owner ('' without authentication), owner TTL ms. Creates the
// session at 0 when missing, its owner with it (a stale owner key is
// dropped); an existing session attaches only for its owner when one is
// given. Answers {created, count}, or {-1, ''} for another subject's
// session, changing nothing.
const ATTACH_SCRIPT = `
local created = redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1])
if created then
  if ARGV[2] == '' then redis.call('DEL', KEYS[2])
  else redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
  return {1, '0'}
end
if ARGV[2] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {-1, ''} end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {0, redis.call('GET', KEYS[1])}`;

const SCRIPTS = {
  server: {
    incrementMany: luaScript(incrementManyLua(false)),
    withdraw: luaScript(withdrawLua(false)),
  },
  cluster: {
    incrementMany: luaScript(incrementManyLua(true)),
    withdraw: luaScript(withdrawLua(true)),
  },
  lookup: luaScript(LOOKUP_SCRIPT),
  attach: luaScript(ATTACH_SCRIPT),
};

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

/** A command got no reply within {@link COMMAND_TIMEOUT_MS}. */
class CommandTimeoutError extends StoreUnavailableError {
  constructor(what: string) {
    super(`Redis did not answer ${what} within ${COMMAND_TIMEOUT_MS} ms`);
    this.name = "CommandTimeoutError";
  }
}

/**
 * A master has fewer replicas acknowledging writes than `waitReplicas`: it
 * lasts until a replica returns or the setting changes, so the recovery
 * says it once as a warning.
 */
class ReplicasMissingError extends StoreUnavailableError {
  constructor(message: string) {
    super(message);
    this.name = "ReplicasMissingError";
  }
}

function isReplyError(error: unknown): boolean {
  return error instanceof Error && error.name === "ReplyError";
}

/**
 * What an error reply to a batch means. `moved`: the master does not serve
 * the batch's ring (a Cluster's slot map changed): nothing ran, send the
 * frames again. `unavailable`: a passing state (a master demoted, loading,
 * busy, a Cluster down): nothing ran, answer unavailable and recover.
 * `refused`: Redis will keep refusing (e.g. NOPERM, OOM): passed on as is.
 */
function replyKind(error: Error): "moved" | "unavailable" | "refused" {
  const code = error.message.split(" ", 1)[0];
  switch (code) {
    case "MOVED":
    case "ASK":
    case "TRYAGAIN":
      return "moved";
    case "READONLY":
    case "MASTERDOWN":
    case "LOADING":
    case "BUSY":
    case "CLUSTERDOWN":
    case "NOREPLICAS":
      return "unavailable";
    default:
      return "refused";
  }
}

/** Whether a refusal says the connection reached a replica, not a master. */
function isReplicaRefusal(error: unknown): boolean {
  const message = error instanceof Error ? error.message : "";
  return message.startsWith("READONLY") ||
    message.startsWith("WAIT cannot be used with replica");
}

/**
 * Maps an ioredis error to the store's errors.
 *
 * @returns {@link StoreUnavailableError} for connection trouble and timeouts;
 *   Redis's own error replies (`ReplyError`, e.g. WRONGTYPE) pass through as
 *   they are, since retrying cannot fix them.
 */
function translate(error: unknown): Error {
  if (error instanceof StoreUnavailableError || isReplyError(error)) {
    return error as Error;
  }
  const message = error instanceof Error ? error.message : String(error);
  return new StoreUnavailableError(`Redis unavailable: ${message}`, {
    cause: error,
  });
}

/**
 * Rejects with {@link CommandTimeoutError} when `promise` takes too long, or
 * with {@link StoreUnavailableError} once `signal` aborts (the store closed:
 * no timer outlives it).
 */
function timed<T>(
  promise: Promise<T>,
  what: string,
  signal?: AbortSignal,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new CommandTimeoutError(what)),
      COMMAND_TIMEOUT_MS,
    );
    const abort = () => {
      clearTimeout(timer);
      reject(new StoreUnavailableError("Session store closed"));
    };
    signal?.addEventListener("abort", abort, { once: true });
    promise.then(resolve, reject).finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    });
  });
}

function parseCount(reply: unknown, key: string): number {
  const n = typeof reply === "number" ? reply : Number(reply);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new TypeError(
      `Cannot read session count at ${key}: expected an integer, got ${
        JSON.stringify(reply)
      }`,
    );
  }
  return n;
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
    return this.#store.total(this.#key);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#store.release(this.id);
  }
}

/** One script call's frames, from send to reply (or loss). */
interface Batch {
  readonly seq: number;
  /** The master it went to. */
  readonly shard: Shard;
  readonly keys: string[];
  /** Each key's Cluster slot (0 outside a Cluster), to send it again. */
  readonly slots: number[];
  readonly waiters: Array<PromiseWithResolvers<number>>;
  /** `performance.now()` just before sending. */
  readonly sentAt: number;
  /** Redis time (epoch ms) after which the script refuses to count. */
  readonly deadline: number;
  timer: Timer | undefined;
  /** Whether the waiters have their answer (a count or an error). */
  answered: boolean;
}

/** What a batch's script call and its `WAIT` answered. */
interface BatchReply {
  /** Per key the new count (or -1, -3), or {@link REFUSED}. */
  readonly counts: number[] | number;
  /** Replicas that acknowledged it (`WAIT`); {@link NOT_ASKED} without one. */
  readonly acks: number;
}

/** A frame answered unavailable that Redis counted after all. */
interface Orphan {
  readonly key: string;
  readonly count: number;
  readonly sentAt: number;
  /** The ring its batch recorded it in, and the batch's number. */
  readonly ring: string;
  readonly seq: number;
}

/** What the batcher needs from its store. */
interface BatchOwner {
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

function orphansOf(batch: Batch, counts: number[], into: Orphan[]): boolean {
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
class IncrementBatcher {
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

  constructor(owner: BatchOwner, clustered: boolean) {
    this.#owner = owner;
    this.#clustered = clustered;
  }

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
  /** Per master: lower bounds of (Redis epoch ms − `performance.now()`), newest last. */
  #offsets = new Map<string, Array<{ offset: number; at: number }>>();

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
      deadline: (sentAt, shard) => this.#deadline(sentAt, shard),
      stalled: (reason) => this.#markDown(reason),
      orphaned: () => {
        if (!this.#up) return; // the recovery withdraws them
        this.#detached(() => this.#withdraw()).catch(() => {});
      },
      moved: () => this.#topology.refresh(),
    }, clustered);
    client.on("ready", () => {
      // Another server may answer now (Sentinel): its clock is measured anew.
      if (!clustered) this.#offsets.clear();
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
            await this.#timed(this.#syncClock(shard), `TIME at ${shard.id}`);
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

  /** @internal The durable count now, 0 for an expired session. */
  async total(key: string): Promise<number> {
    if (!this.#up) throw this.#downError;
    let reply: string | null;
    try {
      reply = await this.#timed(this.#topology.client.get(key), "GET");
    } catch (error) {
      throw this.#failure(error);
    }
    return reply === null ? 0 : parseCount(reply, key);
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

  /**
   * Redis time past which a command sent at `sentAt` must not run.
   *
   * @param sentAt `performance.now()` at the send.
   * @param shard The master it runs on. Without one, or for a master not
   *   measured yet (just found in a Cluster, measured in the background),
   *   the lowest offset of any master: the nodes' clocks agree within the
   *   margin, and a lower offset only makes the deadline earlier.
   */
  #deadline(sentAt: number, shard?: Shard): number {
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
        this.#syncClock(shard).catch(() => this.#offsets.delete(shard.id));
      }
    }
    return Math.floor(sentAt + (offset ?? 0)) + COMMAND_TIMEOUT_MS -
      DEADLINE_MARGIN_MS;
  }

  /** Reads a master's `TIME`: one more lower bound of its clock offset. */
  async #syncClock(shard: Shard): Promise<void> {
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
          const probe = this.#syncClock(shard);
          await (clustered ? this.#timed(probe, `TIME at ${shard.id}`) : probe);
        }
        await this.#batcher.settled();
        await this.#lookUpDoubtful();
        // Before the withdrawals, which need the same replicas as batches.
        for (const shard of masters) await this.#probeWrites(shard);
        await this.#withdraw();
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

  /** Finds out which batches lost with a connection were counted. */
  async #lookUpDoubtful(): Promise<void> {
    const byRing = Map.groupBy(this.#batcher.doubtful, (b) => b.shard.ring);
    for (const [ring, doubtful] of byRing) {
      const latest = Math.max(...doubtful.map((b) => b.deadline));
      const fields = doubtful.map((b) => String(b.seq % MAX_IN_FLIGHT));
      let records: Array<string | null>;
      while (true) {
        const reply = await this.#timed(
          evalScript(this.#topology.client, SCRIPTS.lookup, [
            1,
            ring,
            latest,
            ...fields,
          ]) as Promise<Array<string | null> | number>,
          "a lookup of batch records",
        );
        if (!Array.isArray(reply)) {
          // A batch could still run until Redis's clock passes its deadline.
          await this.#pause(reply);
          if (this.#closed) return;
          continue;
        }
        records = reply;
        break;
      }
      const orphans = this.#batcher.orphans;
      doubtful.forEach((batch, i) => {
        const record = records[i];
        const prefix = `${batch.seq}:`;
        if (typeof record !== "string" || !record.startsWith(prefix)) return;
        const counts = record.slice(prefix.length).split(",").map(Number);
        orphansOf(batch, counts, orphans);
      });
      this.#batcher.doubtful = this.#batcher.doubtful.filter((b) =>
        b.shard.ring !== ring
      );
    }
  }

  /**
   * Takes back the counts of frames answered unavailable. A withdrawal that
   * fails (its fate unknown, or its replicas short) is sent again by the
   * next round of the recovery: it withdraws each count at most once.
   */
  async #withdraw(): Promise<void> {
    const orphans = this.#batcher.orphans;
    if (orphans.length === 0) return;
    this.#batcher.orphans = [];
    const now = performance.now();
    // Past its TTL a key may have expired and been recreated by others.
    const fresh = orphans.filter((o) =>
      now - o.sentAt < this.#ttlMs - COMMAND_TIMEOUT_MS
    );
    const tally = {
      withdrawn: 0,
      kept: orphans.length - fresh.length,
      gone: 0,
    };
    const byRing = [...Map.groupBy(fresh, (o) => o.ring).values()];
    try {
      while (byRing.length > 0) {
        await this.#withdrawFrom(byRing[0]!, tally);
        byRing.shift();
      }
    } finally {
      for (const group of byRing) this.#batcher.orphans.push(...group);
      this.#logWithdrawal(tally);
    }
  }

  /**
   * One ring's orphans: one script call on the master holding the ring,
   * then `WAIT`, so a withdrawal counts only once replicas hold it.
   */
  async #withdrawFrom(
    group: Orphan[],
    tally: { withdrawn: number; kept: number; gone: number },
  ): Promise<void> {
    const ring = group[0]!.ring;
    const shard = this.#topology.shardOf(this.#topology.slot(ring));
    if (shard === undefined) {
      throw new StoreUnavailableError(`No Redis master is known for ${ring}`);
    }
    group.sort((a, b) =>
      a.key < b.key ? -1 : a.key > b.key ? 1 : b.count - a.count
    );
    const clustered = this.#topology.clustered;
    const triples = group.flatMap((o) => [
      String(o.seq % MAX_IN_FLIGHT),
      `${o.seq}:`,
      o.count,
    ]);
    const keys = group.map((o) => o.key);
    const deadline = this.#deadline(performance.now());
    const args = clustered
      ? [1, ring, deadline, ...triples, ...keys]
      : [keys.length + 1, ring, ...keys, deadline, ...triples];
    let reply: number[] | number;
    try {
      reply = await this.#timed(
        evalScript(
          shard.conn,
          clustered ? SCRIPTS.cluster.withdraw : SCRIPTS.server.withdraw,
          args,
        ) as Promise<number[] | number>,
        "a withdrawal",
      );
    } catch (error) {
      throw this.#failure(error);
    }
    if (!Array.isArray(reply)) {
      // Refused, so it did nothing: try again with a fresh deadline.
      throw new StoreUnavailableError("Redis ran a withdrawal too late");
    }
    const needed = this.#waitReplicas;
    if (needed > 0 && !this.#alone.has(this.#topology.server(shard))) {
      const acks = await this.#timed(
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

  #logWithdrawal(
    { withdrawn, kept, gone }: {
      withdrawn: number;
      kept: number;
      gone: number;
    },
  ): void {
    if (withdrawn > 0 || gone > 0) {
      this.#log.info(
        "Withdrew {withdrawn} counts of frames answered unavailable",
        { withdrawn, not_in_redis: gone },
      );
    }
    if (kept > 0) {
      this.#log.warning(
        "{kept} frames answered unavailable stay counted: a gap in their sessions",
        { kept },
      );
    }
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
