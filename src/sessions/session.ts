/**
 * One WebSocket connection: text frame → store → `{"count": n}`, and the
 * RFC 6455 close codes for bad input.
 *
 * This is the hot path. Per frame it does a type check, a length check, the
 * store increment and one `send`; figures go to plain counters in
 * {@link FrameStats}. It logs nothing above debug and awaits only a store
 * that answers with a promise.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { FrameStats, Metrics } from "../observability/metrics.ts";
import { levelFlags } from "../observability/logging.ts";
import { IDLE_CLOSE_REASON } from "../platform.ts";
import {
  logIds,
  recordError,
  startConnectionSpan,
  startFrameSpan,
  type TracingOptions,
} from "../observability/tracing.ts";
import type { Span } from "@opentelemetry/api";
import { countFrame, sessionFrame, UNAVAILABLE_FRAME } from "./frames.ts";
import { type SessionHandle, StoreUnavailableError } from "./store.ts";

/** RFC 6455 §7.4.1 close codes the service sends. */
export const CloseCode = {
  /** 1000: normal closure. */
  normal: 1000,
  /** 1001: going away (drain, idle timeout). */
  goingAway: 1001,
  /** 1002: protocol error (sent by the runtime for an invalid close code). */
  protocolError: 1002,
  /** 1003: unsupported data (binary frame). */
  unsupportedData: 1003,
  /** 1008: policy violation (rate limit, slow consumer). */
  policyViolation: 1008,
  /** 1009: message too big. */
  messageTooBig: 1009,
  /** 1011: internal error. */
  internalError: 1011,
} as const;

/** Close codes kept as their own `code` label; others count as `other`. */
const KNOWN_CODES = new Set([
  1000,
  1001,
  1002,
  1003,
  1005,
  1006,
  1007,
  1008,
  1009,
  1010,
  1011,
  1012,
  1013,
  1014,
  1015,
  // Private use (RFC 6455 §7.4.2), sent by this server: an operator's close.
  4001,
]);

/** Limits applied to every frame. */
export interface FrameLimits {
  /** Largest text frame in UTF-8 bytes. */
  readonly maxMessageBytes: number;
  /** Frames per second per socket; 0 is off. */
  readonly rateLimitPerS: number;
  /**
   * Payload bytes queued in the runtime and not yet taken by the kernel
   * (`bufferedAmount`) above which a socket is closed as a slow consumer.
   */
  readonly maxBufferedBytes: number;
}

/**
 * The error messages with which Deno 2.9's WebSocket (fastwebsockets 0.8)
 * reports a frame breaking RFC 6455 just before it drops the connection, and
 * the `websocket_errors_total` label each counts as. Any other message means
 * the client went away ("Unexpected EOF", or an I/O error such as
 * "Connection reset by peer (os error 104)") and is not an error of ours.
 */
const RUNTIME_REJECTIONS: ReadonlyMap<string, string> = new Map([
  ["Invalid UTF-8", "protocol_error"], // text payload or close reason, §8.1
  ["Invalid string data", "protocol_error"], // the same, found later
  ["Reserved bits are not zero", "protocol_error"], // RSV1-3, no extension, §5.2
  ["Invalid value", "protocol_error"], // reserved opcode, §5.2
  ["Ping frame too large", "protocol_error"], // control payload over 125, §5.5
  ["Control frame must not be fragmented", "protocol_error"], // §5.5
  ["Invalid fragment", "protocol_error"], // data frame inside a message, §5.4
  ["Invalid continuation frame", "protocol_error"], // nothing to continue, §5.4
  ["Invalid close frame", "protocol_error"], // 1-byte close payload, §5.5.1
  ["Invalid close code", "protocol_error"], // answered with 1002, §7.4
  // 64 MiB or more: refused from its header, before the payload is read.
  ["Frame too large", "message_too_big"],
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

/** A token bucket holding one second's worth of frames. */
class RateLimiter {
  #tokens: number;
  #last = performance.now();
  readonly #perMs: number;
  readonly #capacity: number;

  constructor(perS: number) {
    this.#capacity = Math.max(1, perS);
    this.#tokens = this.#capacity;
    this.#perMs = perS / 1000;
  }

  take(): boolean {
    const now = performance.now();
    this.#tokens = Math.min(
      this.#capacity,
      this.#tokens + (now - this.#last) * this.#perMs,
    );
    this.#last = now;
    if (this.#tokens < 1) return false;
    this.#tokens--;
    return true;
  }
}

/**
 * UTF-8 length of a string without encoding it.
 *
 * @param s Any string.
 * @returns Its size in bytes as UTF-8.
 */
export function utf8Length(s: string): number {
  let bytes = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) bytes += 1;
    else if (c >= 0xd800 && c <= 0xdbff) i++, bytes += 2; // pair: 4 bytes for 2 units
    else bytes += 2;
  }
  return bytes;
}

