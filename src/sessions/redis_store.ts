/**
 * The Redis session store: counts live in Redis, so a session resumes on any
 * instance (blue or green) and survives a crash of this one.
 *
 * Each text frame is an `INCR` + `PEXPIRE` of its session key, answered
 * only after Redis acknowledged it: two instances never hand out the same
 * number and an acknowledged count is never forgotten. Frames that arrive
 * in the same event-loop turn, from any socket, go to Redis as one Lua
 * script call ({@link IncrementBatcher}): one command for many frames keeps
 * the client's per-command cost off each frame. A key that holds no integer
 * fails only its own frame.
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
 *    offset between our clock and Redis `TIME` (measured at every (re)connect
 *    and every {@link CLOCK_SYNC_INTERVAL_MS}: Redis's reading happened
 *    before its reply arrived, so `redis_ms - local_ms_at_reply` can only
 *    underestimate the offset), plus {@link COMMAND_TIMEOUT_MS}, minus
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
 *    small ring (`sockeye:batches:<store id>`, field `seq mod`
 *    {@link MAX_IN_FLIGHT}, value `seq:counts`) in the same atomic script. A
 *    batch whose connection dropped before its reply is looked up once Redis
 *    answers again and its clock has passed the batch's deadline (so it can
 *    no longer run): recorded means counted (orphans), missing means not.
 *
 * Orphans are withdrawn before the store reports itself available again: a
 * script decrements a session whose count is still the orphan's number (so
 * nothing was counted after it and no acknowledged number is reused),
 * highest first, under its own deadline. Until then the store stays
 * unavailable and sends nothing, so this instance counts nothing in
 * between. An orphan that cannot be withdrawn (another instance counted the
 * session in between, the withdrawal's own fate is unknown, or it is older
 * than `SESSION_TTL_S` so the key may have been recreated) stays counted: a
 * gap of one in that session, never a repeat, logged as a warning (when the
 * withdrawal's fate is unknown, it may or may not have). One more edge: a
 * client that attaches to the same session on another instance between the
 * orphan and its withdrawal is told a count so far that includes the orphan,
 * so its first frame's number equals that count instead of exceeding it;
 * the numbers handed out stay distinct.
 *
 * Failure policy: increments never wait on a queue while Redis is away
 * (`enableOfflineQueue: false`, no resend of unanswered commands) and fail
 * as {@link StoreUnavailableError} after {@link COMMAND_TIMEOUT_MS}; the
 * client gets `{"error": "unavailable", "retry": true}` for that frame. A
 * command that times out or a connection that closes marks the store
 * unavailable at once: later frames and upgrades are refused without
 * touching Redis, readiness fails, `app_dependency_up{dependency="redis"}`
 * is 0 and one log line marks the outage. A single probe (`TIME`) waits for
 * Redis; once it answers, every batch sent before it has answered too (one
 * connection replies in order), orphans are withdrawn and one line marks
 * the recovery.
 *
 * @module
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "@logtape/logtape";
import { redactUrl } from "../settings.ts";
import { type Timer, unrefTimer } from "../platform.ts";
import {
  SessionForbiddenError,
  type SessionHandle,
  type SessionStore,
  StoreUnavailableError,
} from "./store.ts";

/** Key prefix of every session: `sockeye:session:<id>`. */
export const KEY_PREFIX = "sockeye:session:";

/**
 * Key prefix of a session's owner, `sockeye:owner:<id>`: the token subject
 * that created it, written with the count by the attach script.
 */
export const OWNER_PREFIX = "sockeye:owner:";

/** Key prefix of each store's ring of batch records. */
export const BATCHES_PREFIX = "sockeye:batches:";

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

/** Most frames sent to Redis in one script call. */
export const MAX_BATCH = 512;

/**
 * Most increment batches awaiting Redis at once, and the size of the ring of
 * batch records; further frames wait for a batch to return.
 */
export const MAX_IN_FLIGHT = 256;

/** What a script answers instead of running past its deadline. */
const REFUSED = -2;

