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
 * Failure policy: commands never wait on a queue while Redis is away
 * (`enableOfflineQueue: false`), time out after `COMMAND_TIMEOUT_MS`, and
 * fail as {@link StoreUnavailableError}; the client gets
 * `{"error": "unavailable", "retry": true}` for that frame, which is not
 * counted. Readiness fails and `app_dependency_up{dependency="redis"}` is 0
 * until Redis answers again; one log line marks each outage and recovery.
 *
 * @module
 */
import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "@logtape/logtape";
import { redactUrl } from "../settings.ts";
import { type Timer, unrefTimer } from "../platform.ts";
import {
  type SessionHandle,
  type SessionStore,
  StoreUnavailableError,
} from "./store.ts";

/** Key prefix of every session: `sockeye:session:<id>`. */
export const KEY_PREFIX = "sockeye:session:";

/** Milliseconds a command may take before it fails as unavailable. */
export const COMMAND_TIMEOUT_MS = 1000;

/** Milliseconds a connection attempt may take. */
export const CONNECT_TIMEOUT_MS = 2000;

// INCR + PEXPIRE for each key in order; -1 for a key holding no integer.
const INCREMENT_MANY_SCRIPT = `
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.pcall('INCR', key)
  if type(n) == 'table' then
    out[i] = -1
  else
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = n
  end
end
return out`;

/** Most frames sent to Redis in one script call. */
export const MAX_BATCH = 512;

// Creates the session at 0 when missing; answers {created, count}.
const ATTACH_SCRIPT = `
local created = redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1])
if not created then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {created and 1 or 0, redis.call('GET', KEYS[1])}`;

interface SessionCommands {
  sockeyeIncrementMany(
    numKeys: number,
    ...keysThenTtl: Array<string | number>
  ): Promise<number[]>;
  sockeyeAttach(key: string, ttlMs: number): Promise<[number, string]>;
}

/** Events the store reports to the service. */
export interface RedisStoreEvents {
  /** Redis went from answering to not answering, or back. */
  onAvailability(up: boolean): void;
}

/**
 * Maps an ioredis error to the store's errors.
 *
 * @returns {@link StoreUnavailableError} for connection trouble and timeouts;
 *   Redis's own error replies (`ReplyError`, e.g. WRONGTYPE) pass through as
 *   they are, since retrying cannot fix them.
 */