/** One accepted WebSocket and its session. */
export class Connection {
  /** Random id naming this connection in logs. */
  readonly id: string = crypto.randomUUID();
  /** The server side of the socket. */
  readonly socket: WebSocket;
  /** The session this connection counts for. */
  readonly session: SessionHandle;
  /** Logger carrying connection_id, session_uuid, remote_addr, user_agent. */
  readonly log: Logger;
  /** Client facts from the upgrade: address, user agent, request id. */
  readonly info: ConnectionInfo;
  /** When the socket was accepted, in ms since the Unix epoch. */
  readonly connectedAt: number = Date.now();
  /** Text frames received on this connection. */
  messages = 0;
  /** Set once the server has started closing; later frames are ignored. */
  closing = false;
  /**
   * Frames that arrived after {@link closing} was set (ignored, not counted).
   * The drain sends its close only once this stops growing.
   */
  ignored = 0;
  /**
   * Whether the socket ended cleanly: the peer's close frame, or its end of
   * stream after ours. `false` when the runtime dropped it (a protocol
   * error, or data arriving after our close frame, which ends the connection
   * at once and may destroy that close frame in flight).
   */
  cleanClose = false;
  /** The connection's span while tracing samples it. */
  readonly span: Span | undefined;
  readonly #openedAt = performance.now();
  readonly #metrics: Metrics;
  #sentCode: number | undefined;
  #done = false;
  /** The runtime's message when it rejected a frame (see RUNTIME_REJECTIONS). */
  #rejectedBy: string | undefined;

