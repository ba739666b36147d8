/**
 * The session hub: who is connected, the heartbeat, and the drain.
 *
 * One timer serves every socket's heartbeat, so an idle server with 10,000
 * sockets runs one callback per interval rather than 10,000 timers.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Metrics } from "../observability/metrics.ts";
import type { TracingOptions } from "../observability/tracing.ts";
import { heartbeatFrame } from "./frames.ts";
import {
  Connection,
  type ConnectionDeps,
  type ConnectionInfo,
  type ConnectionOwner,
  QUIET_MS,
} from "./connection.ts";
import type { FrameLimits } from "./frame_limits.ts";
import type { CloseRefusal } from "./refusals.ts";
import type { SessionHandle } from "./store.ts";

/** How often the drain looks for sockets whose client stopped sending, in ms. */
const QUIET_POLL_MS = 50;

/**
 * Longest the drain waits for a client to stop sending after its bye before
 * closing anyway, in ms (also at most half the time left to the deadline).
 */
const MAX_LINGER_MS = 3000;

/** Options for {@link Hub}. */
export interface HubOptions {
  /** Seconds between heartbeats. */
  readonly heartbeatIntervalS: number;
  /** Frame limits for every connection. */
  readonly limits: FrameLimits;
  /** Whether connections and frames get spans. */
  readonly tracing: TracingOptions;
}

/** What a drain did; the three add up to the sockets open when it began. */
export interface DrainResult {
  /**
   * Sockets that ended cleanly: the client's close frame (or its end of
   * stream) arrived after ours.
   */
  readonly closed: number;
  /**
   * Sockets the runtime dropped before the client's close arrived: it ends
   * a server socket at once when data arrives after its close frame (or on a
   * protocol error), which may destroy that close frame in flight.
   */
  readonly dropped: number;
  /** Sockets still open at the deadline, left to be force-closed. */
  readonly forced: number;
}

/** Holds every open connection. */
export class Hub implements ConnectionOwner {
  readonly #connections = new Set<Connection>();
  readonly #metrics: Metrics;
  readonly #deps: ConnectionDeps;
  readonly #heartbeatMs: number;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #emptied: PromiseWithResolvers<void> | undefined;

