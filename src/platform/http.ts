/**
 * HTTP serving and WebSocket upgrades through `Deno.serve` and
 * `Deno.upgradeWebSocket`, with a listener that survives its accept loop
 * failing (EMFILE).
 *
 * @module
 */
import { maxFds, openFds, type Timer } from "./process.ts";

/** A listening HTTP server that re-listens after its accept loop fails. */
export interface HttpServer {
  /** The port actually bound (useful with port 0); kept across re-listens. */
  readonly port: number;
  /** The bound address. */
  readonly hostname: string;
  /** Whether the listener accepts connections now (false during an episode). */
  readonly listening: boolean;
  /**
   * Stops accepting (and re-listening), closes remaining WebSockets with 1001
   * and waits for in-flight requests, on the current listener and on every
   * earlier one that still holds connections. Call only after the drain has
   * closed its sockets.
   */
  shutdown(): Promise<void>;
}

/** Connection facts handed to the request handler. */
export interface ConnInfo {
  /** Peer IP address. */
  readonly remoteAddr: string;
}

/** A request handler in the Fetch API shape. */
export type Handler = (
  req: Request,
  info: ConnInfo,
) => Response | Promise<Response>;

/**
 * Why a listener stopped, as a bounded label value: `emfile` (this process
 * is out of file descriptors), `enfile` (the system is), `other`.
 */
export type ListenerErrorReason = "emfile" | "enfile" | "other";

/** Every {@link ListenerErrorReason}, for metrics exported from 0. */
export const LISTENER_ERROR_REASONS: readonly ListenerErrorReason[] = [
  "emfile",
  "enfile",
  "other",
];

/**
 * What a supervised listener reports. An episode runs from an accept failure
 * until the listener has stayed up for {@link RELISTEN_SETTLE_MS}; failures
 * in between (a flood that refills the descriptor table at once) belong to
 * it, so a log line per episode stays one line however the flood churns.
 */
export interface ListenerEvents {
  /**
   * The accept loop failed (e.g. EMFILE): the listener is gone and re-listens
   * with backoff. Called for every failure; open connections, WebSockets
   * included, keep being served meanwhile.
   *
   * @param error What failed, e.g. `Too many open files (os error 24)`; the
   *   runtime's own error is its `cause`.
   * @param reason The error as a bounded label value.
   * @param episodeStart Whether this failure starts an episode.
   */
  onDown(
    error: Error,
    reason: ListenerErrorReason,
    episodeStart: boolean,
  ): void;
  /** Listening again after {@link ListenerEvents.onDown} (maybe not for long). */
  onUp(): void;
  /**
   * The episode is over: the listener has been up for
   * {@link RELISTEN_SETTLE_MS} since its last re-listen.
   *
   * @param downSeconds Seconds the listener was down during the episode.
   * @param failures Accept failures in the episode.
   */
  onRecovered(downSeconds: number, failures: number): void;
}

/** Options for {@link serve}. */
export interface ServeOptions {
  /** Address to bind. */
  readonly hostname: string;
  /** Port to bind; 0 picks a free one (re-listens use the port first bound). */
  readonly port: number;
  /** Listener failures and recoveries; none by default. */
  readonly events?: ListenerEvents;
}

/** First wait before re-listening after an accept failure, in ms. */
export const RELISTEN_MIN_DELAY_MS = 50;
/**
 * Longest wait between re-listen attempts, in ms. The delay doubles up to it
 * and starts again from {@link RELISTEN_MIN_DELAY_MS} only after an episode,
 * so a listener that keeps failing re-listens at most once a second.
 */
export const RELISTEN_MAX_DELAY_MS = 1000;
/**
 * Free descriptors required before re-listening: a listener opened with one
 * spare descriptor would fail again at its first accept.
 */
export const RELISTEN_FREE_FDS = 32;
/** Time up after a re-listen that ends an episode, in ms. */
export const RELISTEN_SETTLE_MS = 1000;

/**
 * Starts an HTTP server with `Deno.serve`, printing nothing (stdout carries
 * only log lines), and keeps it listening.
 *
 * When the runtime's accept loop fails (it does on EMFILE: `server.finished`
 * rejects and the listener is gone for good), this reports
 * {@link ListenerEvents.onDown} and calls `Deno.serve` again on the same
 * address: after {@link RELISTEN_MIN_DELAY_MS}, doubling up to
 * {@link RELISTEN_MAX_DELAY_MS}, once at least {@link RELISTEN_FREE_FDS}
 * descriptors are free. Connections a failed listener accepted, WebSockets
 * included, keep being served by it. No rejection of this path goes
 * unhandled.
 *
 * @param options Address to bind and listener events.
 * @param handler Answers each request.
 * @returns The server, already listening.
 * @throws {Deno.errors.AddrInUse} When the port is taken at start.
 */
