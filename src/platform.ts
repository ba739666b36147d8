/**
 * The only module that calls `Deno.*`: serving, WebSocket upgrades, signals,
 * the environment, process facts and exit. A port to another runtime
 * replaces this file and nothing else.
 *
 * @module
 */
import process from "node:process";

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

/**
 * Calls `handler` on SIGTERM and SIGINT.
 *
 * @param handler Receives the signal's name.
 * @returns A function that removes the listeners.
 */
export function onShutdownSignal(
  handler: (signal: "SIGTERM" | "SIGINT") => void,
): () => void {
  const term = () => handler("SIGTERM");
  const int = () => handler("SIGINT");
  Deno.addSignalListener("SIGTERM", term);
  Deno.addSignalListener("SIGINT", int);
  return () => {
    Deno.removeSignalListener("SIGTERM", term);
    Deno.removeSignalListener("SIGINT", int);
  };
}

/**
 * Reads the whole environment (for settings, which parse it once).
 *
 * @returns Variable name → value.
 */
export function env(): Record<string, string> {
  return Deno.env.toObject();
}

/**
 * Reads the command line.
 *
 * @returns The arguments after the script or binary name.
 */
export function args(): readonly string[] {
  return Deno.args;
}

/**
 * Ends the process.
 *
 * @param code Exit code: 0 clean, 1 start-up failure, 2 bad settings.
 */
export function exit(code: number): never {
  Deno.exit(code);
}

/**
 * Names the runtime, for `app_info`.
 *
 * @returns e.g. `deno 2.9.6`.
 */
export function runtimeVersion(): string {
  return `deno ${Deno.version.deno}`;
}

/** Memory figures in bytes, from `Deno.memoryUsage()` (needs no permission). */
export function memoryUsage(): {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
} {
  return Deno.memoryUsage();
}

/**
 * Counts this process's open file descriptors from `/proc/self/fd`.
 *
 * Deno 2.9 lets only `--allow-all` read `/proc/self`, whatever `--allow-read`
 * names.
 *
 * @returns The count, or `undefined` where `/proc` is missing or unreadable.
 */
export function openFds(): number | undefined {
  try {
    // The listing includes the descriptor reading it: start at -1.
    let n = -1;
    for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
    return n;
  } catch {
    return undefined;
  }
}

/**
 * Reads the soft limit on open files from `/proc/self/limits` (needs
 * `--allow-all`, as {@link openFds}).
 *
 * @returns The limit, or `undefined` where it cannot be read.
 */