// Redis's clock in ms, as Lua sees it. Writes after TIME need effects
// replication: the default since Redis 5 and the only mode since 7, asked
// for explicitly where the call still exists (3.2 to 7, a no-op from 7).
const NOW = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)`;

// KEYS[1] is the ring, KEYS[2..] the session keys. ARGV: TTL ms, deadline,
// ring field, record prefix "seq:", ring TTL ms. INCR + PEXPIRE per key,
// -1 for a key holding no integer; nothing at all past the deadline. Only
// pcall after the first write, so no error can leave a batch half done.
const INCREMENT_MANY_SCRIPT = `${NOW}
if now > tonumber(ARGV[2]) then return ${REFUSED} end
local out = {}
for i = 2, #KEYS do
  local n = redis.pcall('INCR', KEYS[i])
  if type(n) == 'table' then
    out[i - 1] = -1
  else
    redis.pcall('PEXPIRE', KEYS[i], ARGV[1])
    out[i - 1] = n
  end
end
redis.pcall('HSET', KEYS[1], ARGV[3], ARGV[4] .. table.concat(out, ','))
redis.pcall('PEXPIRE', KEYS[1], ARGV[5])
return out`;

// KEYS[1] is the ring; ARGV[1] the latest deadline of the batches asked
// about, ARGV[2..] their fields. Before that deadline has passed a batch
// could still run, so the answer is how many ms to wait; after, the records.
const LOOKUP_SCRIPT = `${NOW}
local deadline = tonumber(ARGV[1])
if now <= deadline then return deadline - now + 1 end
return redis.call('HMGET', KEYS[1], unpack(ARGV, 2))`;

// KEYS: session keys; ARGV[1] the deadline, ARGV[2..] each key's orphan
// count, highest first per key. Decrements a key still at that count: the
// orphan is its latest number, so no acknowledged number is handed out again.
const WITHDRAW_SCRIPT = `${NOW}
if now > tonumber(ARGV[1]) then return ${REFUSED} end
local out = {}
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[i + 1] then
    redis.pcall('DECR', key)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out`;

// KEYS[1] is the count, KEYS[2] the owner; ARGV: TTL ms, owner ('' without
// authentication), owner TTL ms. Creates the session at 0 when missing, its
// owner with it (a stale owner key is dropped); an existing session attaches
// only for its owner when one is given. Answers {created, count}, or
// {-1, ''} for another subject's session, changing nothing.
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

interface SessionCommands {
  sockeyeIncrementMany(
    numKeys: number,
    ...keysThenArgs: Array<string | number>
  ): Promise<number[] | number>;
  sockeyeLookup(
    ring: string,
    deadline: number,
    ...fields: string[]
  ): Promise<Array<string | null> | number>;
  sockeyeWithdraw(
    numKeys: number,
    ...keysThenArgs: Array<string | number>
  ): Promise<number[] | number>;
  sockeyeAttach(
    key: string,
    ownerKey: string,
    ttlMs: number,
    owner: string,
    ownerTtlMs: number,
  ): Promise<[number, string]>;
}

type SessionRedis = Redis & SessionCommands;

/** Events the store reports to the service. */
export interface RedisStoreEvents {
  /** Redis went from answering to not answering, or back. */
  onAvailability(up: boolean): void;
}

/** A command got no reply within {@link COMMAND_TIMEOUT_MS}. */
class CommandTimeoutError extends StoreUnavailableError {
  constructor(what: string) {
    super(`Redis did not answer ${what} within ${COMMAND_TIMEOUT_MS} ms`);
    this.name = "CommandTimeoutError";
  }
}

function isReplyError(error: unknown): boolean {
  return error instanceof Error && error.name === "ReplyError";
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

/** Rejects with {@link CommandTimeoutError} when `promise` takes too long. */
function timed<T>(promise: Promise<T>, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new CommandTimeoutError(what)),
      COMMAND_TIMEOUT_MS,
    );
    promise.then(resolve, reject).finally(() => clearTimeout(timer));
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
  #released = false;

  constructor(
    store: RedisSessionStore,
    id: string,
    initialCount: number,
    resumed: boolean,
  ) {
    this.#store = store;
    this.id = id;
    this.#key = KEY_PREFIX + id;
    this.initialCount = initialCount;
    this.resumed = resumed;
  }

  increment(): Promise<number> {
    return this.#store.increment(this.#key);
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
  readonly keys: string[];
  readonly waiters: Array<PromiseWithResolvers<number>>;
  /** `performance.now()` just before sending. */
  readonly sentAt: number;
  /** Redis time (epoch ms) after which the script refuses to count. */
  readonly deadline: number;
  timer: Timer | undefined;
  /** Whether the waiters have their answer (a count or an error). */
  answered: boolean;
}

/** A frame answered unavailable that Redis counted after all. */
interface Orphan {
  readonly key: string;
  readonly count: number;
  readonly sentAt: number;
}

/** What the batcher needs from its store. */
interface BatchOwner {
  /** Whether frames may be sent to Redis now. */
  isUp(): boolean;
  /** The error for frames refused while Redis is unavailable. */
  downError(): StoreUnavailableError;
  /** Sends one batch's script call. */
  run(batch: Batch): Promise<number[] | number>;
  /** Redis time (epoch ms) past which a batch sent at `sentAt` must not count. */
  deadline(sentAt: number): number;
  /** Redis stopped answering in time, or the connection failed. */
  stalled(reason: string): void;
  /** Orphans were found (a late reply counted answered frames). */
  orphaned(): void;
}

/**
 * Collects the increments of one event-loop turn and sends them as one
 * script call, flushed from a microtask (so no timer adds latency). Keeps
 * each batch until Redis answers or the connection fails, so a late answer
 * is still read, and remembers the batches whose fate the connection took.
 */
class IncrementBatcher {
  readonly #owner: BatchOwner;
  #keys: string[] = [];
  #waiters: Array<PromiseWithResolvers<number>> = [];
  #scheduled = false;
  #seq = 0;
  readonly #inFlight = new Map<number, Batch>();
  #whenSettled: Array<() => void> = [];
  /** Batches sent on a connection that closed before their reply. */
  doubtful: Batch[] = [];
  /** Frames answered unavailable but counted. */
  orphans: Orphan[] = [];
  /** Frames Redis refused because they reached it past their deadline. */
  refusedLate = 0;

  constructor(owner: BatchOwner) {
    this.#owner = owner;
  }

  add(key: string): Promise<number> {
    const waiter = Promise.withResolvers<number>();
    this.#keys.push(key);
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
    while (this.#keys.length > 0) {
      if (!this.#owner.isUp()) return this.failPending(this.#owner.downError());
      // Sent when a batch returns; the oldest batch's timer bounds the wait.
      if (this.#inFlight.size >= MAX_IN_FLIGHT) return;
      let keys = this.#keys;
      let waiters = this.#waiters;
      if (keys.length > MAX_BATCH) {
        keys = keys.splice(0, MAX_BATCH);
        waiters = waiters.splice(0, MAX_BATCH);
      } else {
        this.#keys = [];
        this.#waiters = [];
      }
      this.#send(keys, waiters);
    }
  }

  #send(keys: string[], waiters: Array<PromiseWithResolvers<number>>): void {
    const sentAt = performance.now();
    const batch: Batch = {
      seq: ++this.#seq,
      keys,
      waiters,
      sentAt,
      deadline: this.#owner.deadline(sentAt),
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

  #replied(batch: Batch, reply: number[] | number): void {
    this.#settle(batch);
    if (!Array.isArray(reply)) {
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
      let found = false;
      for (let i = 0; i < reply.length; i++) {
        const count = reply[i]!;
        if (count > 0) {
          this.orphans.push({
            key: batch.keys[i]!,
            count,
            sentAt: batch.sentAt,
          });
          found = true;
        }
      }
      if (found) this.#owner.orphaned();
    } else {
      batch.answered = true;
      const { keys, waiters } = batch;
      for (let i = 0; i < waiters.length; i++) {
        const n = reply[i];
        if (n === -1 || typeof n !== "number") {
          waiters[i]!.reject(
            new TypeError(
              `Cannot increment ${keys[i]}: the key holds no integer`,
            ),
          );
        } else waiters[i]!.resolve(n);
      }
    }
    if (this.#keys.length > 0 && !this.#scheduled) this.#flush();
  }

  #failed(batch: Batch, error: unknown): void {
    this.#settle(batch);
    if (isReplyError(error)) {
      // Redis refused the call itself (e.g. NOPERM, OOM): nothing ran.
      if (!batch.answered) {
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
}

/** Sessions in Redis through ioredis. */
export class RedisSessionStore implements SessionStore {
  readonly kind = "redis" as const;
  readonly #redis: SessionRedis;
  readonly #ttlMs: number;
  /**
   * An owner key outlives its count: twice the TTL (and the refresh
   * interval's slack), so while a count exists so does its owner.
   */
  readonly #ownerTtlMs: number;
  /** Set once a session was attached with an owner: their keys are refreshed too. */
  #owners = false;
  readonly #log: Logger;
  readonly #events: RedisStoreEvents;
  /** Session id → connections holding it here; their TTL is refreshed. */
  readonly #held = new Map<string, number>();
  #refresher: Timer | undefined;
  #clockSync: Timer | undefined;
  readonly #batcher: IncrementBatcher;
  /** This store's ring of batch records in Redis. */
  readonly #ring = BATCHES_PREFIX + crypto.randomUUID();
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
  /** Lower bounds of (Redis epoch ms − `performance.now()`), newest last. */
  #offsets: Array<{ offset: number; at: number }> = [];

  /**
   * Creates the client; {@link start} connects in the background, and the
   * store answers (and readiness passes) once Redis does.
   *
   * @param url `redis://` or `rediss://` URL (user, password and db in the URL).
   * @param ttlS Session lifetime after its last activity, in seconds.
   * @param log Logger for outages and recoveries.
   * @param events Availability changes, for `app_dependency_up`.
   * @param options Extra ioredis options, e.g. `sentinels` or `tls`.
   */
  constructor(
    url: string,
    ttlS: number,
    log: Logger,
    events: RedisStoreEvents,
    options: RedisOptions = {},
  ) {
    this.#ttlMs = Math.max(1, Math.round(ttlS * 1000));
    this.#ownerTtlMs = 2 * this.#ttlMs + 2 * 1000;
    this.#log = log.with({ redis_url: redactUrl(url) });
    this.#events = events;
    this.#redis = new Redis(url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      // Never send a command twice: a resent increment could count a frame
      // already answered unavailable.
      autoResendUnfulfilledCommands: false,
      connectTimeout: CONNECT_TIMEOUT_MS,
      // No commandTimeout: the store times its own commands, so that a late
      // reply is still read (see the module documentation).
      maxRetriesPerRequest: 0,
      // Keep trying for as long as the service runs, at most every 2 s.
      retryStrategy: (times) => Math.min(times * 100, 2000),
      ...options,
    }) as SessionRedis;
    this.#redis.defineCommand("sockeyeIncrementMany", {
      lua: INCREMENT_MANY_SCRIPT,
    });
    this.#redis.defineCommand("sockeyeLookup", {
      numberOfKeys: 1,
      lua: LOOKUP_SCRIPT,
    });
    this.#redis.defineCommand("sockeyeWithdraw", { lua: WITHDRAW_SCRIPT });
    this.#redis.defineCommand("sockeyeAttach", {
      numberOfKeys: 2,
      lua: ATTACH_SCRIPT,
    });
    const recordTtlMs = Math.max(this.#ttlMs, 10 * COMMAND_TIMEOUT_MS);
    this.#batcher = new IncrementBatcher({
      isUp: () => this.#up,
      downError: () => this.#downError,
      run: (batch) =>
        this.#redis.sockeyeIncrementMany(
          batch.keys.length + 1,
          this.#ring,
          ...batch.keys,
          this.#ttlMs,
          batch.deadline,
          batch.seq % MAX_IN_FLIGHT,
          `${batch.seq}:`,
          recordTtlMs,
        ),
      deadline: (sentAt) => this.#deadline(sentAt),
      stalled: (reason) => this.#markDown(reason),
      orphaned: () => {
        if (!this.#up) return; // the recovery withdraws them
        this.#detached(() => this.#withdraw()).catch(() => {});
      },
    });
    this.#redis.on("ready", () => {
      this.#whenReady?.resolve();
      this.#whenReady = undefined;
    });
    this.#redis.on("close", () => this.#markDown("connection closed"));
    this.#redis.on("error", (error: Error) => {
      if (this.#up) return; // "close" follows and logs the outage
      this.#log.debug("Redis connection error: {error}", { error });
    });
  }

  /**
   * Connects in the background and starts the refresh, clock and recovery
   * loops; a second call does nothing.
   */
  start(): void {
    if (this.#refresher !== undefined || this.#closed) return;
    this.#redis.connect().catch(() => {
      // The recovery loop waits for "ready"; ioredis keeps retrying.
    });
    // Held sessions must not expire in Redis while their socket is idle.
    this.#refresher = setInterval(
      () => this.#refreshHeld(),
      Math.max(1000, Math.min(this.#ttlMs / 2, 60_000)),
    );
    unrefTimer(this.#refresher);
    // Keeps the clock offset fresh, and finds a stall while no frame flows.
    this.#clockSync = setInterval(() => {
      if (!this.#up) return;
      timed(this.#syncClock(), "TIME").catch((error) => {
        if (error instanceof CommandTimeoutError) {
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
    const key = KEY_PREFIX + id;
    if (owner !== undefined) this.#owners = true;
    let reply: [number, string];
    try {
      reply = await timed(
        this.#redis.sockeyeAttach(
          key,
          OWNER_PREFIX + id,
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
    return new RedisHandle(this, id, count, reply[0] === 0);
  }

  /** @internal One frame: the new durable count. */
  increment(key: string): Promise<number> {
    return this.#up ? this.#batcher.add(key) : Promise.reject(this.#downError);
  }

  /** @internal The durable count now, 0 for an expired session. */
  async total(key: string): Promise<number> {
    if (!this.#up) throw this.#downError;
    let reply: string | null;
    try {
      reply = await timed(this.#redis.get(key), "GET");
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
    const refreshed = this.#owners
      ? this.#redis.multi()
        .pexpire(KEY_PREFIX + id, this.#ttlMs)
        .pexpire(OWNER_PREFIX + id, this.#ownerTtlMs)
        .exec()
      : this.#redis.pexpire(KEY_PREFIX + id, this.#ttlMs);
    refreshed.catch((error) => {
      this.#log.debug("Cannot refresh session TTL: {error}", { error });
    });
  }

  async forget(id: string): Promise<boolean> {
    if (!this.#up) throw this.#downError;
    try {
      return await timed(this.#redis.del(KEY_PREFIX + id), "DEL") > 0;
    } catch (error) {
      throw this.#failure(error);
    }
  }

  async check(): Promise<void> {
    if (!this.#up) throw this.#downError;
    try {
      await timed(this.#redis.ping(), "PING");
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
    try {
      if (this.#up) {
        // The ring is only for this store's own recovery.
        this.#redis.del(this.#ring).catch(() => {});
        await timed(this.#redis.quit(), "QUIT");
      } else this.#redis.disconnect();
    } catch {
      this.#redis.disconnect();
    }
  }

  /** A failed command: a timeout means Redis stalls, so mark it down. */
  #failure(error: unknown): Error {
    if (error instanceof CommandTimeoutError) this.#markDown(error.message);
    return translate(error);
  }

  #deadline(sentAt: number): number {
    const now = performance.now();
    let offset = -Infinity;
    // Each sample is a lower bound; the largest recent one is the tightest.
    for (const sample of this.#offsets) {
      if (now - sample.at < 6 * CLOCK_SYNC_INTERVAL_MS) {
        offset = Math.max(offset, sample.offset);
      }
    }
    const newest = this.#offsets.at(-1);
    if (offset === -Infinity && newest !== undefined) offset = newest.offset;
    return Math.floor(sentAt + offset) + COMMAND_TIMEOUT_MS -
      DEADLINE_MARGIN_MS;
  }

  /** Reads Redis `TIME`: one more lower bound of the clock offset. */
  async #syncClock(): Promise<void> {
    const [seconds, micros] = await this.#redis.time();
    const at = performance.now();
    const redisMs = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    if (!Number.isFinite(redisMs)) {
      throw new TypeError(`Cannot read Redis TIME: got ${seconds} ${micros}`);
    }
    this.#offsets.push({ offset: redisMs - at, at });
    if (this.#offsets.length > 6) this.#offsets.shift();
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
   * Waits for Redis, settles every batch whose fate is open, withdraws the
   * orphans, and only then reports the store available.
   */
  async #recoverLoop(): Promise<void> {
    let lastRefusal: string | undefined;
    while (!this.#closed && !this.#up) {
      const failures = this.#failures;
      try {
        if (this.#redis.status !== "ready") {
          await this.#nextReady();
          continue;
        }
        // No timeout: this probe answers once Redis does, and then every
        // batch sent before it has answered too.
        await this.#syncClock();
        await this.#batcher.settled();
        await this.#lookUpDoubtful();
        await this.#withdraw();
        if (failures !== this.#failures || this.#closed) continue;
        this.#markUp();
      } catch (error) {
        // Redis's own refusals (e.g. NOPERM for TIME or EVAL) do not pass by
        // themselves: say so once; connection trouble is the outage itself.
        const message = (error as Error).message;
        if (isReplyError(error) && message !== lastRefusal) {
          lastRefusal = message;
          this.#log.warning("Cannot recover the Redis session store: {error}", {
            error,
          });
        } else this.#log.debug("Redis is not back yet: {error}", { error });
        await this.#pause(100);
      }
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
    const doubtful = this.#batcher.doubtful;
    if (doubtful.length === 0) return;
    const latest = Math.max(...doubtful.map((b) => b.deadline));
    const fields = doubtful.map((b) => String(b.seq % MAX_IN_FLIGHT));
    let records: Array<string | null>;
    while (true) {
      const reply = await timed(
        this.#redis.sockeyeLookup(this.#ring, latest, ...fields),
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
      const counts = record.slice(prefix.length).split(",");
      counts.forEach((text, j) => {
        const count = Number(text);
        if (count > 0) {
          orphans.push({ key: batch.keys[j]!, count, sentAt: batch.sentAt });
        }
      });
    });
    this.#batcher.doubtful = [];
  }

  /** Takes back the counts of frames answered unavailable. */
  async #withdraw(): Promise<void> {
    const orphans = this.#batcher.orphans;
    if (orphans.length === 0) return;
    this.#batcher.orphans = [];
    const now = performance.now();
    // Past its TTL a key may have expired and been recreated by others.
    const fresh = orphans.filter((o) =>
      now - o.sentAt < this.#ttlMs - COMMAND_TIMEOUT_MS
    );
    let kept = orphans.length - fresh.length;
    let withdrawn = 0;
    fresh.sort((a, b) =>
      a.key < b.key ? -1 : a.key > b.key ? 1 : b.count - a.count
    );
    if (fresh.length > 0) {
      let reply: number[] | number;
      try {
        reply = await timed(
          this.#redis.sockeyeWithdraw(
            fresh.length,
            ...fresh.map((o) => o.key),
            this.#deadline(performance.now()),
            ...fresh.map((o) => o.count),
          ),
          "a withdrawal",
        );
      } catch (error) {
        // Its fate is unknown: never send it twice.
        this.#log.warning(
          "Cannot tell whether {unknown} counts of frames answered unavailable were withdrawn: {error}",
          { unknown: fresh.length, error },
        );
        this.#logWithdrawal(0, kept);
        throw this.#failure(error);
      }
      if (!Array.isArray(reply)) {
        // Refused, so it did nothing: try again with a fresh deadline.
        this.#batcher.orphans.push(...fresh);
        throw new StoreUnavailableError("Redis ran a withdrawal too late");
      }
      for (const done of reply) {
        if (done === 1) withdrawn++;
        else kept++;
      }
    }
    this.#logWithdrawal(withdrawn, kept);
  }

  #logWithdrawal(withdrawn: number, kept: number): void {
    if (withdrawn > 0) {
      this.#log.info(
        "Withdrew {withdrawn} counts of frames answered unavailable",
        { withdrawn },
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
    const pipeline = this.#redis.pipeline();
    for (const id of this.#held.keys()) {
      pipeline.pexpire(KEY_PREFIX + id, this.#ttlMs);
      if (this.#owners) pipeline.pexpire(OWNER_PREFIX + id, this.#ownerTtlMs);
    }
    pipeline.exec().catch((error) => {
      this.#log.debug("Cannot refresh held sessions: {error}", { error });
    });
  }
}
