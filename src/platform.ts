/**
 * The only module that calls `Deno.*`: serving, WebSocket upgrades, signals,
 * the environment, process facts and exit. A port to another runtime
 * replaces this file and nothing else.
 *
 * @module
 */

/** A listening HTTP server. */
export interface HttpServer {
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  /** The bound address. */
  readonly hostname: string;
  /**
   * Stops accepting, closes remaining WebSockets with 1001 and waits for
   * in-flight requests. Call only after the drain has closed its sockets.
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
 * Starts an HTTP server with `Deno.serve`, printing nothing (stdout carries
 * only log lines).
 *
 * @param options Address to bind; port 0 picks a free port.
 * @param handler Answers each request.
 * @returns The server, already listening.
 * @throws {Deno.errors.AddrInUse} When the port is taken.
 */
export function serve(
  options: { hostname: string; port: number },
  handler: Handler,
): HttpServer {
  const server = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen() {},
  }, (req, info) => {
    const addr = info.remoteAddr as Deno.NetAddr;
    return handler(req, { remoteAddr: addr.hostname ?? "" });
  });
  const addr = server.addr as Deno.NetAddr;
  return {
    port: addr.port,
    hostname: addr.hostname,
    shutdown: () => server.shutdown(),
  };
}

/** Options for {@link upgradeWebSocket}. */
export interface UpgradeOptions {
  /** Subprotocol to confirm in `Sec-WebSocket-Protocol`, if any. */
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
  return Deno.upgradeWebSocket(req, {
    protocol: options.protocol,
    idleTimeout: options.idleTimeoutS,
  });
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
 * @returns The count, or `undefined` where `/proc` is missing or unreadable.
 */
export function openFds(): number | undefined {
  try {
    let n = 0;
    for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
    return n;
  } catch {
    return undefined;
  }
}

/**
 * Reads the soft limit on open files from `/proc/self/limits`.
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

/**
 * Reads this process's CPU time from `/proc/self/stat` (fields 14 and 15,
 * in clock ticks of 1/100 s, the Linux default `CLK_TCK`).
 *
 * @returns User and system CPU seconds, or `undefined` where `/proc` is missing.
 */
export function cpuSeconds(): { user: number; system: number } | undefined {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    // The command name (field 2) may hold spaces; count fields after its ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { user: Number(fields[11]) / 100, system: Number(fields[12]) / 100 };
  } catch {
    return undefined;
  }
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
