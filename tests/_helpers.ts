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
        throw new Error("Socket closed while waiting for a frame");
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