  /**
   * Wires the socket's events. The socket may still be connecting.
   *
   * @param socket From `Deno.upgradeWebSocket`.
   * @param session The attached session.
   * @param owner The hub, told when the socket closes.
   * @param deps Metrics, limits and the parent logger.
   * @param info Client facts for logs.
   */
  constructor(
    socket: WebSocket,
    session: SessionHandle,
    owner: ConnectionOwner,
    deps: {
      metrics: Metrics;
      limits: FrameLimits;
      log: Logger;
      tracing: TracingOptions;
    },
    info: ConnectionInfo,
  ) {
    this.socket = socket;
    this.session = session;
    this.info = info;
    const span = this.span = startConnectionSpan(deps.tracing, {
      "session.id": session.id,
      "sockeye.session.resumed": session.resumed,
      "sockeye.connection.id": this.id,
      "client.address": info.remoteAddr,
      "user_agent.original": info.userAgent,
      ...(info.userId !== undefined && { "enduser.id": info.userId }),
    });
    this.log = deps.log.with({
      connection_id: this.id,
      session_uuid: session.id,
      request_id: info.requestId,
      remote_addr: info.remoteAddr,
      user_agent: info.userAgent,
      ...(info.userId !== undefined && { user_id: info.userId }),
      ...(span && logIds(span)),
    });
    // 0 unless this connection is traced: one comparison per frame when off.
    const frameRatio = span === undefined ? 0 : deps.tracing.frameRatio;
    const metrics = this.#metrics = deps.metrics;
    const frames: FrameStats = metrics.frames;
    const maxBytes = deps.limits.maxMessageBytes;
    const maxBuffered = deps.limits.maxBufferedBytes;
    // Strings up to a third of the limit in UTF-16 units cannot exceed it.
    const safeLength = Math.floor(maxBytes / 3);
    const limiter = deps.limits.rateLimitPerS > 0
      ? new RateLimiter(deps.limits.rateLimitPerS)
      : undefined;

    socket.onopen = () => {
      this.log.info("WebSocket connected", {
        resumed: session.resumed,
        count: session.initialCount,
      });
      if (info.wantsSessionFrame) {
        socket.send(
          sessionFrame(session.id, session.initialCount, session.resumed),
        );
      }
    };

    // Each frame the runtime cannot hand to the kernel yet costs ~1 KiB of
    // memory whatever its payload: check the backlog where it grows (one
    // fast-op read, ~40 ns), so a client that sends and never reads is closed
    // before it costs more than about 85 × maxBuffered bytes.
    const checkBacklog = () => {
      if (socket.bufferedAmount > maxBuffered) this.rejectSlowConsumer();
    };
    const reply = (count: number, start: number) => {
      if (this.closing) return;
      socket.send(countFrame(count));
      frames.sent++;
      frames.observe((performance.now() - start) / 1000);
      checkBacklog();
      // A property load per frame while the level is above debug.
      if (levelFlags.debug) this.log.debug("Frame answered {count}", { count });
    };
    const failed = (error: unknown) => {
      if (error instanceof StoreUnavailableError) {
        metrics.error("store_unavailable");
        recordError(span, "store_unavailable", error.message);
        if (!this.closing) {
          socket.send(UNAVAILABLE_FRAME);
          frames.sent++;
          checkBacklog();
        }
        return;
      }
      this.log.error("Cannot count frame: {error}", { error });
      this.reject(CloseCode.internalError, "internal", "internal error");
    };

    socket.onmessage = (event: MessageEvent) => {
      if (this.closing) {
        this.ignored++;
        return;
      }
      const data = event.data;
      if (typeof data !== "string") {
        return this.reject(
          CloseCode.unsupportedData,
          "binary_frame",
          "binary frames are not supported",
        );
      }
      if (data.length > safeLength && utf8Length(data) > maxBytes) {
        return this.reject(
          CloseCode.messageTooBig,
          "message_too_big",
          `message over ${maxBytes} bytes`,
        );
      }
      if (limiter !== undefined && !limiter.take()) {
        return this.reject(
          CloseCode.policyViolation,
          "rate_limited",
          "rate limit exceeded",
        );
      }
      const start = performance.now();
      frames.received++;
      this.messages++;
      if (frameRatio > 0 && Math.random() < frameRatio) {
        return traceFrame(start);
      }
      let count: number | Promise<number>;
      try {
        count = session.increment();
      } catch (error) {
        return failed(error);
      }
      if (typeof count === "number") reply(count, start);
      else count.then((n) => reply(n, start), failed);
    };

    // The sampled frame: the same steps inside a span, off the common path.
    const traceFrame = async (start: number) => {
      const frameSpan = startFrameSpan(span!);
      try {
        const count = await session.increment();
        frameSpan.setAttributes({
          "sockeye.count": count,
          "sockeye.store.duration": (performance.now() - start) / 1000,
        });
        reply(count, start);
      } catch (error) {
        recordError(
          frameSpan,
          error instanceof StoreUnavailableError
            ? "store_unavailable"
            : "internal",
          (error as Error).message,
        );
        failed(error);
      } finally {
        frameSpan.end();
      }
    };

    socket.onerror = (event) => {
      const message = (event as ErrorEvent).message;
      if (RUNTIME_REJECTIONS.has(message)) {
        // The close event follows at once; it counts and logs this.
        this.#rejectedBy ??= message;
        if (message === "Invalid close code") {
          this.#sentCode ??= CloseCode.protocolError;
        }
        return;
      }
      this.log.debug("WebSocket error: {message}", { message });
    };

    socket.onclose = (event: CloseEvent) => {
      // Deno can fire close twice (idle timeout); count once.
      if (this.#done) return;
      this.#done = true;
      this.closing = true;
      this.cleanClose = event.wasClean;
      session.release();
      info.onClose?.();
      // The code this server sent wins; Deno reports 0 for a connection that
      // ended without a close frame, which RFC 6455 §7.1.5 calls 1006.
      const code = this.#sentCode ?? (event.code === 0 ? 1006 : event.code);
      metrics.disconnects.labels(KNOWN_CODES.has(code) ? String(code) : "other")
        .inc();
      const rejectedBy = this.#rejectedBy;
      if (rejectedBy !== undefined) {
        const errorType = RUNTIME_REJECTIONS.get(rejectedBy)!;
        metrics.error(errorType);
        recordError(span, errorType, rejectedBy);
        this.log.warning("WebSocket dropped by the runtime: {reason}", {
          reason: rejectedBy,
          close_code: code,
          error_type: errorType,
        });
      } else if (event.reason === IDLE_CLOSE_REASON) {
        metrics.error("idle_timeout");
        recordError(span, "idle_timeout", event.reason);
        this.log.warning("WebSocket dropped: no pong within the idle timeout", {
          close_code: code,
        });
      }
      this.log.info("WebSocket disconnected", {
        close_code: code,
        close_reason: event.reason,
        duration_ms: Math.round(performance.now() - this.#openedAt),
        messages: this.messages,
      });
      if (span !== undefined) {
        span.setAttributes({
          "sockeye.close.code": code,
          "sockeye.close.reason": event.reason,
          "sockeye.messages": this.messages,
        });
        span.end();
      }
      owner.closed(this);
    };
  }

  /** Whether the socket is open (`readyState` OPEN). */
  get open(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  /**
   * Closes the socket for bad input: counts the cause, logs it once.
   *
   * @param code RFC 6455 close code.
   * @param errorType `websocket_errors_total` label.
   * @param reason Close reason sent to the client (at most 123 bytes).
   */
  reject(code: number, errorType: string, reason: string): void {
    if (this.closing) return;
    this.closing = true;
    this.#metrics.error(errorType);
    recordError(this.span, errorType, reason);
    this.log.warning("Closing WebSocket: {reason}", {
      reason,
      close_code: code,
      error_type: errorType,
    });
    this.close(code, reason);
  }

  /** Closes the socket with 1008 as a slow consumer (it does not read). */
  rejectSlowConsumer(): void {
    this.reject(CloseCode.policyViolation, "slow_consumer", "slow consumer");
  }

  /**
   * Starts the close handshake; safe to call on a closed socket.
   *
   * @param code RFC 6455 close code.
   * @param reason Close reason (at most 123 bytes).
   */
  close(code: number, reason: string): void {
    this.closing = true;
    this.#sentCode ??= code;
    try {
      this.socket.close(code, reason);
    } catch {
      // Already closed or never opened: nothing to close.
    }
  }
}
