/**
 * Per-client limits at the upgrade: a connect rate (a token bucket per
 * client address, `CONNECT_RATE_LIMIT_PER_S`) and a cap on open sockets
 * per client (`MAX_CONNECTIONS_PER_CLIENT`: per address, or per token
 * subject with authentication).
 *
 * Memory stays bounded. An open-socket count exists only while its client
 * holds a socket, so that table is bounded by `MAX_CONNECTIONS`. The buckets
 * live in two generations of maps: a bucket untouched for a whole
 * generation (the time an empty bucket takes to refill) is full again, so
 * dropping the older generation at each turn forgets only buckets that no
 * longer limit anyone, with no per-entry timer or sweep. A generation holds
 * at most {@link MAX_TRACKED_CLIENTS}; when more distinct clients arrive
 * within one (a flood from many addresses), the turn comes early and the
 * oldest buckets are forgotten before they refilled: those clients may
 * connect again sooner than the rate allows. Per-address limits do not stop
 * a flood from many addresses; `MAX_CONNECTIONS` and the proxy do.
 *
 * @module
 */

/**
 * Most connect buckets kept per generation (two generations: at most twice
 * this many, about 110 bytes of heap each with an IPv4 key, measured: 11 MB
 * at most).
 */
export const MAX_TRACKED_CLIENTS = 50_000;

interface Bucket {
  tokens: number;
  /** `now()` of the last refill, in ms. */
  last: number;
}

/** Options for {@link ClientLimits}. */
export interface ClientLimitOptions {
  /** New connections per second per client key; 0 is off. */
  readonly connectRatePerS: number;
  /** Open sockets per client key; 0 is unlimited. */
  readonly maxConnectionsPerClient: number;
  /**
   * Most buckets per generation.
   * @default MAX_TRACKED_CLIENTS
   */
  readonly maxTrackedClients?: number;
  /** The monotonic clock in ms; `performance.now` by default. */
  readonly now?: () => number;
}

/** The per-client tables; one per server. */
export class ClientLimits {
  readonly #ratePerMs: number;
  readonly #capacity: number;
  readonly #generationMs: number;
  readonly #maxTracked: number;
  readonly #maxOpen: number;
  readonly #now: () => number;
  #current = new Map<string, Bucket>();
  #previous = new Map<string, Bucket>();
  #turnedAt: number;
  readonly #open = new Map<string, number>();

  /**
   * Creates empty tables; it starts nothing.
   *
   * @param options The limits and the clock.
   */
  constructor(options: ClientLimitOptions) {
    const rate = options.connectRatePerS;
    this.#ratePerMs = rate / 1000;
    // One second of burst, and at least one connection.
    this.#capacity = Math.max(1, rate);
    this.#generationMs = rate > 0
      ? Math.max(1000, this.#capacity / rate * 1000)
      : 0;
    this.#maxTracked = options.maxTrackedClients ?? MAX_TRACKED_CLIENTS;
    this.#maxOpen = options.maxConnectionsPerClient;
    this.#now = options.now ?? (() => performance.now());
    this.#turnedAt = this.#now();
  }

  /** Connect buckets held now, both generations (for tests and figures). */
  get trackedClients(): number {
    return this.#current.size + this.#previous.size;
  }

  /** Clients holding at least one socket now. */
  get clientsWithSockets(): number {
    return this.#open.size;
  }

  /**
   * Takes one connection attempt from a client's bucket.
   *
   * @param key The client's address key (see `limitKey`).
   * @returns 0 when the attempt may go on; else the seconds until the
   *   bucket holds a token again (for `Retry-After`, at least 1).
   */
  takeConnect(key: string): number {
    if (this.#ratePerMs === 0) return 0;
    const now = this.#now();
    const bucket = this.#bucket(key, now);
    bucket.tokens = Math.min(
      this.#capacity,
      bucket.tokens + (now - bucket.last) * this.#ratePerMs,
    );
    bucket.last = now;
    if (bucket.tokens >= 1) {
      bucket.tokens--;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - bucket.tokens) / this.#ratePerMs / 1000));
  }

  /**
   * Counts one more open socket for a client, unless it holds the most
   * allowed already.
   *
   * @param key The client's key: its address key, or `sub:` and the subject.
   * @returns A function that gives the slot back (idempotent), or
   *   `undefined` when the client is at `MAX_CONNECTIONS_PER_CLIENT`.
   */
  acquire(key: string): (() => void) | undefined {
    if (this.#maxOpen === 0) return noop;
    const open = this.#open.get(key) ?? 0;
    if (open >= this.#maxOpen) return undefined;
    this.#open.set(key, open + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#open.get(key) ?? 1) - 1;
      if (left > 0) this.#open.set(key, left);
      else this.#open.delete(key);
    };
  }

  #bucket(key: string, now: number): Bucket {
    const since = now - this.#turnedAt;
    if (since >= 2 * this.#generationMs) {
      this.#previous = new Map();
      this.#current = new Map();
      this.#turnedAt = now;
    } else if (since >= this.#generationMs) {
      this.#turn(now);
    }
    let bucket = this.#current.get(key);
    if (bucket !== undefined) return bucket;
    bucket = this.#previous.get(key) ??
      { tokens: this.#capacity, last: now };
    if (this.#current.size >= this.#maxTracked) this.#turn(now);
    this.#current.set(key, bucket);
    return bucket;
  }

  #turn(now: number): void {
    this.#previous = this.#current;
    this.#current = new Map();
    this.#turnedAt = now;
  }
}

function noop(): void {}
