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
import { byeFrame, heartbeatFrame } from "./frames.ts";
import {
  CloseCode,
  Connection,
  type ConnectionInfo,
  type ConnectionOwner,
  type FrameLimits,
} from "./session.ts";
import type { CloseRefusal } from "./refusals.ts";
import type { SessionHandle } from "./store.ts";

/**
 * A socket whose unsent bytes exceed this is a slow consumer: it is closed
 * with 1008 at the next heartbeat instead of growing the server's memory.
 */
export const SLOW_CONSUMER_BYTES = 4 * 1024 * 1024;

/** Options for {@link Hub}. */
export interface HubOptions {
  /** Seconds between heartbeats. */
  readonly heartbeatIntervalS: number;
  /** Frame limits for every connection. */
  readonly limits: FrameLimits;
  /** Whether connections and frames get spans. */
  readonly tracing: TracingOptions;
}

/** What a drain did. */
export interface DrainResult {
  /** Sockets that completed the close handshake. */
  readonly closed: number;
  /** Sockets still open at the deadline, left to be force-closed. */
  readonly forced: number;
}

/** Holds every open connection. */
export class Hub implements ConnectionOwner {
  readonly #connections = new Set<Connection>();
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #limits: FrameLimits;
  readonly #tracing: TracingOptions;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #emptied: PromiseWithResolvers<void> | undefined;

  /**
   * Creates the hub and starts the heartbeat timer.
   *
   * @param options Heartbeat interval and frame limits.
   * @param metrics Where connection figures go.
   * @param log Parent logger for connection events.
   */
  constructor(options: HubOptions, metrics: Metrics, log: Logger) {
    this.#metrics = metrics;
    this.#log = log;
    this.#limits = options.limits;
    this.#tracing = options.tracing;
    this.#heartbeat = setInterval(
      () => this.#beat(),
      options.heartbeatIntervalS * 1000,
    );
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
    const conn = new Connection(socket, session, this, {
      metrics: this.#metrics,
      limits: this.#limits,
      log: this.#log,
      tracing: this.#tracing,
    }, info);
    this.#connections.add(conn);
    this.#metrics.connectionsTotal.inc();
    if (session.resumed) this.#metrics.resumes.inc();
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
      if (conn.closing || !match(conn)) continue;
      conn.reject(refusal.code, refusal.errorType, refusal.reason);
      hit.push(conn);
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
      if (conn.closing || !conn.open) continue;
      if (conn.socket.bufferedAmount > SLOW_CONSUMER_BYTES) {
        conn.reject(
          CloseCode.policyViolation,
          "slow_consumer",
          "slow consumer",
        );
        continue;
      }
      conn.socket.send(frame);
      sent++;
    }
    this.#metrics.frames.heartbeat += sent;
  }

  /**
   * Says goodbye to every socket and waits for the close handshakes.
   *
   * Each open socket gets `{"bye": true, "total": n}` (n read from the store)
   * and a close with 1001. Resolves when all have closed or at `deadline`.
   *
   * @param deadline `performance.now()` value after which waiting stops.
   * @returns How many closed and how many were still open.
   */
  async closeAll(deadline: number): Promise<DrainResult> {
    this.stopHeartbeat();
    const conns = [...this.#connections];
    const before = conns.length;
    if (before > 0) {
      this.#emptied = Promise.withResolvers();
      await withDeadline(
        Promise.all(conns.map((conn) => this.#sayGoodbye(conn))),
        deadline,
      );
      await withDeadline(this.#emptied.promise, deadline);
    }
    const forced = this.#connections.size;
    return { closed: before - forced, forced };
  }

  async #sayGoodbye(conn: Connection): Promise<void> {
    if (conn.open && !conn.closing) {
      // Stop counting first, so the total read next is the final one.
      conn.closing = true;
      try {
        conn.socket.send(byeFrame(await conn.session.total()));
      } catch (error) {
        conn.log.warning("Cannot send bye frame: {error}", { error });
      }
    }
    conn.close(CloseCode.goingAway, "server shutting down");
  }

  /** Stops the heartbeat timer. */
  stopHeartbeat(): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
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