  /**
   * Creates the hub; {@link start} starts its heartbeat.
   *
   * @param options Heartbeat interval and frame limits.
   * @param metrics Where connection figures go.
   * @param log Parent logger for connection events.
   */
  constructor(options: HubOptions, metrics: Metrics, log: Logger) {
    this.#metrics = metrics;
    this.#deps = {
      metrics,
      limits: options.limits,
      log,
      tracing: options.tracing,
    };
    this.#heartbeatMs = options.heartbeatIntervalS * 1000;
  }

  /** Starts the heartbeat timer; a second call does nothing. */
  start(): void {
    this.#heartbeat ??= setInterval(() => this.#beat(), this.#heartbeatMs);
  }

  /** Stops the heartbeat timer (the drain stops it first). */
  [Symbol.dispose](): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  /** Sockets open or opening now. */
  get size(): number {
    return this.#connections.size;
  }

  /**
   * Takes over a freshly upgraded socket.
   *
   * @param socket From the upgrade.
   * @param session The attached session.
   * @param info Client facts for logs.
   * @returns The connection.
   */
  add(
    socket: WebSocket,
    session: SessionHandle,
    info: ConnectionInfo,
  ): Connection {
    const conn = new Connection(socket, session, this, this.#deps, info);
    this.#connections.add(conn);
    const stats = this.#metrics.connections;
    stats.accepted++;
    if (session.resumed) stats.resumed++;
    return conn;
  }

  /**
   * The open connections, in the order they were accepted (for the admin
   * port's list).
   *
   * @returns A copy: closing one does not disturb it.
   */
  list(): Connection[] {
    return [...this.#connections];
  }

  /**
   * Closes the connections `match` selects with `refusal`'s close code and
   * reason, counted and logged as every refusal is (for the admin port).
   *
   * @param match Selects connections, e.g. by session id.
   * @param refusal The cause, e.g. `REFUSALS.operatorDisconnect` (4001).
   * @returns The connections whose close was started; their sockets'
   *   `close` events follow.
   */
  disconnect(
    match: (conn: Connection) => boolean,
    refusal: CloseRefusal,
  ): Connection[] {
    const hit: Connection[] = [];
    for (const conn of this.#connections) {
      if (match(conn) && conn.reject(refusal)) hit.push(conn);
    }
    return hit;
  }

  /**
   * Forgets a closed connection; resolves the drain's wait when none is left.
   *
   * @param conn The connection whose socket closed.
   */
  closed(conn: Connection): void {
    this.#connections.delete(conn);
    if (this.#connections.size === 0) this.#emptied?.resolve();
  }

  #beat(): void {
    const frame = heartbeatFrame(new Date());
    let sent = 0;
    for (const conn of this.#connections) {
      if (conn.heartbeat(frame)) sent++;
    }
    this.#metrics.frames.heartbeat += sent;
  }

  /**
   * Says goodbye to every socket and waits for the close handshakes.
   *
   * Each open socket gets `{"bye": true, "total": n}` (n read from the store)
   * and, once its client has stopped sending (or after at most
   * `MAX_LINGER_MS`), a close with 1001. Resolves when all have closed or at
   * `deadline`.
   *
   * The close waits because Deno ends a server socket as soon as a data
   * frame arrives after its close frame, and a TCP socket closed with unread
   * input sends a reset that destroys what is still in flight to the client
   * (the close frame with it): a client streaming at full speed would see
   * its connection drop instead of 1001. A client stops once it reads the bye,
   * or when its frames go unanswered; then its close frame comes back.
   *
   * @param deadline `performance.now()` value after which waiting stops.
   * @returns How many closed cleanly, were dropped, or were still open.
   */
  async closeAll(deadline: number): Promise<DrainResult> {
    this[Symbol.dispose]();
    const conns = [...this.#connections];
    if (conns.length === 0) return { closed: 0, dropped: 0, forced: 0 };
    this.#emptied = Promise.withResolvers();
    // The memory store's totals are at hand: one loop sends every bye, and
    // only a store over the network leaves promises to wait for.
    const byes: Promise<void>[] = [];
    for (const conn of conns) {
      const sent = conn.sayGoodbye();
      if (sent !== undefined) byes.push(sent);
    }
    if (byes.length > 0) await withDeadline(Promise.all(byes), deadline);
    const now = performance.now();
    const lingerEnd = Math.min(now + MAX_LINGER_MS, (now + deadline) / 2);
    await this.#closeWhenQuiet(conns, lingerEnd);
    await withDeadline(this.#emptied.promise, deadline);
    let closed = 0;
    let dropped = 0;
    for (const conn of conns) {
      if (this.#connections.has(conn)) continue;
      if (conn.cleanClose) closed++;
      else dropped++;
    }
    return { closed, dropped, forced: conns.length - closed - dropped };
  }

  /**
   * Closes each socket with 1001 once its client has stopped sending, and
   * every socket at `lingerEnd`. No socket is quiet before `QUIET_MS` after
   * the last bye, so the first pass waits that long and closes every idle
   * socket at once; later passes, every `QUIET_POLL_MS`, walk only the
   * sockets still sending.
   */
  async #closeWhenQuiet(
    conns: readonly Connection[],
    lingerEnd: number,
  ): Promise<void> {
    let pending = conns;
    let wait = QUIET_MS;
    while (pending.length > 0) {
      wait = Math.max(0, Math.min(wait, lingerEnd - performance.now()));
      const due = performance.now() + wait;
      await new Promise((resolve) => setTimeout(resolve, wait));
      const now = performance.now();
      // A timer that fired late says the event loop was blocked, and frames
      // that arrived meanwhile may not have been read yet: that pass only
      // notes activity, the next one on time decides.
      const sure = now - due <= QUIET_POLL_MS;
      const last = now >= lingerEnd;
      pending = pending.filter((conn) => conn.closeWhenQuiet(now, sure, last));
      wait = QUIET_POLL_MS;
    }
  }
}

/**
 * Waits for `promise` but not past `deadline`.
 *
 * @returns `true` when the promise settled in time.
 */
async function withDeadline(
  promise: Promise<unknown>,
  deadline: number,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(
      () => resolve(false),
      Math.max(0, deadline - performance.now()),
    );
  });
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
