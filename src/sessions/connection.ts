/**
 * One WebSocket connection: text frame → store → `{"count": n}`, the RFC 6455
 * closes for bad input, and its part of the drain (the goodbye).
 *
 * This is the hot path. Per frame it does a type check, a length check, the
 * store increment and one `send`; figures go to plain counters in
 * {@link FrameStats}. It logs nothing above debug and awaits only a store
 * that answers with a promise. The connection is the socket's event listener
 * itself (`handleEvent`), so a socket costs no closures.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Span } from "@opentelemetry/api";
import type { FrameStats, Metrics } from "../observability/metrics.ts";
import { emitLine, levelFlags } from "../observability/logging.ts";
import { IDLE_CLOSE_REASON } from "../platform.ts";
import {
  logIds,
  recordError,
  startConnectionSpan,
  startFrameSpan,
  type TracingOptions,
} from "../observability/tracing.ts";
import {
  byeFrame,
  countFrame,
  sessionFrame,
  UNAVAILABLE_FRAME,
} from "./frames.ts";
import { type FrameLimits, RateLimiter, utf8Length } from "./frame_limits.ts";
import {
  CloseCode,
  closeCodeKey,
  type CloseRefusal,
  type DropRefusal,
  REFUSALS,
} from "./refusals.ts";
import { randomUuid } from "./session_ids.ts";
import { type SessionHandle, StoreUnavailableError } from "./store.ts";

/**
 * How long no frame may arrive on a socket after its bye before the drain
 * closes it, in ms: longer than a round trip plus a busy client's pause, so
 * the frames a client sent before it read the bye have all arrived.
 */
export const QUIET_MS = 500;

/**
 * The error messages with which Deno 2.9's WebSocket (fastwebsockets 0.8)
 * reports a frame breaking RFC 6455 just before it drops the connection, and
 * the cause each counts as. Any other message means the client went away
 * ("Unexpected EOF", or an I/O error such as "Connection reset by peer (os
 * error 104)") and is not an error of ours.
 */
const RUNTIME_REJECTIONS: ReadonlyMap<string, DropRefusal> = new Map([
  ["Invalid UTF-8", REFUSALS.protocolError], // text payload or close reason, §8.1
  ["Invalid string data", REFUSALS.protocolError], // the same, found later
  ["Reserved bits are not zero", REFUSALS.protocolError], // RSV1-3, no extension, §5.2
  ["Invalid value", REFUSALS.protocolError], // reserved opcode, §5.2
  ["Ping frame too large", REFUSALS.protocolError], // control payload over 125, §5.5
  ["Control frame must not be fragmented", REFUSALS.protocolError], // §5.5
  ["Invalid fragment", REFUSALS.protocolError], // data frame inside a message, §5.4
  ["Invalid continuation frame", REFUSALS.protocolError], // nothing to continue, §5.4
  ["Invalid close frame", REFUSALS.protocolError], // 1-byte close payload, §5.5.1
  ["Invalid close code", REFUSALS.protocolError], // answered with 1002, §7.4
  // 64 MiB or more: refused from its header, before the payload is read.
  ["Frame too large", REFUSALS.frameHeaderTooBig],
]);

/** What a connection needs from the hub that owns it. */
export interface ConnectionOwner {
  /** Called once when the socket has closed. */
  closed(conn: Connection): void;
}

/** Per-connection facts, for logs. */
export interface ConnectionInfo {
  /** The client's address. */
  readonly remoteAddr: string;
  /** The client's `User-Agent`. */
  readonly userAgent: string;
  /** The upgrade request's id. */
  readonly requestId: string;
  /** Whether the client asked for the `sockeye.v1` subprotocol. */
  readonly wantsSessionFrame: boolean;
  /** The token's subject, with authentication on (`user_id`, `enduser.id`). */
  readonly userId?: string;
  /** Called once after the socket closed and its session was released. */
  readonly onClose?: () => void;
}