export function maxFds(): number | undefined {
  try {
    const text = Deno.readTextFileSync("/proc/self/limits");
    const m = text.match(/^Max open files\s+(\d+)/m);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Values at or above this mean "no limit" (cgroup v1 writes 2^63 rounded down to a page). */
const NO_MEMORY_LIMIT = 2 ** 62;

/**
 * Reads the memory limit of this process's control group: cgroup v2
 * `memory.max`, else cgroup v1 `memory.limit_in_bytes`; the process's own
 * group first (from `/proc/self/cgroup`), then the mount's root, which is the
 * container's own group under a cgroup namespace or Docker's v1 mounts.
 *
 * @returns The limit in bytes, or `undefined` when there is none (`max`, or
 *   v1's near-2^63 "unlimited") or it cannot be read.
 */
export function cgroupMemoryLimit(): number | undefined {
  let own: { v2?: string; v1?: string } = {};
  try {
    const text = Deno.readTextFileSync("/proc/self/cgroup");
    own = {
      v2: text.match(/^0::(\/.*)$/m)?.[1],
      v1: text.match(/^\d+:(?:[^:]*,)?memory(?:,[^:]*)?:(\/.*)$/m)?.[1],
    };
  } catch { /* no /proc: try the roots */ }
  const candidates = [
    own.v2 && own.v2 !== "/" && `/sys/fs/cgroup${own.v2}/memory.max`,
    "/sys/fs/cgroup/memory.max",
    own.v1 && own.v1 !== "/" &&
    `/sys/fs/cgroup/memory${own.v1}/memory.limit_in_bytes`,
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
  ];
  for (const path of candidates) {
    if (!path) continue;
    let text;
    try {
      text = Deno.readTextFileSync(path).trim();
    } catch {
      continue;
    }
    if (text === "max") return undefined;
    const bytes = Number(text);
    if (!Number.isFinite(bytes) || bytes <= 0) continue;
    return bytes >= NO_MEMORY_LIMIT ? undefined : bytes;
  }
  return undefined;
}

/**
 * Reads this process's CPU time since it started, from `getrusage(2)`
 * through `node:process` (µs resolution, no permission needed; `/proc/self/stat`
 * needs `--allow-all` on Deno).
 *
 * @returns User and system CPU seconds.
 */
export function cpuSeconds(): { user: number; system: number } {
  const { user, system } = process.cpuUsage();
  return { user: user / 1e6, system: system / 1e6 };
}

/** A timer handle as `setTimeout`/`setInterval` return it. */
export type Timer = ReturnType<typeof setTimeout>;

/**
 * Lets the process exit even while this timer is pending.
 *
 * @param timer From `setTimeout` or `setInterval`.
 */
export function unrefTimer(timer: Timer): void {
  timer.unref();
}

/**
 * Tells whether stderr is a terminal (for progress lines).
 *
 * @returns `true` on a terminal.
 */
export function stderrIsTerminal(): boolean {
  return Deno.stderr.isTerminal();
}

/**
 * Tells whether stdout is a terminal (for the monitor's screen).
 *
 * @returns `true` on a terminal.
 */
export function stdoutIsTerminal(): boolean {
  return Deno.stdout.isTerminal();
}

/** Standard streams as web streams, for sinks and readers. */
export const stdio = {
  get stdin(): ReadableStream<Uint8Array> {
    return Deno.stdin.readable;
  },
  writeStdoutSync(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) {
      off += Deno.stdout.writeSync(bytes.subarray(off));
    }
  },
  writeStderrSync(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) {
      off += Deno.stderr.writeSync(bytes.subarray(off));
    }
  },
};

const encoder = new TextEncoder();

/**
 * Writes a line to stdout (CLI output; the service writes only log lines).
 *
 * @param text The line, without its trailing newline.
 */
export function print(text: string): void {
  stdio.writeStdoutSync(encoder.encode(text + "\n"));
}

/**
 * Writes a line to stderr.
 *
 * @param text The line, without its trailing newline.
 */
export function printError(text: string): void {
  stdio.writeStderrSync(encoder.encode(text + "\n"));
}

/**
 * Reads what a file holds past `offset` (to follow a growing log file).
 *
 * @param path File path.
 * @param offset Bytes already read.
 * @returns The new bytes and the file's size now (a smaller size means it was truncated or rotated).
 * @throws {Deno.errors.NotFound} When the file does not exist.
 */
export async function readFrom(
  path: string,
  offset: number,
): Promise<{ bytes: Uint8Array; size: number }> {
  using file = await Deno.open(path, { read: true });
  const size = (await file.stat()).size;
  const start = size < offset ? 0 : offset;
  await file.seek(start, Deno.SeekMode.Start);
  const bytes = new Uint8Array(size - start);
  let read = 0;
  while (read < bytes.length) {
    const n = await file.read(bytes.subarray(read));
    if (n === null) break;
    read += n;
  }
  return { bytes: bytes.subarray(0, read), size: start + read };
}

/**
 * Reads a whole text file at once (settings' `*_FILE` secrets, read once at
 * start).
 *
 * @param path File path.
 * @returns The file's text (UTF-8).
 * @throws {Deno.errors.NotFound} When the file does not exist; other
 *   `Deno.errors` when it cannot be read.
 */
export function readTextFile(path: string): string {
  return Deno.readTextFileSync(path);
}

/**
 * Writes a whole file at once, replacing it (`sockeye admin profile -o`).
 *
 * @param path File path.
 * @param bytes What it holds.
 * @throws {Deno.errors.PermissionDenied} And other `Deno.errors` when it
 *   cannot be written.
 */
export function writeFile(path: string, bytes: Uint8Array): void {
  Deno.writeFileSync(path, bytes);
}