function translate(error: unknown): Error {
  if (error instanceof Error && error.name === "ReplyError") return error;
  const message = error instanceof Error ? error.message : String(error);
  return new StoreUnavailableError(`Redis unavailable: ${message}`, {
    cause: error,
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

/**
 * Collects the increments of one event-loop turn and sends them as one
 * script call, flushed from a microtask (so no timer adds latency).
 */
class IncrementBatcher {
  readonly #redis: Redis & SessionCommands;
  readonly #ttlMs: number;
  #keys: string[] = [];
  #waiters: Array<PromiseWithResolvers<number>> = [];
  #scheduled = false;

  constructor(redis: Redis & SessionCommands, ttlMs: number) {
    this.#redis = redis;
    this.#ttlMs = ttlMs;
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

  #flush(): void {
    this.#scheduled = false;
    const keys = this.#keys;
    const waiters = this.#waiters;
    if (keys.length === 0) return;
    this.#keys = [];
    this.#waiters = [];
    this.#redis.sockeyeIncrementMany(keys.length, ...keys, this.#ttlMs).then(
      (replies) => {
        for (let i = 0; i < waiters.length; i++) {
          const n = replies[i];
          if (n === -1 || typeof n !== "number") {
            waiters[i]!.reject(
              new TypeError(
                `Cannot increment ${keys[i]}: the key holds no integer`,
              ),
            );
          } else waiters[i]!.resolve(n);
        }
      },
      (error) => {
        const failure = translate(error);
        for (const waiter of waiters) waiter.reject(failure);
      },
    );
  }
}

/** Sessions in Redis through ioredis. */
export class RedisSessionStore implements SessionStore {
  readonly kind = "redis" as const;
  readonly #redis: Redis & SessionCommands;
  readonly #ttlMs: number;
  readonly #log: Logger;
  readonly #events: RedisStoreEvents;
  /** Session id → connections holding it here; their TTL is refreshed. */
  readonly #held = new Map<string, number>();
  readonly #refresher: Timer;
  readonly #batcher: IncrementBatcher;
  #up = false;
  #closed = false;

  /**
   * Creates the client and starts connecting in the background; the store
   * answers (and readiness passes) once Redis does.
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
    this.#log = log.with({ redis_url: redactUrl(url) });
    this.#events = events;
    this.#redis = new Redis(url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: COMMAND_TIMEOUT_MS,
      maxRetriesPerRequest: 0,
      // Keep trying for as long as the service runs, at most every 2 s.
      retryStrategy: (times) => Math.min(times * 100, 2000),
      ...options,
    }) as Redis & SessionCommands;
    this.#redis.defineCommand("sockeyeIncrementMany", {
      lua: INCREMENT_MANY_SCRIPT,
    });
    this.#batcher = new IncrementBatcher(this.#redis, this.#ttlMs);
    this.#redis.defineCommand("sockeyeAttach", {
      numberOfKeys: 1,
      lua: ATTACH_SCRIPT,
    });
    this.#redis.on("ready", () => this.#setUp(true));
    this.#redis.on("close", () => this.#setUp(false));
    this.#redis.on("error", (error: Error) => {
      if (this.#up) return; // "close" follows and logs the outage
      this.#log.debug("Redis connection error: {error}", { error });
    });
    this.#redis.connect().catch(() => {
      // Logged by the availability change; ioredis keeps retrying.
    });
    // Held sessions must not expire in Redis while their socket is idle.
    this.#refresher = setInterval(
      () => this.#refreshHeld(),
      Math.max(1000, Math.min(this.#ttlMs / 2, 60_000)),
    );
    unrefTimer(this.#refresher);
    this.#log.info("Connecting to Redis");
  }

  #setUp(up: boolean): void {
    if (up === this.#up || this.#closed) return;
    this.#up = up;
    this.#events.onAvailability(up);
    if (up) this.#log.info("Redis available: counting resumes");
    else {
      this.#log.error(
        "Redis unavailable: frames are answered unavailable until it returns",
      );
    }
  }

  /** Whether Redis answered its last connection attempt. */
  get available(): boolean {
    return this.#up;
  }

  async attach(id: string): Promise<SessionHandle> {
    const key = KEY_PREFIX + id;
    let reply: [number, string];
    try {
      reply = await this.#redis.sockeyeAttach(key, this.#ttlMs);
    } catch (error) {
      throw translate(error);
    }
    const count = parseCount(reply[1], key);
    this.#held.set(id, (this.#held.get(id) ?? 0) + 1);
    return new RedisHandle(this, id, count, reply[0] === 0);
  }

  /** @internal One frame: the new durable count. */
  increment(key: string): Promise<number> {
    return this.#batcher.add(key);
  }

  /** @internal The durable count now, 0 for an expired session. */
  async total(key: string): Promise<number> {
    let reply: string | null;
    try {
      reply = await this.#redis.get(key);
    } catch (error) {
      throw translate(error);
    }
    return reply === null ? 0 : parseCount(reply, key);
  }

  /** @internal A connection let go of a session: its TTL runs from now. */
  release(id: string): void {
    const holders = (this.#held.get(id) ?? 1) - 1;
    if (holders > 0) this.#held.set(id, holders);
    else this.#held.delete(id);
    if (!this.#up || this.#closed) return;
    this.#redis.pexpire(KEY_PREFIX + id, this.#ttlMs).catch((error) => {
      this.#log.debug("Cannot refresh session TTL: {error}", { error });
    });
  }

  #refreshHeld(): void {
    if (!this.#up || this.#held.size === 0) return;
    const pipeline = this.#redis.pipeline();
    for (const id of this.#held.keys()) {
      pipeline.pexpire(KEY_PREFIX + id, this.#ttlMs);
    }
    pipeline.exec().catch((error) => {
      this.#log.debug("Cannot refresh held sessions: {error}", { error });
    });
  }

  async check(): Promise<void> {
    if (this.#redis.status !== "ready") {
      throw new StoreUnavailableError(`Redis is ${this.#redis.status}`);
    }
    try {
      await this.#redis.ping();
    } catch (error) {
      throw translate(error);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#refresher);
    try {
      if (this.#redis.status === "ready") await this.#redis.quit();
      else this.#redis.disconnect();
    } catch {
      this.#redis.disconnect();
    }
  }
}
