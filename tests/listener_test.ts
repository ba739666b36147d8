/**
 * Never die of descriptors, nor of memory: a supervised listener that comes
 * back after EMFILE, `MAX_CONNECTIONS` derived from the open-file limit, and
 * the process memory guard. Subprocesses under a low `ulimit -n`, real
 * sockets.
 */
import assert from "node:assert/strict";
import { MemoryGuard } from "../src/memory_guard.ts";
import { connectionLimit, memoryLimit } from "../src/limits.ts";
import { parseSettings, SettingsError } from "../src/settings.ts";
import {
  metricValue,
  rawUpgrade,
  type ServerProcess,
  spawnServer,
  startNginx,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

/** One HTTP/1.1 connection kept open across requests (keep-alive). */
class KeepAlive implements Disposable {
  #buffer = new Uint8Array(0);
  private constructor(readonly conn: Deno.Conn) {}

  static async open(port: number): Promise<KeepAlive> {
    return new KeepAlive(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** GET `path` on this connection; the response needs a Content-Length. */
  async get(path: string): Promise<{ status: number; body: string }> {
    await this.conn.write(
      new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: test\r\n\r\n`),
    );
    const decoder = new TextDecoder();
    let end;
    while ((end = decoder.decode(this.#buffer).indexOf("\r\n\r\n")) < 0) {
      await this.#read();
    }
    const head = decoder.decode(this.#buffer.subarray(0, end));
    const length = Number(head.match(/^content-length: *(\d+)/im)?.[1]);
    assert.ok(Number.isInteger(length), `no Content-Length in ${head}`);
    const start = new TextEncoder().encode(head).length + 4;
    while (this.#buffer.length < start + length) await this.#read();
    const body = decoder.decode(this.#buffer.subarray(start, start + length));
    this.#buffer = this.#buffer.slice(start + length);
    return { status: Number(head.split(" ")[1]), body };
  }

  async #read(): Promise<void> {
    const chunk = new Uint8Array(65536);
    const n = await within(this.conn.read(chunk), "a response");
    if (n === null) throw new Error("Connection closed by the server");
    const next = new Uint8Array(this.#buffer.length + n);
    next.set(this.#buffer);
    next.set(chunk.subarray(0, n), this.#buffer.length);
    this.#buffer = next;
  }

  [Symbol.dispose](): void {
    this.conn.close();
  }
}

function linesMatching(srv: ServerProcess, prefix: string): unknown[] {
  return srv.lines.map((l) => JSON.parse(l)).filter((l) =>
    String(l.message).startsWith(prefix)
  );
}

async function readyz(port: number): Promise<number> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    await res.body?.cancel();
    return res.status;
  } catch {
    return 0; // no listener
  }
}

Deno.test("EMFILE: the process stays up, fails readiness, keeps its sockets and listens again", async () => {
  await using srv = await spawnServer({}, { maxFds: 160 });
  await using early = await TestClient.open(
    `ws://127.0.0.1:${srv.port}/ws/chat/`,
  );
  assert.equal(await early.ask("a"), '{"count": 1}');
  // A probe connection opened before the flood stays served by the old listener.
  using probe = await KeepAlive.open(srv.port);
  assert.equal((await probe.get("/readyz")).status, 200);

  // Silent TCP connections (no request) until the accept loop runs dry.
  const silent: Deno.Conn[] = [];
  try {
    const stopped = () => linesMatching(srv, "Listener stopped").length > 0;
    for (let i = 0; i < 400 && !stopped(); i++) {
      try {
        silent.push(
          await Deno.connect({ hostname: "127.0.0.1", port: srv.port }),
        );
      } catch {
        break; // refused: the listener is gone
      }
    }
    const line = await srv.waitForLine(
      (l) => String(l.message).startsWith("Listener stopped"),
      "the listener error line",
    );
    assert.equal(line.level, "error");
    assert.match(
      String(line.message),
      /^Listener stopped: Too many open files/,
    );
    assert.equal(line.reason, "emfile");

    const down = await probe.get("/readyz");
    assert.equal(down.status, 503);
    const body = JSON.parse(down.body);
    assert.equal(body.status, "not_ready");
    assert.match(body.checks.listener, /^error: Too many open files/);
    assert.equal(body.checks.memory, "ok");
    const metrics = (await probe.get("/metrics")).body;
    assert.equal(
      metricValue(metrics, "http_listener_errors_total", { reason: "emfile" }),
      1,
    );
    assert.equal(metricValue(metrics, "http_listener_up"), 0);
    assert.equal(metricValue(metrics, "app_ready"), 0);
    assert.equal(await early.ask("b"), '{"count": 2}');
    assert.equal(await readyz(srv.port), 0, "no listener during the episode");
  } finally {
    for (const conn of silent) conn.close();
  }

  // Descriptors free up: it listens again by itself.
  await until(async () => await readyz(srv.port) === 200, "readiness back");
  const restored = await srv.waitForLine(
    (l) => String(l.message).startsWith("Listener restored"),
    "the listener restored line",
  );
  assert.equal(restored.level, "info");
  assert.equal(typeof restored.down_seconds, "number");
  await using late = await TestClient.open(
    `ws://127.0.0.1:${srv.port}/ws/chat/`,
  );
  assert.equal(await late.ask("x"), '{"count": 1}');
  assert.equal(await early.ask("c"), '{"count": 3}');
  assert.equal(linesMatching(srv, "Listener stopped").length, 1);
  assert.equal(linesMatching(srv, "Listener restored").length, 1);
  const after = await (await fetch(`http://127.0.0.1:${srv.port}/metrics`))
    .text();
  assert.equal(
    metricValue(after, "http_listener_errors_total", { reason: "emfile" }),
    1,
  );
  assert.equal(metricValue(after, "http_listener_up"), 1);

  // The drain reaches sockets of the failed listener and of the new one.
  srv.child.kill("SIGTERM");
  assert.equal((await within(early.closed, "early close")).code, 1001);
  assert.equal((await within(late.closed, "late close")).code, 1001);
  assert.equal((await within(srv.status, "exit")).code, 0);
});

Deno.test("a flood that keeps refilling the descriptor table is one episode: one error line, every failure counted", async () => {
  await using srv = await spawnServer({}, { maxFds: 160 });
  await using client = await TestClient.open(
    `ws://127.0.0.1:${srv.port}/ws/chat/`,
  );
  // Holds connections; whenever refused, lets ten go and tries again, so
  // every re-listen meets a full table again.
  const held: Deno.Conn[] = [];
  try {
    const end = performance.now() + 3000;
    while (performance.now() < end) {
      try {
        held.push(
          await Deno.connect({ hostname: "127.0.0.1", port: srv.port }),
        );
      } catch {
        for (const conn of held.splice(0, 10)) conn.close();
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    assert.equal(await client.ask("still counting"), '{"count": 1}');
  } finally {
    for (const conn of held) conn.close();
  }
  const restored = await srv.waitForLine(
    (l) => String(l.message).startsWith("Listener restored"),
    "the end of the episode",
  );
  const failures = restored.failures as number;
  assert.ok(failures >= 2, `${failures} failures: the flood did not refill`);
  const metrics = await (await fetch(`http://127.0.0.1:${srv.port}/metrics`))
    .text();
  assert.equal(metricValue(metrics, "http_listener_errors_total"), failures);
  assert.equal(linesMatching(srv, "Listener stopped").length, 1);
  assert.equal(linesMatching(srv, "Listener restored").length, 1);
});

Deno.test("MAX_CONNECTIONS derived from a low open-file limit answers 503 before EMFILE", async () => {
  await using srv = await spawnServer({}, { maxFds: 128 });
  const ready = await srv.waitForLine(
    (l) => typeof l.startup_seconds === "number",
    "the ready line",
  );
  // 128 − max(64, 5 %) = 64.
  assert.equal(ready.max_fds, 128);
  assert.equal(ready.max_connections, 64);
  assert.equal(ready.max_connections_source, "open_file_limit");
  const status = await (await fetch(`http://127.0.0.1:${srv.port}/status`))
    .json();
  assert.equal(status.limits.max_connections, 64);
  assert.equal(status.limits.max_fds, 128);

  const clients: TestClient[] = [];
  try {
    for (let i = 0; i < 64; i++) {
      clients.push(
        await TestClient.open(`ws://127.0.0.1:${srv.port}/ws/chat/`),
      );
    }
    using refused = await rawUpgrade(srv.port, "/ws/chat/");
    assert.equal(refused.status, 503);
    assert.equal(refused.headers["retry-after"], "1");
    const metrics = await (await fetch(`http://127.0.0.1:${srv.port}/metrics`))
      .text();
    assert.equal(
      metricValue(metrics, "websocket_errors_total", {
        error_type: "max_connections",
      }),
      1,
    );
    assert.equal(metricValue(metrics, "websocket_connections_active"), 64);
    const open = metricValue(metrics, "process_open_fds");
    assert.ok(open > 64 && open < 128, `${open} descriptors open`);
    assert.equal(await readyz(srv.port), 200);
    assert.equal(linesMatching(srv, "Listener stopped").length, 0);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
});

Deno.test("memory guard: above the threshold readiness fails and upgrades get 503 memory_pressure", async () => {
  // Any Deno process is resident well above 32 MiB.
  const limit = 32 * 1024 * 1024;
  await using srv = await spawnServer({
    MEMORY_LIMIT_BYTES: String(limit),
    MEMORY_GUARD_RATIO: "1",
  });
  const warning = await srv.waitForLine(
    (l) => String(l.message).startsWith("Memory pressure: refusing"),
    "the memory pressure line",
  );
  assert.equal(warning.level, "warning");
  assert.equal(warning.threshold_bytes, limit);
  assert.ok((warning.rss_bytes as number) > limit);

  const res = await fetch(`http://127.0.0.1:${srv.port}/readyz`);
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.equal(body.status, "not_ready");
  assert.match(
    body.checks.process_memory,
    /^error: rss [\d.]+ MiB above 32 MiB \(100 % of the 32 MiB limit\)$/,
  );
  const health = await fetch(`http://127.0.0.1:${srv.port}/healthz`);
  await health.body?.cancel();
  assert.equal(health.status, 200);

  using refused = await rawUpgrade(srv.port, "/ws/chat/");
  assert.equal(refused.status, 503);
  assert.equal(refused.headers["retry-after"], "5");
  const metrics = await (await fetch(`http://127.0.0.1:${srv.port}/metrics`))
    .text();
  assert.equal(
    metricValue(metrics, "websocket_errors_total", {
      error_type: "memory_pressure",
    }),
    1,
  );
  assert.equal(metricValue(metrics, "app_memory_limit_bytes"), limit);
  assert.equal(metricValue(metrics, "app_ready"), 0);
  assert.equal(linesMatching(srv, "Memory pressure: refusing").length, 1);
});

Deno.test("memory guard: under a generous limit the server is ready and accepts sockets", async () => {
  const limit = 64 * 1024 ** 3;
  await using srv = await spawnServer({ MEMORY_LIMIT_BYTES: String(limit) });
  const res = await fetch(`http://127.0.0.1:${srv.port}/readyz`);
  assert.equal(res.status, 200);
  assert.deepEqual((await res.json()).checks, { memory: "ok" });
  await using client = await TestClient.open(
    `ws://127.0.0.1:${srv.port}/ws/chat/`,
  );
  assert.equal(await client.ask("a"), '{"count": 1}');
  const status = await (await fetch(`http://127.0.0.1:${srv.port}/status`))
    .json();
  assert.equal(status.limits.memory_limit_bytes, limit);
  assert.equal(status.limits.memory_guard_ratio, 0.85);
  const metrics = await (await fetch(`http://127.0.0.1:${srv.port}/metrics`))
    .text();
  assert.equal(metricValue(metrics, "app_memory_limit_bytes"), limit);
  assert.equal(
    metricValue(metrics, "websocket_errors_total", {
      error_type: "memory_pressure",
    }),
    0,
  );
  assert.equal(linesMatching(srv, "Memory pressure").length, 0);
});

Deno.test("MemoryGuard reports pressure once and relief once, below 95 % of the threshold", () => {
  const events: string[] = [];
  let rss = 0;
  const guard = new MemoryGuard({
    limitBytes: 1000,
    ratio: 0.8,
    readRss: () => rss,
  }, {
    onPressure: (r) => events.push(`pressure ${r}`),
    onRelief: (r) => events.push(`relief ${r}`),
  });
  assert.equal(guard.thresholdBytes, 800);
  for (const reading of [500, 800, 801, 900, 790, 761, 759, 700, 801]) {
    rss = reading;
    guard.check();
  }
  assert.deepEqual(events, ["pressure 801", "relief 759", "pressure 801"]);
  assert.equal(guard.underPressure, true);
});

Deno.test("MAX_CONNECTIONS and the memory limit: explicit settings win, 0 means unlimited or off", () => {
  assert.deepEqual(connectionLimit(undefined, 1024), {
    maxConnections: 960,
    source: "open_file_limit",
  });
  assert.deepEqual(connectionLimit(undefined, 20000), {
    maxConnections: 19000,
    source: "open_file_limit",
  });
  assert.equal(connectionLimit(undefined, 40).maxConnections, 1);
  assert.deepEqual(connectionLimit(0, 1024), {
    maxConnections: 0,
    source: "MAX_CONNECTIONS",
  });
  assert.deepEqual(connectionLimit(undefined, undefined), {
    maxConnections: 0,
    source: "unknown",
  });
  assert.equal(parseSettings({}).maxConnections, undefined);
  assert.equal(parseSettings({ MAX_CONNECTIONS: "0" }).maxConnections, 0);

  assert.deepEqual(memoryLimit(undefined, 512), {
    bytes: 512,
    source: "cgroup",
  });
  assert.deepEqual(memoryLimit(256, 512), {
    bytes: 256,
    source: "MEMORY_LIMIT_BYTES",
  });
  assert.equal(memoryLimit(0, 512), undefined);
  assert.equal(memoryLimit(undefined, undefined), undefined);
  assert.equal(parseSettings({}).memoryGuardRatio, 0.85);
  assert.throws(
    () => parseSettings({ MEMORY_GUARD_RATIO: "0" }),
    (e: unknown) =>
      e instanceof SettingsError && e.variable === "MEMORY_GUARD_RATIO",
  );
  assert.throws(
    () => parseSettings({ MEMORY_LIMIT_BYTES: "1.5" }),
    /MEMORY_LIMIT_BYTES "1.5": expected an integer of at least 0/,
  );
});

Deno.test("behind the shipped nginx, silent connections never reach sockeye and are cut after client_header_timeout", async () => {
  await using srv = await spawnServer({}, { maxFds: 128 });
  await using nginx = await startNginx(srv.port);
  const silent: Deno.Conn[] = [];
  try {
    // More than the flood that stops a bare listener at this limit.
    for (let i = 0; i < 200; i++) {
      silent.push(
        await Deno.connect({ hostname: "127.0.0.1", port: nginx.port }),
      );
    }
    await using client = await TestClient.open(
      `ws://127.0.0.1:${nginx.port}/ws/chat/`,
    );
    assert.equal(await client.ask("a"), '{"count": 1}');
    assert.equal(await readyz(srv.port), 200);
    assert.equal(linesMatching(srv, "Listener stopped").length, 0);
    // client_header_timeout (10 s) ends each of them: EOF or a reset.
    const ended = (conn: Deno.Conn) =>
      conn.read(new Uint8Array(1)).then(() => true, () => true);
    await within(
      Promise.all(silent.map(ended)),
      "nginx closing the silent connections",
      15_000,
    );
    assert.equal(await client.ask("b"), '{"count": 2}');
  } finally {
    for (const conn of silent) conn.close();
  }
});

Deno.test("the shipped nginx allows 100 WebSockets per client address, then answers 429", async () => {
  await using srv = await spawnServer();
  await using nginx = await startNginx(srv.port);
  const clients: TestClient[] = [];
  try {
    for (let i = 0; i < 100; i++) {
      clients.push(
        await TestClient.open(`ws://127.0.0.1:${nginx.port}/ws/chat/`),
      );
    }
    using refused = await rawUpgrade(nginx.port, "/ws/chat/");
    assert.equal(refused.status, 429);
    assert.equal(await clients[0]!.ask("still here"), '{"count": 1}');
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
});