export function serve(options: ServeOptions, handler: Handler): HttpServer {
  const { hostname, events } = options;
  // Every listener ever started (one more per failure): a failed one still
  // serves what it accepted, and only its own shutdown() closes that.
  const servers: Deno.HttpServer[] = [];
  let port = options.port;
  let listening = false;
  let stopping = false;
  let timer: Timer | undefined;
  // Read now: at EMFILE even /proc/self/limits cannot be opened.
  const fdLimit = maxFds();
  let episode:
    | { failures: number; downMs: number; downSince: number; delayMs: number }
    | undefined;

  const listen = () => {
    const server = Deno.serve(
      { hostname, port, onListen() {} },
      (req, info) => {
        const addr = info.remoteAddr as Deno.NetAddr;
        return handler(req, { remoteAddr: addr.hostname ?? "" });
      },
    );
    port = (server.addr as Deno.NetAddr).port;
    servers.push(server);
    listening = true;
    const failed = (error: unknown) => {
      if (stopping || servers.at(-1) !== server) return;
      listening = false;
      if (timer !== undefined) clearTimeout(timer);
      const start = episode === undefined;
      episode ??= {
        failures: 0,
        downMs: 0,
        downSince: 0,
        delayMs: RELISTEN_MIN_DELAY_MS,
      };
      episode.failures++;
      episode.downSince = performance.now();
      // The runtime's message reads "Error: Too many open files (os error 24)".
      const message = (error instanceof Error ? error.message : String(error))
        .replace(/^Error: /, "");
      const err = new Error(message, { cause: error });
      events?.onDown(err, listenerErrorReason(err), start);
      relisten(episode);
    };
    // Only shutdown() should end a listener; anything else is a failure.
    server.finished.then(
      () => failed(new Error("Listener closed unexpectedly")),
      failed,
    );
  };

  const relisten = (ep: NonNullable<typeof episode>) => {
    const delayMs = ep.delayMs;
    ep.delayMs = Math.min(delayMs * 2, RELISTEN_MAX_DELAY_MS);
    timer = setTimeout(() => {
      timer = undefined;
      if (stopping) return;
      const free = freeFds(fdLimit);
      if (free === undefined || free >= RELISTEN_FREE_FDS) {
        try {
          listen();
        } catch { /* still out of descriptors, or the port is taken */ }
      }
      if (!listening) return relisten(ep);
      ep.downMs += performance.now() - ep.downSince;
      events?.onUp();
      timer = setTimeout(() => {
        timer = undefined;
        episode = undefined;
        events?.onRecovered(ep.downMs / 1000, ep.failures);
      }, RELISTEN_SETTLE_MS);
    }, delayMs);
  };

  listen();
  const first = servers[0]!;
  return {
    get port() {
      return port;
    },
    hostname: (first.addr as Deno.NetAddr).hostname,
    get listening() {
      return listening;
    },
    async shutdown() {
      stopping = true;
      if (timer !== undefined) clearTimeout(timer);
      await Promise.allSettled(servers.map((s) => s.shutdown()));
    },
  };
}

/**
 * Names an accept failure by its OS error number.
 *
 * @param error The runtime's error; its message ends in `(os error N)`.
 * @returns `emfile` for errno 24, `enfile` for 23, else `other`.
 */
export function listenerErrorReason(error: Error): ListenerErrorReason {
  const errno = error.message.match(/\(os error (\d+)\)/)?.[1];
  return errno === "24" ? "emfile" : errno === "23" ? "enfile" : "other";
}

/**
 * Descriptors this process may still open.
 *
 * @param limit The open-file soft limit, `undefined` when unknown.
 * @returns The limit minus open descriptors; 0 when `/proc/self/fd` cannot
 *   be read (which happens at EMFILE); `undefined` when the limit is unknown.
 */
function freeFds(limit: number | undefined): number | undefined {
  if (limit === undefined) return undefined;
  const open = openFds();
  return open === undefined ? 0 : limit - open;
}

/** Options for {@link upgradeWebSocket}. */
export interface UpgradeOptions {
  /**
   * Subprotocol to confirm in `Sec-WebSocket-Protocol`, if any; the caller
   * has found it in the request's list.
   */
  readonly protocol?: string;
  /** Seconds without a pong before the runtime closes with 1001; 0 turns it off. */
  readonly idleTimeoutS: number;
}

/**
 * Upgrades a request to a WebSocket (RFC 6455) with `Deno.upgradeWebSocket`.
 *
 * The runtime pings after half of `idleTimeoutS` and closes with 1001 and the
 * reason {@link IDLE_CLOSE_REASON} when no pong arrives.
 *
 * @param req A request carrying `Upgrade: websocket`.
 * @param options Subprotocol and idle timeout.
 * @returns The server-side socket and the 101 response (headers mutable).
 * @throws {TypeError} When the request is not a valid upgrade.
 */
export function upgradeWebSocket(
  req: Request,
  options: UpgradeOptions,
): { socket: WebSocket; response: Response } {
  // Deno looks for `protocol` in the request's list split at ", " only, so a
  // list written `a,b` (valid: the space is optional, RFC 9110 §5.6.1) would
  // be refused. The caller parsed the list; confirm the protocol here.
  const upgraded = Deno.upgradeWebSocket(req, {
    idleTimeout: options.idleTimeoutS,
  });
  if (options.protocol !== undefined) {
    upgraded.response.headers.set("Sec-WebSocket-Protocol", options.protocol);
  }
  return upgraded;
}

/** The close reason Deno uses when a socket missed its pong. */
export const IDLE_CLOSE_REASON = "No response from ping frame.";