/** What every connection of a hub shares. */
export interface ConnectionDeps {
  /** Where frame figures, errors and disconnects go. */
  readonly metrics: Metrics;
  /** Frame limits. */
  readonly limits: FrameLimits;
  /** Parent logger; each connection adds its own fields. */
  readonly log: Logger;
  /** Whether connections and frames get spans. */
  readonly tracing: TracingOptions;
}

/** One accepted WebSocket and its session. */
export class Connection {
  /** Random id naming this connection in logs. */
  readonly id: string = randomUuid();
  /** The server side of the socket. */
  readonly socket: WebSocket;
  /** The session this connection counts for. */
  readonly session: SessionHandle;
  /** Client facts from the upgrade: address, user agent, request id. */
  readonly info: ConnectionInfo;
  readonly #parentLog: Logger;
  readonly #span: Span | undefined;
  readonly #owner: ConnectionOwner;
  readonly #metrics: Metrics;
  readonly #frames: FrameStats;
  readonly #maxBytes: number;
  /** Strings up to a third of the limit in UTF-16 units cannot exceed it. */
  readonly #safeLength: number;
  readonly #maxBuffered: number;
  readonly #limiter: RateLimiter | undefined;
  /** 0 unless this connection is traced: one comparison per frame when off. */
  readonly #frameRatio: number;
  readonly #openedAt = performance.now();
  #messages = 0;
  /** Set once the server has started closing; later frames are ignored. */
  #closing = false;
  /** Frames that arrived after {@link #closing} was set (not counted). */
  #ignored = 0;
  #cleanClose = false;
  #sentCode: number | undefined;
  #done = false;
  /** The runtime's message when it rejected a frame (see RUNTIME_REJECTIONS). */
  #rejectedBy: string | undefined;
  /** Rejection handler for store promises, made on the first one. */
  #onStoreError: ((error: unknown) => void) | undefined;
  /** {@link #ignored} when the drain last saw it change. */
  #quietSeen = 0;
  /** When the drain last saw a frame arrive after the bye. */
  #quietSince = 0;

  /**
   * Takes the socket's events. The socket may still be connecting.
   *
   * @param socket From `Deno.upgradeWebSocket`.
   * @param session The attached session.
   * @param owner The hub, told when the socket closes.
   * @param deps Metrics, limits, tracing and the parent logger.
   * @param info Client facts for logs.
   */
  constructor(
    socket: WebSocket,
    session: SessionHandle,
    owner: ConnectionOwner,
    deps: ConnectionDeps,
    info: ConnectionInfo,
  ) {
    this.socket = socket;
    this.session = session;
    this.info = info;
    this.#owner = owner;
    this.#parentLog = deps.log;
    // Tracing off (the default): no attributes to build.
    const span = this.#span = deps.tracing.enabled
      ? startConnectionSpan(deps.tracing, {
        "session.id": session.id,
        "sockeye.session.resumed": session.resumed,
        "sockeye.connection.id": this.id,
        "client.address": info.remoteAddr,
        "user_agent.original": info.userAgent,
        ...(info.userId !== undefined && { "enduser.id": info.userId }),
      })
      : undefined;
    this.#frameRatio = span === undefined ? 0 : deps.tracing.frameRatio;
    this.#metrics = deps.metrics;
    this.#frames = deps.metrics.frames;
    const { maxMessageBytes, maxBufferedBytes, rateLimitPerS } = deps.limits;
    this.#maxBytes = maxMessageBytes;
    this.#safeLength = Math.floor(maxMessageBytes / 3);
    this.#maxBuffered = maxBufferedBytes;
    this.#limiter = rateLimitPerS > 0
      ? new RateLimiter(rateLimitPerS)
      : undefined;
    socket.addEventListener("message", this);
    // Once: a listener kept after its event costs each socket 256 bytes.
    socket.addEventListener("open", this, { once: true });
    socket.addEventListener("error", this);
    socket.addEventListener("close", this);
  }

