/**
 * Test helpers: real servers (in-process on port 0, or as a subprocess),
 * real WebSocket clients, a raw RFC 6455 client for what browsers cannot
 * do, and waits on conditions instead of sleeps.
 *
 * @module
 */
import { parseSettings } from "../src/settings.ts";
import { parsePrometheusText } from "../src/cli/prometheus_text.ts";
import { type Server, startServer } from "../src/server.ts";

/** Repository root, for spawning `main.ts`. */
export const ROOT: string = new URL("..", import.meta.url).pathname;

/** The `deno` executable running these tests. */
export const DENO: string = Deno.execPath();

/** Upper bound for any single wait in a test, in ms. */
export const WAIT_MS = 10_000;

/** What a finished `main.ts` subprocess printed, and its exit code. */
export interface CommandRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `main.ts` (any subcommand) as a subprocess and waits for it to exit.
 *
 * @param args The command line after `main.ts`.
 * @param env Extra environment (`NO_COLOR=1` is set).
 */
export async function runSockeye(
  args: string[],
  env: Record<string, string> = {},
): Promise<CommandRun> {
  const out = await new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`, ...args],
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/**
 * Rejects when `promise` does not settle within `ms`.
 *
 * @param promise What to wait for.
 * @param what Names the condition in the error.
 * @param ms Upper bound in milliseconds.
 */
export async function within<T>(
  promise: Promise<T>,
  what: string,
  ms = WAIT_MS,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` until it returns a truthy value.
 *
 * @param check Evaluated every `intervalMs`.
 * @param what Names the condition in the error.
 * @returns The first truthy value.
 */
export async function until<T>(
  check: () => T | Promise<T>,
  what: string,
  { timeoutMs = WAIT_MS, intervalMs = 20 } = {},
): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  while (true) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (performance.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** An in-process sockeye server on a free loopback port. */
export interface TestServer extends AsyncDisposable {
  readonly server: Server;
  readonly port: number;
  /** `http://127.0.0.1:port` + path. */
  http(path: string): string;
  /** `ws://127.0.0.1:port` + path. */
  ws(path?: string): string;
  /** GET /metrics as text. */
  metrics(): Promise<string>;
}

/**
 * Starts sockeye in this process.
 *
 * @param env Settings as environment variables; PORT and HOST default to a free loopback port.
 * @returns The server; `await using` drains it at scope end.
 */
export async function startTestServer(
  env: Record<string, string> = {},
): Promise<TestServer> {
  const settings = parseSettings({ PORT: "0", HOST: "127.0.0.1", ...env });
  const server = await startServer(settings);
  const base = `127.0.0.1:${server.port}`;
  return {
    server,
    port: server.port,
    http: (path) => `http://${base}${path}`,
    ws: (path = "/ws/chat/") => `ws://${base}${path}`,
    async metrics() {
      const res = await fetch(`http://${base}/metrics`);
      return await res.text();
    },
    async [Symbol.asyncDispose]() {
      await server.drain("test end");
    },
  };
}

/** A WebSocket client that queues frames for `next()`. */
export class TestClient implements AsyncDisposable {
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  /** Every text frame received, heartbeats included. */
  readonly received: string[] = [];
  #queue: string[] = [];
  #waiter: (() => void) | undefined;
  #closeEvent: CloseEvent | undefined;

  /**
   * @param url WebSocket URL.
   * @param protocols Subprotocols to ask for.
   */
  constructor(url: string, protocols?: string | string[]) {
    this.ws = new WebSocket(url, protocols);
    const opened = Promise.withResolvers<void>();
    const closed = Promise.withResolvers<CloseEvent>();
    this.opened = opened.promise;
    this.closed = closed.promise;
    this.ws.onopen = () => opened.resolve();
    this.ws.onerror = () =>
      opened.reject(new Error(`WebSocket to ${url} failed`));
    this.ws.onclose = (e) => {
      this.#closeEvent = e;
      closed.resolve(e);
      this.#waiter?.();
    };
    this.ws.onmessage = (e) => {
      const text = typeof e.data === "string" ? e.data : "<binary>";
      this.received.push(text);
      this.#queue.push(text);
      this.#waiter?.();
    };
    this.opened.catch(() => {});
  }

  /**
   * Opens a client and waits for the handshake.
   *
   * @param url WebSocket URL.
   * @param protocols Subprotocols to ask for.
   */
  static async open(
    url: string,
    protocols?: string | string[],
  ): Promise<TestClient> {
    const client = new TestClient(url, protocols);
    await within(client.opened, `open ${url}`);
    return client;
  }

  /**
   * The next text frame.
   *
   * @param heartbeats Also return `{"ts": ...}` frames.
   * @throws When the socket closes first or nothing arrives in time.
   */
  async next(heartbeats = false): Promise<string> {
    const deadline = performance.now() + WAIT_MS;
    while (true) {
      while (this.#queue.length > 0) {
        const frame = this.#queue.shift()!;
        if (heartbeats || !frame.startsWith('{"ts": ')) return frame;
      }
      if (this.ws.readyState === WebSocket.CLOSED) {
        const e = this.#closeEvent;
        throw new Error(
          `Socket closed while waiting for a frame (${e?.code} ${e?.reason})`,
        );
      }
      const arrived = new Promise<void>((r) => this.#waiter = r);
      await within(arrived, "a frame", deadline - performance.now());
    }
  }

  /**
   * Sends text and returns the next non-heartbeat frame.
   *
   * @param text Frame to send.
   */
  async ask(text: string): Promise<string> {
    this.ws.send(text);
    return await this.next();
  }

  /** Closes with 1000 and waits for the close handshake. */
  async close(): Promise<CloseEvent> {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    return await within(this.closed, "close handshake");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.ws.readyState === WebSocket.CONNECTING) {
      await this.opened.catch(() => {});
    }
    await this.close();
  }
}

/** The answer to a raw upgrade request. */
export interface RawUpgrade extends Disposable {
  readonly status: number;
  /** Lower-case header names. */
  readonly headers: Record<string, string>;
  readonly conn: Deno.Conn;
  /**
   * Sends one masked text frame (payload under 126 bytes), as RFC 6455 §5.3
   * requires of clients.
   */
  sendText(text: string): Promise<number>;
  /**
   * Sends one frame of any size exactly as given, rule-breaking ones too.
   *
   * @param head First byte: FIN, RSV1-3 and the opcode (0x81 is a final text frame).
   * @param payload The payload, masked with a random key unless `masked` is false.
   */
  sendFrame(
    head: number,
    payload: Uint8Array,
    options?: { masked?: boolean },
  ): Promise<void>;
  /**
   * Reads frames until a close frame arrives, answering nothing (no pongs).
   *
   * @returns The close code and the opcodes seen before it.
   */
  readUntilClose(): Promise<{ code: number; opcodes: number[] }>;
}

/**
 * Sends a hand-written HTTP/1.1 upgrade request, to read the 101's headers
 * and to play a client that never answers pings.
 *
 * @param port Server port on 127.0.0.1.
 * @param path Request target, e.g. `/ws/chat/?session_uuid=abc`.
 * @param headers Extra request headers.
 */
export async function rawUpgrade(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<RawUpgrade> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const lines = [
    `GET ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  await conn.write(new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n"));
  let buffer = new Uint8Array(0);
  const read = async () => {
    const chunk = new Uint8Array(16384);
    const n = await conn.read(chunk);
    if (n === null) return false;
    const next = new Uint8Array(buffer.length + n);
    next.set(buffer);
    next.set(chunk.subarray(0, n), buffer.length);
    buffer = next;
    return true;
  };
  let end = -1;
  while (end < 0) {
    if (!await within(read(), "upgrade response")) break;
    end = new TextDecoder().decode(buffer).indexOf("\r\n\r\n");
  }
  const head = new TextDecoder().decode(buffer.subarray(0, end));
  buffer = buffer.slice(end + 4);
  const [statusLine = "", ...headerLines] = head.split("\r\n");
  const parsed: Record<string, string> = {};
  for (const line of headerLines) {
    const i = line.indexOf(":");
    parsed[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return {
    status: Number(statusLine.split(" ")[1]),
    headers: parsed,
    conn,
    sendText(text: string) {
      const payload = new TextEncoder().encode(text);
      const mask = crypto.getRandomValues(new Uint8Array(4));
      const frame = new Uint8Array(6 + payload.length);
      frame[0] = 0x81;
      frame[1] = 0x80 | payload.length;
      frame.set(mask, 2);
      payload.forEach((b, i) => frame[6 + i] = b ^ mask[i % 4]!);
      return conn.write(frame);
    },
    async sendFrame(head, payload, { masked = true } = {}) {
      const size = payload.length;
      const ext = size < 126 ? 0 : size < 65536 ? 2 : 8;
      const frame = new Uint8Array(2 + ext + (masked ? 4 : 0) + size);
      const view = new DataView(frame.buffer);
      frame[0] = head;
      frame[1] = (masked ? 0x80 : 0) |
        (ext === 0 ? size : ext === 2 ? 126 : 127);
      if (ext === 2) view.setUint16(2, size);
      if (ext === 8) view.setBigUint64(2, BigInt(size));
      let off = 2 + ext;
      if (masked) {
        const mask = crypto.getRandomValues(new Uint8Array(4));
        frame.set(mask, off);
        off += 4;
        for (let i = 0; i < size; i++) {
          frame[off + i] = payload[i]! ^ mask[i % 4]!;
        }
      } else {
        frame.set(payload, off);
      }
      for (let done = 0; done < frame.length;) {
        done += await conn.write(frame.subarray(done));
      }
    },
    async readUntilClose() {
      const opcodes: number[] = [];
      while (true) {
        while (buffer.length >= 2) {
          const opcode = buffer[0]! & 0x0f;
          let len = buffer[1]! & 0x7f;
          let off = 2;
          if (len === 126) {
            len = (buffer[2]! << 8) | buffer[3]!;
            off = 4;
          }
          if (buffer.length < off + len) break;
          const payload = buffer.subarray(off, off + len);
          buffer = buffer.slice(off + len);
          if (opcode === 0x8) {
            return { code: (payload[0]! << 8) | payload[1]!, opcodes };
          }
          opcodes.push(opcode);
        }
        if (!await within(read(), "a frame")) {
          throw new Error("Connection ended without a close frame");
        }
      }
    },
    [Symbol.dispose]() {
      try {
        conn.close();
      } catch { /* already closed */ }
    },
  };
}

/** A sockeye subprocess whose stdout lines are collected. */
export interface ServerProcess extends AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly port: number;
  /** Every stdout line so far. */
  readonly lines: string[];
  /** Everything written to stderr so far. */
  stderr(): string;
  /** Waits for a stdout line matching `predicate`. */
  waitForLine(
    predicate: (line: Record<string, unknown>) => boolean,
    what: string,
  ): Promise<Record<string, unknown>>;
  /** Resolves with the exit status once the process ends. */
  readonly status: Promise<Deno.CommandStatus>;
}

/** Options for {@link spawnServer}. */
export interface SpawnOptions {
  /** Runs the server under `ulimit -n` this many open files. */
  readonly maxFds?: number;
  /** Working directory of the server; the test process's by default. */
  readonly cwd?: string;
}

/**
 * Runs `main.ts serve` as a subprocess on a free port and waits until it
 * logs that it is ready.
 *
 * @param env Settings; PORT defaults to 0 (the ready line names the port).
 * @param options Process limits.
 */
export async function spawnServer(
  env: Record<string, string> = {},
  options: SpawnOptions = {},
): Promise<ServerProcess> {
  const command = [DENO, "run", "-A", `${ROOT}main.ts`, "serve"];
  const child = new Deno.Command(options.maxFds ? "sh" : DENO, {
    args: options.maxFds
      ? ["-c", `ulimit -n ${options.maxFds} && exec "$@"`, "sh", ...command]
      : command.slice(1),
    env: { PORT: "0", HOST: "127.0.0.1", NO_COLOR: "1", ...env },
    cwd: options.cwd,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const lines: string[] = [];
  let stderrText = "";
  let notify: (() => void) | undefined;
  const pump = (async () => {
    let rest = "";
    for await (
      const chunk of child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      rest += chunk;
      let nl;
      while ((nl = rest.indexOf("\n")) >= 0) {
        lines.push(rest.slice(0, nl));
        rest = rest.slice(nl + 1);
      }
      notify?.();
    }
    if (rest) lines.push(rest);
    notify?.();
  })();
  const errPump = (async () => {
    for await (
      const chunk of child.stderr.pipeThrough(new TextDecoderStream())
    ) stderrText += chunk;
  })();
  const status = (async () => {
    const s = await child.status;
    await pump;
    await errPump;
    notify?.();
    return s;
  })();
  let exited = false;
  status.then(() => exited = true);

  const waitForLine = async (
    predicate: (line: Record<string, unknown>) => boolean,
    what: string,
  ) => {
    let seen = 0;
    const deadline = performance.now() + WAIT_MS;
    while (true) {
      for (; seen < lines.length; seen++) {
        try {
          const parsed = JSON.parse(lines[seen]!);
          if (predicate(parsed)) return parsed;
        } catch { /* not JSON: the log test reports it */ }
      }
      if (exited) {
        throw new Error(
          `Server exited before logging ${what}; stderr: ${stderrText}`,
        );
      }
      await within(
        new Promise<void>((r) => notify = r),
        what,
        Math.max(1, deadline - performance.now()),
      );
    }
  };

  let ready;
  try {
    ready = await waitForLine(
      (l) => typeof l.startup_seconds === "number",
      "the ready line",
    );
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await status;
    throw new Error(
      `${(error as Error).message}; stdout: ${
        lines.join("\n")
      }; stderr: ${stderrText}`,
    );
  }
  return {
    child,
    port: ready.port as number,
    lines,
    stderr: () => stderrText,
    waitForLine,
    status,
    async [Symbol.asyncDispose]() {
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }
      await status;
    },
  };
}

/**
 * Sums the samples of one metric whose labels include `match`.
 *
 * @param text `/metrics` body.
 * @param name Sample name, e.g. `websocket_errors_total`.
 * @param match Labels that must be present with these values.
 */
export function metricValue(
  text: string,
  name: string,
  match: Record<string, string> = {},
): number {
  return parsePrometheusText(text).samples
    .filter((s) =>
      s.name === name &&
      Object.entries(match).every(([k, v]) => s.labels[k] === v)
    )
    .reduce((sum, s) => sum + s.value, 0);
}

/** A redis-server of the test's own, on a free loopback port. */
export interface TestRedis extends AsyncDisposable {
  readonly port: number;
  readonly url: string;
  /** Kills the server with SIGKILL (its append-only file keeps acknowledged writes). */
  kill(): Promise<void>;
  /** Stops the server with SIGTERM, as a restart by its supervisor does. */
  shutdown(): Promise<void>;
  /** Starts it again on the same port and data folder. */
  restart(): Promise<void>;
  /** Stops the process (SIGSTOP): it keeps its sockets but answers nothing. */
  pause(): void;
  /** Lets a paused process run again (SIGCONT). */
  resume(): void;
}

/** @returns A loopback port that was free a moment ago. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function waitForPort(port: number): Promise<void> {
  await until(async () => {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return true;
    } catch {
      return false;
    }
  }, `a listener on port ${port}`);
}

/**
 * Starts `redis-server` (from Debian's redis-server package) with its data
 * in a temporary folder and `appendfsync always`, so a kill loses nothing
 * that was acknowledged.
 */
export async function startRedis(): Promise<TestRedis> {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "sockeye-redis-" });
  let child: Deno.ChildProcess | undefined;
  const start = async () => {
    child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        dir,
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
      ],
      stdout: "null",
      stderr: "null",
      stdin: "null",
    }).spawn();
    await waitForPort(port);
  };
  let paused = false;
  const signal = (name: Deno.Signal) => {
    try {
      child?.kill(name);
    } catch { /* already gone */ }
  };
  const stop = async (name: Deno.Signal) => {
    if (!child) return;
    signal(name);
    // A stopped process handles SIGTERM only once it runs again.
    if (paused) signal("SIGCONT"), paused = false;
    await child.status;
    child = undefined;
  };
  await start();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill: () => stop("SIGKILL"),
    shutdown: () => stop("SIGTERM"),
    restart: start,
    pause() {
      signal("SIGSTOP");
      paused = true;
    },
    resume() {
      signal("SIGCONT");
      paused = false;
    },
    async [Symbol.asyncDispose]() {
      await stop("SIGTERM");
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Debian's nginx running the shipped `monitoring/nginx/nginx.conf`. */
export interface TestNginx extends AsyncDisposable {
  /** The proxy's loopback port. */
  readonly port: number;
  /** Its upstream file (the shipped `upstream.conf`'s place): the live color. */
  readonly upstreamFile: string;
  /** A shell command that reloads it (`nginx -s reload` with its files). */
  readonly reloadCommand: string;
}

/** Options for {@link startNginx}. */
export interface NginxOptions {
  /**
   * Requests in progress per client address (the shipped `limit_conn` is
   * 100): a load test plays thousands of clients from one address. The
   * workers' open-file limit is raised to match.
   */
  readonly perClientLimit?: number;
}

/**
 * Starts nginx with the shipped config on a free loopback port, its upstream
 * pointing at `upstreamPort`, its files in a temporary folder.
 *
 * @param upstreamPort The sockeye port behind the proxy.
 * @param options Changes to the shipped config.
 */
export async function startNginx(
  upstreamPort: number,
  options: NginxOptions = {},
): Promise<TestNginx> {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-nginx-" });
  const port = freePort();
  const shipped = await Deno.readTextFile(`${ROOT}monitoring/nginx/nginx.conf`);
  let conf = shipped
    .replace("/etc/nginx/sockeye/upstream.conf", `${dir}/upstream.conf`)
    .replace("listen 80;", `listen 127.0.0.1:${port};`)
    .replace("http {", `http {\n  access_log ${dir}/access.log;`);
  if (options.perClientLimit !== undefined) {
    const limit = /limit_conn per_client \d+;/;
    if (!limit.test(conf)) throw new Error("The shipped limit_conn moved");
    conf = conf.replace(
      limit,
      `limit_conn per_client ${options.perClientLimit};`,
    ).replace(
      // Two descriptors per proxied client, whatever the test's own limit.
      "worker_processes auto;",
      `worker_processes auto;\nworker_rlimit_nofile ${
        2 * options.perClientLimit + 1024
      };`,
    );
  }
  await Deno.writeTextFile(`${dir}/nginx.conf`, conf);
  await Deno.writeTextFile(
    `${dir}/upstream.conf`,
    `upstream sockeye_live {\n  server 127.0.0.1:${upstreamPort};\n}\n`,
  );
  const globals = `pid ${dir}/nginx.pid; error_log ${dir}/error.log;`;
  const child = new Deno.Command("nginx", {
    args: [
      "-p",
      dir,
      "-c",
      `${dir}/nginx.conf`,
      "-g",
      `${globals} daemon off;`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    await child.status;
    await Deno.remove(dir, { recursive: true });
  };
  try {
    await waitForPort(port);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    port,
    upstreamFile: `${dir}/upstream.conf`,
    reloadCommand:
      `nginx -p ${dir} -c ${dir}/nginx.conf -g '${globals}' -s reload`,
    [Symbol.asyncDispose]: stop,
  };
}

/**
 * A sockeye that a shell command starts in the background, as an operator's
 * start command would (`sockeye promote --start-cmd`); found by its pid file.
 */
export interface BackgroundServer extends AsyncDisposable {
  /** `… serve > LOG 2>&1 & echo $! > PIDFILE`, for `sh -c`. */
  readonly command: string;
  /** Its log lines so far. */
  lines(): Promise<string[]>;
  /** Its process id once the command ran, else `undefined`. */
  pid(): Promise<number | undefined>;
}

function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !==
      "Z";
  } catch {
    return false;
  }
}

/**
 * Prepares the command that starts `main.ts serve` in the background; the
 * process is stopped (SIGTERM, then SIGKILL after 10 s) at scope end.
 *
 * @param env Settings for it; give PORT to find it.
 */
export async function backgroundServer(
  env: Record<string, string>,
): Promise<BackgroundServer> {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-bg-" });
  const vars = Object.entries({ HOST: "127.0.0.1", NO_COLOR: "1", ...env })
    .map(([k, v]) => `${k}='${v}'`).join(" ");
  const pid = async () => {
    try {
      return Number((await Deno.readTextFile(`${dir}/pid`)).trim());
    } catch {
      return undefined;
    }
  };
  return {
    command: `${vars} ${DENO} run -A ${ROOT}main.ts serve > ${dir}/log 2>&1 ` +
      `< /dev/null & echo $! > ${dir}/pid`,
    pid,
    async lines() {
      try {
        return (await Deno.readTextFile(`${dir}/log`)).split("\n")
          .filter((l) => l !== "");
      } catch {
        return [];
      }
    },
    async [Symbol.asyncDispose]() {
      const p = await pid();
      if (p !== undefined && alive(p)) {
        Deno.kill(p, "SIGTERM");
        try {
          await until(() => !alive(p), `process ${p} to exit`);
        } catch {
          Deno.kill(p, "SIGKILL");
          await until(() => !alive(p), `process ${p} to die`);
        }
      }
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/**
 * A loopback port whose Redis Cluster bus port (port + 10000) was free a
 * moment ago too.
 *
 * @returns A port from 20000 to 45535.
 */
export function freeClusterPort(): number {
  for (let tries = 0; tries < 200; tries++) {
    const port = 20000 + Math.floor(Math.random() * 25536);
    const listeners: Deno.Listener[] = [];
    try {
      for (const p of [port, port + 10000]) {
        listeners.push(Deno.listen({ hostname: "127.0.0.1", port: p }));
      }
      return port;
    } catch {
      // taken: try another
    } finally {
      for (const l of listeners) l.close();
    }
  }
  throw new Error("No free port pair for a Redis Cluster node");
}

/**
 * Runs `redis-cli` against a loopback port.
 *
 * @param port The server's port.
 * @param args The command and its arguments.
 * @returns What it printed, trimmed.
 */
export async function redisCli(
  port: number,
  ...args: string[]
): Promise<string> {
  const out = await new Deno.Command("redis-cli", {
    args: ["-h", "127.0.0.1", "-p", String(port), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

/** A redis-server process of a test's own. */
interface Proc {
  readonly port: number;
  child: Deno.ChildProcess | undefined;
}

function spawnRedis(dir: string, port: number, extra: string[]): Proc {
  const child = new Deno.Command("redis-server", {
    args: [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--dir",
      dir,
      "--save",
      "",
      "--appendonly",
      "no",
      ...extra,
    ],
    stdout: "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
  return { port, child };
}

async function stopProc(proc: Proc, signal: Deno.Signal): Promise<void> {
  const child = proc.child;
  if (!child) return;
  proc.child = undefined;
  try {
    child.kill(signal);
  } catch { /* gone */ }
  await child.status;
}

/** A Redis Cluster of a test's own: masters with one replica each. */
export interface TestRedisCluster extends AsyncDisposable {
  /** Every node's port, masters first as created. */
  readonly ports: readonly number[];
  /** `127.0.0.1:port,…` of every node, for `REDIS_CLUSTER_NODES`. */
  readonly nodes: string;
  /** The master serving a key now, from `CLUSTER NODES`. */
  masterOf(key: string): Promise<number>;
  /** Every master's port now. */
  masters(): Promise<number[]>;
  /** The replica of the master on `port`. */
  replicaOf(port: number): Promise<number>;
  /** Kills a node with SIGKILL. */
  kill(port: number): Promise<void>;
  /** Starts a killed node again with its data: it rejoins as a replica. */
  restart(port: number): Promise<void>;
}

interface ClusterNode {
  readonly id: string;
  readonly port: number;
  readonly master: boolean;
  /** The master's id, for a replica. */
  readonly of: string;
  readonly slots: readonly [number, number][];
  readonly failed: boolean;
}

async function clusterNodes(port: number): Promise<ClusterNode[]> {
  const text = await redisCli(port, "cluster", "nodes");
  return text.split("\n").filter((l) => l.trim()).map((line) => {
    const f = line.split(" ");
    const flags = f[2]!.split(",");
    return {
      id: f[0]!,
      port: Number(f[1]!.split(/[:@]/)[1]),
      master: flags.includes("master"),
      of: f[3]!,
      failed: flags.some((x) => x === "fail" || x === "fail?"),
      slots: f.slice(8).filter((s) => /^\d/.test(s)).map((s) => {
        const [a, b] = s.split("-").map(Number);
        return [a!, b ?? a!] as [number, number];
      }),
    };
  });
}

/**
 * Starts a Redis Cluster from Debian's `redis-server` on loopback ports of
 * its own (`redis-cli --cluster create --cluster-replicas`), data in a
 * temporary folder, and waits until every node reports it healthy with
 * each replica in sync. A node is failed over after
 * `cluster-node-timeout` 1000 ms.
 *
 * @param masters How many masters.
 * @param replicas Replicas per master.
 */
export async function startRedisCluster(
  masters = 3,
  replicas = 1,
): Promise<TestRedisCluster> {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-cluster-" });
  const procs: Proc[] = [];
  const stop = async () => {
    await Promise.all(procs.map((p) => stopProc(p, "SIGKILL")));
    await Deno.remove(dir, { recursive: true });
  };
  const spawnNode = (port: number) =>
    spawnRedis(`${dir}/${port}`, port, [
      "--cluster-enabled",
      "yes",
      "--cluster-config-file",
      "nodes.conf",
      "--cluster-node-timeout",
      "1000",
    ]);
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const port = freeClusterPort();
      await Deno.mkdir(`${dir}/${port}`);
      procs.push(spawnNode(port));
    }
    for (const p of procs) await waitForPort(p.port);
    const created = await new Deno.Command("redis-cli", {
      args: [
        "--cluster",
        "create",
        ...procs.map((p) => `127.0.0.1:${p.port}`),
        "--cluster-replicas",
        String(replicas),
        "--cluster-yes",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!created.success) {
      throw new Error(
        `redis-cli --cluster create failed: ${
          new TextDecoder().decode(created.stdout)
        }`,
      );
    }
    await until(
      async () => {
        for (const p of procs) {
          const info = await redisCli(p.port, "cluster", "info");
          if (!info.includes("cluster_state:ok")) return false;
          const known = await clusterNodes(p.port);
          if (known.length !== procs.length) return false;
          const role = await redisCli(p.port, "info", "replication");
          if (role.includes("role:slave") && !role.includes("link_status:up")) {
            return false;
          }
          // A master's writes are acknowledged by its replicas (WAIT).
          if (
            replicas > 0 && role.includes("role:master") &&
            await redisCli(p.port, "wait", String(replicas), "100") !==
              String(replicas)
          ) return false;
        }
        return true;
      },
      "a healthy Redis Cluster",
      { timeoutMs: 20_000, intervalMs: 100 },
    );
  } catch (error) {
    await stop();
    throw error;
  }
  const live = () => procs.find((p) => p.child)!.port;
  return {
    ports: procs.map((p) => p.port),
    nodes: procs.map((p) => `127.0.0.1:${p.port}`).join(","),
    async masterOf(key) {
      const slot = Number(await redisCli(live(), "cluster", "keyslot", key));
      const nodes = await clusterNodes(live());
      const owner = nodes.find((n) =>
        n.master && !n.failed &&
        n.slots.some(([a, b]) => slot >= a && slot <= b)
      );
      if (!owner) throw new Error(`No master serves slot ${slot}`);
      return owner.port;
    },
    async masters() {
      return (await clusterNodes(live())).filter((n) =>
        n.master && !n.failed && n.slots.length > 0
      ).map((n) => n.port);
    },
    async replicaOf(port) {
      const nodes = await clusterNodes(live());
      const master = nodes.find((n) => n.port === port)!;
      const replica = nodes.find((n) => n.of === master.id && !n.failed);
      if (!replica) throw new Error(`No replica of ${port}`);
      return replica.port;
    },
    async kill(port) {
      await stopProc(procs.find((p) => p.port === port)!, "SIGKILL");
    },
    async restart(port) {
      const i = procs.findIndex((p) => p.port === port);
      procs[i] = spawnNode(port);
      await waitForPort(port);
    },
    [Symbol.asyncDispose]: stop,
  };
}

/** A Redis master, its replicas and three Sentinels of a test's own. */
export interface TestRedisSentinel extends AsyncDisposable {
  /** `127.0.0.1:port,…` of the Sentinels, for `REDIS_SENTINELS`. */
  readonly sentinels: string;
  /** The master's name: `mymaster`. */
  readonly name: string;
  /** The port of the master the Sentinels name now. */
  master(): Promise<number>;
  /** Asks a Sentinel for a failover and waits until the replica is master. */
  failover(): Promise<number>;
}

/**
 * Starts one master, its replicas and three Sentinels (`redis-server
 * --sentinel`, Debian's redis-server) on loopback ports of their own, and
 * waits until every Sentinel knows the replicas and the other Sentinels.
 *
 * @param replicas How many replicas.
 */
export async function startRedisSentinel(
  replicas = 1,
): Promise<TestRedisSentinel> {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-sentinel-" });
  const procs: Proc[] = [];
  const stop = async () => {
    await Promise.all(procs.map((p) => stopProc(p, "SIGKILL")));
    await Deno.remove(dir, { recursive: true });
  };
  const name = "mymaster";
  const sentinelPorts: number[] = [];
  try {
    const masterPort = freePort();
    await Deno.mkdir(`${dir}/${masterPort}`);
    procs.push(spawnRedis(`${dir}/${masterPort}`, masterPort, []));
    for (let i = 0; i < replicas; i++) {
      const port = freePort();
      await Deno.mkdir(`${dir}/${port}`);
      procs.push(
        spawnRedis(`${dir}/${port}`, port, [
          "--replicaof",
          "127.0.0.1",
          String(masterPort),
        ]),
      );
    }
    for (const p of procs) await waitForPort(p.port);
    await until(
      async () =>
        await redisCli(masterPort, "wait", String(replicas), "100") ===
          String(replicas),
      "the replicas in sync",
    );
    for (let i = 0; i < 3; i++) {
      const port = freePort();
      sentinelPorts.push(port);
      const conf = `${dir}/sentinel-${port}.conf`;
      await Deno.writeTextFile(
        conf,
        [
          `port ${port}`,
          "bind 127.0.0.1",
          `dir ${dir}`,
          `sentinel monitor ${name} 127.0.0.1 ${masterPort} 2`,
          `sentinel down-after-milliseconds ${name} 1000`,
          `sentinel failover-timeout ${name} 10000`,
          "",
        ].join("\n"),
      );
      const child = new Deno.Command("redis-server", {
        args: [conf, "--sentinel"],
        stdout: "null",
        stderr: "null",
        stdin: "null",
      }).spawn();
      procs.push({ port, child });
    }
    for (const port of sentinelPorts) await waitForPort(port);
    await until(
      async () => {
        for (const port of sentinelPorts) {
          const master = await redisCli(port, "sentinel", "master", name);
          const fields = master.split("\n");
          const at = (k: string) => fields[fields.indexOf(k) + 1];
          if (
            at("num-slaves") !== String(replicas) ||
            at("num-other-sentinels") !== "2"
          ) {
            return false;
          }
        }
        return true;
      },
      "Sentinels that know the replica and each other",
      {
        timeoutMs: 20_000,
        intervalMs: 100,
      },
    );
  } catch (error) {
    await stop();
    throw error;
  }
  const master = async () => {
    const addr = await redisCli(
      sentinelPorts[0]!,
      "sentinel",
      "get-master-addr-by-name",
      name,
    );
    return Number(addr.split("\n")[1]);
  };
  return {
    sentinels: sentinelPorts.map((p) => `127.0.0.1:${p}`).join(","),
    name,
    master,
    async failover() {
      const before = await master();
      const reply = await redisCli(
        sentinelPorts[0]!,
        "sentinel",
        "failover",
        name,
      );
      if (reply !== "OK") throw new Error(`SENTINEL FAILOVER: ${reply}`);
      return await until(
        async () => {
          const now = await master();
          const promoted = now !== before &&
            (await redisCli(now, "role")).startsWith("master");
          return promoted ? now : undefined;
        },
        "the replica promoted",
        { timeoutMs: 20_000, intervalMs: 50 },
      );
    },
    [Symbol.asyncDispose]: stop,
  };
}

/**
 * Reads `{"count": n}`.
 *
 * @param frame A reply frame.
 * @returns n.
 * @throws When the frame is not a count.
 */
export function countOf(frame: string): number {
  const m = frame.match(/^\{"count": (\d+)\}$/);
  if (!m) throw new Error(`Not a count frame: ${frame}`);
  return Number(m[1]);
}

/**
 * A client that streams frames in a closed loop (send, wait for the answer)
 * and checks every count against the last one it was acknowledged. After an
 * `unavailable` answer it retries the next frame after a short backoff, as
 * `"retry": true` invites.
 */
export class Streamer {
  readonly id: string;
  readonly client: TestClient;
  /** Last count acknowledged with `{"count": n}`. */
  last = 0;
  /** `{"count": n}` answers received. */
  acked = 0;
  /** `unavailable` answers received. */
  unavailable = 0;
  /** Numbers skipped: n above last + 1. */
  skipped = 0;
  /** Counts at or below one already acknowledged. */
  repeated = 0;
  /** Longest time between two acknowledged counts, in ms. */
  longestPauseMs = 0;
  /** What ended the loop early (the socket closed), if anything. */
  error: Error | undefined;
  #lastAckAt = performance.now();
  #stop = false;
  /** Settles when the loop ends (after {@link stop}, or on a failure). */
  readonly done: Promise<void>;

  /**
   * Starts streaming at once.
   *
   * @param id The session id.
   * @param client An open client on that session.
   */
  constructor(id: string, client: TestClient) {
    this.id = id;
    this.client = client;
    this.done = this.#run().catch((error) => {
      this.error = error;
    });
  }

  async #run(): Promise<void> {
    while (!this.#stop) {
      const frame = await this.client.ask("m");
      if (frame === '{"error": "unavailable", "retry": true}') {
        this.unavailable++;
        await new Promise((r) => setTimeout(r, 25)); // the client's backoff
        continue;
      }
      const n = countOf(frame);
      if (n > this.last + 1) this.skipped += n - this.last - 1;
      if (n <= this.last) this.repeated++;
      this.last = Math.max(this.last, n);
      this.acked++;
      const now = performance.now();
      this.longestPauseMs = Math.max(
        this.longestPauseMs,
        now - this.#lastAckAt,
      );
      this.#lastAckAt = now;
    }
  }

  /** Ends the loop after the frame in flight and closes the socket. */
  async stop(): Promise<void> {
    this.#stop = true;
    await this.done;
    await this.client.close();
  }
}

/**
 * Opens `n` clients on sessions `<prefix>-0` … and starts each streaming.
 *
 * @param port The server's loopback port.
 * @param prefix Session id prefix.
 * @param n How many.
 * @returns The streamers, streaming.
 */
export async function startStreamers(
  port: number,
  prefix: string,
  n: number,
): Promise<Streamer[]> {
  return await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const id = `${prefix}-${i}`;
      const client = await TestClient.open(
        `ws://127.0.0.1:${port}/ws/chat/?session_uuid=${id}`,
      );
      return new Streamer(id, client);
    }),
  );
}

/** What {@link tally} counts. */
export interface Tally {
  readonly clients: number;
  readonly clientsSkipping: number;
  readonly numbersSkipped: number;
  readonly clientsRepeating: number;
  readonly clientsAnsweredUnavailable: number;
  /** Streamers whose loop ended early, and why the first did. */
  readonly clientsFailed: number;
  readonly firstFailure: string | undefined;
}

/**
 * Every streamer's figures, for assertion messages.
 *
 * @param streams The streamers.
 * @returns How many clients skipped, repeated or were answered unavailable.
 */
export function tally(streams: Streamer[]): Tally {
  const with_ = (f: (s: Streamer) => number) =>
    streams.filter((s) => f(s) > 0).length;
  return {
    clients: streams.length,
    clientsSkipping: with_((s) => s.skipped),
    numbersSkipped: streams.reduce((t, s) => t + s.skipped, 0),
    clientsRepeating: with_((s) => s.repeated),
    clientsAnsweredUnavailable: with_((s) => s.unavailable),
    clientsFailed: streams.filter((s) => s.error).length,
    firstFailure: streams.find((s) => s.error)?.error?.message,
  };
}