  /** When the socket was accepted, in ms since the Unix epoch. */
  get connectedAt(): number {
    return Math.round(performance.timeOrigin + this.#openedAt);
  }

  /**
   * The connection's logger, made when a line is logged: a child logger kept
   * per socket costs 120 bytes, and a socket logs a line or two in its life.
   */
  get #log(): Logger {
    const info = this.info;
    const span = this.#span;
    return this.#parentLog.with({
      connection_id: this.id,
      session_uuid: this.session.id,
      request_id: info.requestId,
      remote_addr: info.remoteAddr,
      user_agent: info.userAgent,
      ...(info.userId !== undefined && { user_id: info.userId }),
      ...(span && logIds(span)),
    });
  }

  /**
   * The fields of the connect and disconnect lines at info (the same as
   * {@link #log}'s), in a fresh object the caller completes and logs with
   * `emitLine`: no child logger, and no spread to copy.
   */
  #lineFields(): Record<string, unknown> {
    const info = this.info;
    const fields: Record<string, unknown> = {
      connection_id: this.id,
      session_uuid: this.session.id,
      request_id: info.requestId,
      remote_addr: info.remoteAddr,
      user_agent: info.userAgent,
    };
    if (info.userId !== undefined) fields.user_id = info.userId;
    if (this.#span !== undefined) Object.assign(fields, logIds(this.#span));
    return fields;
  }

  /** Whether the socket is open (`readyState` OPEN). */
  get open(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  /** Text frames received on this connection. */
  get messages(): number {
    return this.#messages;
  }

  /**
   * Whether the socket ended cleanly: the peer's close frame, or its end of
   * stream after ours. `false` while open, and when the runtime dropped it (a
   * protocol error, or data arriving after our close frame, which ends the
   * connection at once and may destroy that close frame in flight).
   */
  get cleanClose(): boolean {
    return this.#cleanClose;
  }

  /**
   * The socket's events (the DOM `EventListener` interface): the socket calls
   * this for `message`, `open`, `error` and `close`.
   *
   * @param event The socket's event.
   */
  handleEvent(event: Event): void {
    switch (event.type) {
      case "message":
        return this.#onMessage(event as MessageEvent);
      case "open":
        return this.#onOpen();
      case "error":
        return this.#onError(event as ErrorEvent);
      case "close":
        return this.#onClose(event as CloseEvent);
    }
  }

  /**
   * Closes the socket for a cause: counts it, logs it once. Does nothing once
   * the connection is closing.
   *
   * @param refusal The cause, e.g. `REFUSALS.rateLimited` (1008).
   * @param reason Close reason sent instead of the cause's (at most 123
   *   bytes of UTF-8).
   * @returns `true` when this call started the close.
   */
  reject(refusal: CloseRefusal, reason: string = refusal.reason): boolean {
    if (this.#closing) return false;
    this.#closing = true;
    const { code, errorType } = refusal;
    this.#metrics.error(errorType);
    recordError(this.#span, errorType, reason);
    this.#log.warning("Closing WebSocket: {reason}", {
      reason,
      close_code: code,
      error_type: errorType,
    });
    this.#close(code, reason);
    return true;
  }

  /**
   * Sends the heartbeat frame, or closes a slow consumer instead.
   *
   * @param frame The heartbeat frame, shared by every socket.
   * @returns `true` when the frame was sent.
   */
  heartbeat(frame: string): boolean {
    if (this.#closing || !this.open || this.#checkBacklog()) return false;
    this.socket.send(frame);
    return true;
  }

  /**
   * The drain's first step: stops counting, then sends
   * `{"bye": true, "total": n}` with the store's final total. Frames arriving
   * afterwards are ignored (not counted); {@link closeWhenQuiet} closes the
   * socket once they stop.
   *
   * @returns Nothing once the bye was sent (the memory store answers at
   *   once: no promise per socket), or a promise resolved when it was sent
   *   or failed (a store over the network). Never rejects.
   */
  sayGoodbye(): Promise<void> | undefined {
    this.#quietSeen = this.#ignored;
    this.#quietSince = performance.now();
    if (!this.open || this.#closing) return;
    // Stop counting first, so the total read next is the final one.
    this.#closing = true;
    let total: number | Promise<number>;
    try {
      total = this.session.total();
    } catch (error) {
      this.#byeFailed(error);
      return;
    }
    if (typeof total === "number") {
      this.#sendBye(total);
      return;
    }
    return total.then(
      (n) => this.#sendBye(n),
      (error) => this.#byeFailed(error),
    );
  }

  #sendBye(total: number): void {
    try {
      this.socket.send(byeFrame(total));
    } catch (error) {
      return this.#byeFailed(error);
    }
    // The client can only stop once it has the bye: quiet counts from here.
    this.#quietSeen = this.#ignored;
    this.#quietSince = performance.now();
  }

  #byeFailed(error: unknown): void {
    this.#log.warning("Cannot send bye frame: {error}", { error });
  }

  /**
   * The drain's second step, polled: closes the socket with 1001 once no
   * frame has arrived on it for `QUIET_MS` after its bye, or at once when
   * `last`.
   *
   * @param now `performance.now()` of this poll.
   * @param sure Whether the poll ran on time. A late one (the event loop was
   *   blocked) may leave frames unread: it notes what arrived but closes
   *   nothing, and the next poll on time decides.
   * @param last Whether this is the last poll (the linger ended).
   * @returns `true` while the socket should be polled again.
   */
  closeWhenQuiet(now: number, sure: boolean, last: boolean): boolean {
    if (this.#done) return false;
    if (this.#ignored !== this.#quietSeen) {
      this.#quietSeen = this.#ignored;
      this.#quietSince = now;
    }
    if (
      !last && this.open && (!sure || now - this.#quietSince < QUIET_MS)
    ) return true;
    this.#close(CloseCode.goingAway, "server shutting down");
    return false;
  }

  #onOpen(): void {
    const session = this.session;
    if (levelFlags.info) {
      const fields = this.#lineFields();
      fields.resumed = session.resumed;
      fields.count = session.initialCount;
      emitLine(this.#parentLog, "info", "WebSocket connected", fields);
    }
    if (this.info.wantsSessionFrame) {
      this.socket.send(
        sessionFrame(session.id, session.initialCount, session.resumed),
      );
    }
  }

  #onMessage(event: MessageEvent): void {
    if (this.#closing) {
      this.#ignored++;
      return;
    }
    const data = event.data;
    if (typeof data !== "string") {
      this.reject(REFUSALS.binaryFrame);
      return;
    }
    if (data.length > this.#safeLength && utf8Length(data) > this.#maxBytes) {
      this.reject(
        REFUSALS.messageTooBig,
        `message over ${this.#maxBytes} bytes`,
      );
      return;
    }
    if (this.#limiter !== undefined && !this.#limiter.take()) {
      this.reject(REFUSALS.rateLimited);
      return;
    }
    const start = performance.now();
    this.#frames.received++;
    this.#messages++;
    if (this.#frameRatio > 0 && Math.random() < this.#frameRatio) {
      this.#traceFrame(start);
      return;
    }
    let count: number | Promise<number>;
    try {
      count = this.session.increment();
    } catch (error) {
      return this.#failed(error);
    }
    if (typeof count === "number") this.#reply(count, start);
    else {
      count.then(
        (n) => this.#reply(n, start),
        this.#onStoreError ??= (error) => this.#failed(error),
      );
    }
  }

  #reply(count: number, start: number): void {
    if (this.#closing) return;
    this.socket.send(countFrame(count));
    const frames = this.#frames;
    frames.sent++;
    frames.observe((performance.now() - start) / 1000);
    this.#checkBacklog();
    // A property load per frame while the level is above debug.
    if (levelFlags.debug) this.#log.debug("Frame answered {count}", { count });
  }

  /**
   * Each frame the runtime cannot hand to the kernel yet costs ~1 KiB of
   * memory whatever its payload: check the backlog where it grows (one
   * fast-op read, ~40 ns), so a client that sends and never reads is closed
   * before it costs more than about 85 × maxBuffered bytes.
   *
   * @returns `true` when the socket was closed as a slow consumer.
   */
  #checkBacklog(): boolean {
    if (this.socket.bufferedAmount <= this.#maxBuffered) return false;
    this.reject(REFUSALS.slowConsumer);
    return true;
  }

  #failed(error: unknown): void {
    if (error instanceof StoreUnavailableError) {
      const { errorType } = REFUSALS.storeUnavailableFrame;
      this.#metrics.error(errorType);
      recordError(this.#span, errorType, error.message);
      if (!this.#closing) {
        this.socket.send(UNAVAILABLE_FRAME);
        this.#frames.sent++;
        this.#checkBacklog();
      }
      return;
    }
    this.#log.error("Cannot count frame: {error}", { error });
    this.reject(REFUSALS.internal);
  }

  /** The sampled frame: the same steps inside a span, off the common path. */
  async #traceFrame(start: number): Promise<void> {
    const frameSpan = startFrameSpan(this.#span!);
    try {
      const count = await this.session.increment();
      frameSpan.setAttributes({
        "sockeye.count": count,
        "sockeye.store.duration": (performance.now() - start) / 1000,
      });
      this.#reply(count, start);
    } catch (error) {
      recordError(
        frameSpan,
        error instanceof StoreUnavailableError
          ? REFUSALS.storeUnavailableFrame.errorType
          : REFUSALS.internal.errorType,
        (error as Error).message,
      );
      this.#failed(error);
    } finally {
      frameSpan.end();
    }
  }

  #onError(event: ErrorEvent): void {
    const message = event.message;
    if (RUNTIME_REJECTIONS.has(message)) {
      // The close event follows at once; it counts and logs this.
      this.#rejectedBy ??= message;
      if (message === "Invalid close code") {
        this.#sentCode ??= CloseCode.protocolError;
      }
      return;
    }
    this.#log.debug("WebSocket error: {message}", { message });
  }

  #onClose(event: CloseEvent): void {
    // Deno can fire close twice (idle timeout); count once.
    if (this.#done) return;
    this.#done = true;
    this.#closing = true;
    this.#cleanClose = event.wasClean;
    this.session.release();
    this.info.onClose?.();
    // The code this server sent wins; Deno reports 0 for a connection that
    // ended without a close frame, which RFC 6455 §7.1.5 calls 1006.
    const code = this.#sentCode ?? (event.code === 0 ? 1006 : event.code);
    const metrics = this.#metrics;
    const span = this.#span;
    metrics.connections.closes.add(closeCodeKey(code));
    const rejectedBy = this.#rejectedBy;
    if (rejectedBy !== undefined) {
      const { errorType } = RUNTIME_REJECTIONS.get(rejectedBy)!;
      metrics.error(errorType);
      recordError(span, errorType, rejectedBy);
      this.#log.warning("WebSocket dropped by the runtime: {reason}", {
        reason: rejectedBy,
        close_code: code,
        error_type: errorType,
      });
    } else if (event.reason === IDLE_CLOSE_REASON) {
      const { errorType } = REFUSALS.idleTimeout;
      metrics.error(errorType);
      recordError(span, errorType, event.reason);
      this.#log.warning("WebSocket dropped: no pong within the idle timeout", {
        close_code: code,
      });
    }
    if (levelFlags.info) {
      const fields = this.#lineFields();
      fields.close_code = code;
      fields.close_reason = event.reason;
      fields.duration_ms = Math.round(performance.now() - this.#openedAt);
      fields.messages = this.#messages;
      emitLine(this.#parentLog, "info", "WebSocket disconnected", fields);
    }
    if (span !== undefined) {
      span.setAttributes({
        "sockeye.close.code": code,
        "sockeye.close.reason": event.reason,
        "sockeye.messages": this.#messages,
      });
      span.end();
    }
    this.#owner.closed(this);
  }

  /** Starts the close handshake; safe on a closed socket. */
  #close(code: number, reason: string): void {
    this.#closing = true;
    this.#sentCode ??= code;
    try {
      this.socket.close(code, reason);
    } catch {
      // Already closed or never opened: nothing to close.
    }
  }
}
