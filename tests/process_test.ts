/**
 * sockeye as operators run it: a subprocess with settings, signals, JSON
 * logs on stdout and exit codes.
 */
import assert from "node:assert/strict";
import {
  DENO,
  metricValue,
  rawUpgrade,
  ROOT,
  spawnServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

const REQUIRED_FIELDS = ["timestamp", "level", "logger", "message", "color"];
const LEVELS = ["debug", "info", "warning", "error", "critical"];

async function openMany(url: string, n: number): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  for (let i = 0; i < n; i += 100) {
    const batch = Array.from(
      { length: Math.min(100, n - i) },
      () => TestClient.open(url),
    );
    clients.push(...await Promise.all(batch));
  }
  return clients;
}

Deno.test("SIGTERM drains 1,000 sockets: bye with the total, 1001, exit 0 inside the budget", async () => {
  await using proc = await spawnServer({ SHUTDOWN_TIMEOUT_S: "10" });
  const url = `ws://127.0.0.1:${proc.port}/ws/chat/`;
  const clients = await openMany(url, 1000);
  // Give every session a count: one message each, two for every tenth.
  await Promise.all(clients.map(async (c, i) => {
    assert.equal(await c.ask("hi"), '{"count": 1}');
    if (i % 10 === 0) assert.equal(await c.ask("hi"), '{"count": 2}');
  }));

  const start = performance.now();
  proc.child.kill("SIGTERM");
  const status = await within(proc.status, "exit after SIGTERM", 15_000);
  const seconds = (performance.now() - start) / 1000;
  assert.equal(status.code, 0);
  assert.ok(seconds < 10, `drain took ${seconds} s`);

  const closes = await Promise.all(clients.map((c) => c.closed));
  closes.forEach((e, i) => {
    assert.equal(e.code, 1001, `client ${i} close code`);
    const total = i % 10 === 0 ? 2 : 1;
    assert.equal(
      clients[i]!.received.at(-1),
      `{"bye": true, "total": ${total}}`,
    );
  });
  const complete = JSON.parse(
    proc.lines.find((l) => l.includes('"Drain complete"'))!,
  );
  assert.equal(complete.level, "info");
  assert.equal(complete.closed, 1000);
  assert.equal(complete.forced, 0);
  assert.equal(typeof complete.shutdown_seconds, "number");
  assert.ok(complete.shutdown_seconds < 10);
});

Deno.test("a drain that hits its deadline forces the silent sockets, logs how many, exits 0", async () => {
  await using proc = await spawnServer({ SHUTDOWN_TIMEOUT_S: "2" });
  // A client that never answers the close handshake, and one that does.
  using silent = await rawUpgrade(proc.port, "/ws/chat/");
  assert.equal(silent.status, 101);
  const polite = await TestClient.open(`ws://127.0.0.1:${proc.port}/ws/chat/`);
  await proc.waitForLine(
    (l) =>
      l.message === "WebSocket connected" &&
      proc.lines.filter((x) => x.includes("WebSocket connected")).length === 2,
    "two connections",
  );
  proc.child.kill("SIGTERM");
  // A scrape during the drain sees its time so far, and the instance not ready.
  const during = await until(async () => {
    const text = await (await fetch(`http://127.0.0.1:${proc.port}/metrics`))
      .text();
    return metricValue(text, "app_shutdown_time_seconds") > 0
      ? text
      : undefined;
  }, "a scrape during the drain");
  assert.equal(metricValue(during, "app_ready"), 0);
  const status = await within(proc.status, "exit", 5_000);
  assert.equal(status.code, 0);
  assert.equal((await polite.closed).code, 1001);
  const { code } = await silent.readUntilClose();
  assert.equal(code, 1001, "the silent client was sent its close too");
  const lines = proc.lines.map((l) => JSON.parse(l));
  const forcedLine = lines.find((l) =>
    l.message.startsWith("Drain deadline reached")
  );
  assert.equal(forcedLine.level, "warning");
  assert.equal(forcedLine.forced, 1);
  const done = lines.find((l) => l.message === "Drain complete");
  assert.equal(done.closed, 1);
  assert.equal(done.forced, 1);
  assert.ok(
    done.shutdown_seconds <= 2,
    `shutdown_seconds ${done.shutdown_seconds}`,
  );
});

Deno.test("during DRAIN_DELAY_S readiness is 503 draining, liveness 200, sockets stay open", async () => {
  await using proc = await spawnServer({
    DRAIN_DELAY_S: "1",
    SHUTDOWN_TIMEOUT_S: "5",
  });
  const base = `http://127.0.0.1:${proc.port}`;
  const client = await TestClient.open(`ws://127.0.0.1:${proc.port}/ws/chat/`);
  assert.equal(await client.ask("x"), '{"count": 1}');
  const before = await fetch(`${base}/readyz`);
  assert.equal(before.status, 200);
  await before.body?.cancel();

  proc.child.kill("SIGTERM");
  const body = await until(async () => {
    const res = await fetch(`${base}/readyz`);
    const json = await res.json();
    return res.status === 503 ? json : undefined;
  }, "readiness 503");
  assert.equal(body.status, "draining");
  const health = await fetch(`${base}/healthz`);
  assert.equal(health.status, 200);
  await health.body?.cancel();
  // Still inside the delay: the socket is open and counting.
  assert.equal(await client.ask("y"), '{"count": 2}');

  assert.equal((await within(proc.status, "exit", 10_000)).code, 0);
  assert.equal((await client.closed).code, 1001);
  assert.equal(client.received.at(-1), '{"bye": true, "total": 2}');
  const start = proc.lines.map((l) => JSON.parse(l)).find((l) =>
    l.message === "Drain started by SIGTERM"
  );
  assert.ok(start, "drain start logged");
});

Deno.test("every stdout line is JSON with the contract's fields and context", async () => {
  await using proc = await spawnServer({ COLOR: "green" });
  const url = `ws://127.0.0.1:${proc.port}/ws/chat/?session_uuid=log-test`;
  {
    // A user agent carrying an email address: the address must not reach the logs.
    const res = await fetch(`http://127.0.0.1:${proc.port}/healthz`, {
      headers: { "X-Request-ID": "probe-1" },
    });
    await res.body?.cancel();
    await using c = await TestClient.open(url);
    for (let i = 1; i <= 5; i++) {
      assert.equal(await c.ask("m"), `{"count": ${i}}`);
    }
  }
  await proc.waitForLine(
    (l) => l.message === "WebSocket disconnected",
    "the disconnect line",
  );
  proc.child.kill("SIGINT");
  assert.equal((await proc.status).code, 0);

  const lines = proc.lines.map((line) => {
    try {
      return JSON.parse(line);
    } catch {
      assert.fail(`stdout line is not JSON: ${line}`);
    }
  });
  for (const line of lines) {
    for (const field of REQUIRED_FIELDS) {
      assert.ok(field in line, `${field} in ${JSON.stringify(line)}`);
    }
    assert.ok(LEVELS.includes(line.level), line.level);
    assert.equal(line.color, "green");
    assert.match(line.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  }
  const find = (message: string) => lines.find((l) => l.message === message);
  const ready = lines.find((l) => typeof l.startup_seconds === "number");
  assert.ok(ready.startup_seconds > 0);
  const connect = find("WebSocket connected");
  assert.equal(connect.level, "info");
  assert.equal(connect.session_uuid, "log-test");
  assert.match(connect.connection_id, /^[0-9a-f-]{36}$/);
  assert.equal(connect.remote_addr, "127.0.0.1");
  assert.equal(typeof connect.user_agent, "string");
  assert.ok(connect.request_id);
  const disconnect = find("WebSocket disconnected");
  assert.equal(disconnect.close_code, 1000);
  assert.equal(disconnect.messages, 5);
  assert.equal(typeof disconnect.duration_ms, "number");
  assert.equal(disconnect.connection_id, connect.connection_id);
  assert.ok(find("Drain started by SIGINT"));
  assert.equal(typeof find("Drain complete").shutdown_seconds, "number");
  // Per-message events never appear at info.
  assert.ok(lines.length < 10, `${lines.length} lines for 5 messages`);
});

Deno.test("secrets and personal data are redacted from logs", async () => {
  await using proc = await spawnServer();
  {
    using up = await rawUpgrade(proc.port, "/ws/chat/", {
      "User-Agent": "bot/1.0 (jane.doe@example.com; card 4111 1111 1111 1111)",
    });
    assert.equal(up.status, 101);
  }
  const line = await proc.waitForLine(
    (l) => l.message === "WebSocket connected",
    "connect",
  );
  assert.match(String(line.user_agent), /^bot\/1\.0 \(REDACTED@EMAIL\.ADDRESS/);
  const all = proc.lines.join("\n");
  assert.ok(!all.includes("jane.doe@example.com"));
  assert.ok(!all.includes("4111 1111 1111 1111"));
});

Deno.test("LOG_FORMAT=pretty writes lines for people", async () => {
  const child = new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`, "serve"],
    env: { PORT: "0", HOST: "127.0.0.1", LOG_FORMAT: "pretty" },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const { value } = await within(reader.read(), "first line");
  child.kill("SIGTERM");
  await reader.cancel();
  await child.status;
  assert.match(
    value!,
    /^\d\d:\d\d:\d\d\.\d{3} INFO +\[blue\] sockeye\.server sockeye ready/,
  );
});

Deno.test("bad settings exit 2 naming the variable", async () => {
  const cases: Array<[string, string]> = [
    ["PORT", "eighty"],
    ["PORT", "70000"],
    ["HEARTBEAT_INTERVAL_S", "abc"],
    ["HEARTBEAT_INTERVAL_S", "0"],
    ["SHUTDOWN_TIMEOUT_S", "-1"],
    ["MAX_MESSAGE_BYTES", "1.5"],
    ["MAX_CONNECTIONS", "-3"],
    ["MAX_BUFFERED_BYTES", "100"],
    ["LOG_LEVEL", "loud"],
    ["LOG_FORMAT", "xml"],
    ["COLOR", "Blue Team"],
    ["REDIS_URL", "http://localhost:6379"],
    ["ALLOWED_ORIGINS", "not an origin"],
    ["DRAIN_DELAY_S", "20"],
  ];
  await Promise.all(cases.map(async ([name, value]) => {
    const out = await new Deno.Command(DENO, {
      args: ["run", "-A", `${ROOT}main.ts`, "serve"],
      env: { PORT: "0", [name]: value },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 2, `${name}=${value}: ${stderr}`);
    assert.match(stderr, new RegExp(`Cannot parse ${name} `), stderr);
    assert.equal(out.stdout.length, 0, "nothing on stdout");
  }));
});

Deno.test("a port in use exits 1 with one critical log line", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const out = await new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`],
    env: {
      HOST: "127.0.0.1",
      PORT: String((listener.addr as Deno.NetAddr).port),
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 1);
  const line = JSON.parse(
    new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!,
  );
  assert.equal(line.level, "critical");
  assert.match(line.message, /^Cannot start/);
});

Deno.test("healthcheck exits 0 against a live server and 1 against none", async () => {
  await using proc = await spawnServer();
  const run = (url: string) =>
    new Deno.Command(DENO, {
      args: ["run", "-A", `${ROOT}main.ts`, "healthcheck", url],
      stdout: "null",
      stderr: "null",
    }).output();
  assert.equal((await run(`http://127.0.0.1:${proc.port}/healthz`)).code, 0);
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (closed.addr as Deno.NetAddr).port;
  closed.close();
  assert.equal((await run(`http://127.0.0.1:${port}/healthz`)).code, 1);
});

/** What one streaming client saw of a drain. */
interface StreamResult {
  /** The last `{"count": n}` received. */
  lastCount: number;
  /** The bye frame, if one arrived. */
  bye: string | undefined;
  /** The close code (1006 when the connection ended without a close frame). */
  code: number;
}

/**
 * Opens `n` clients, each counted once (so the server has opened them all),
 * then starts them sending as fast as they can until their bye arrives. Even
 * ones keep 8 frames in flight, one more per reply (closed loop); odd ones
 * send 2 frames every 10 ms whatever comes back (open loop), unless their
 * last ones are still unsent.
 *
 * @returns `streaming` resolves once nine in ten clients had a reply to
 *   their stream (under load the runtime can leave a socket unread for
 *   seconds); `results` once every client closed.
 */
async function openStreaming(
  url: string,
  n: number,
): Promise<{ streaming: Promise<void>; results: Promise<StreamResult[]> }> {
  const clients = await openMany(url, n);
  await within(
    Promise.all(clients.map((c) => c.ask("x"))),
    "a first count on every client",
  );
  const results: Promise<StreamResult>[] = [];
  let replying = 0;
  const streaming = Promise.withResolvers<void>();
  clients.forEach(({ ws }, i) => {
    const openLoop = i % 2 === 1;
    const done = Promise.withResolvers<StreamResult>();
    const result: StreamResult = { lastCount: 1, bye: undefined, code: 0 };
    const send = (k: number) => {
      for (let j = 0; j < k; j++) ws.send("x");
    };
    const timer = openLoop
      ? setInterval(() => ws.bufferedAmount === 0 && send(2), 10)
      : undefined;
    ws.onmessage = (e) => {
      const text = String(e.data);
      if (text.startsWith('{"count": ')) {
        if (result.lastCount === 1 && ++replying >= 0.9 * n) {
          streaming.resolve();
        }
        result.lastCount = Number(text.slice(10, -1));
        if (!openLoop && result.bye === undefined) send(1);
      } else if (text.startsWith('{"bye": ')) {
        result.bye = text;
        clearInterval(timer);
      }
    };
    ws.onclose = (e) => {
      clearInterval(timer);
      result.code = e.code === 0 ? 1006 : e.code;
      done.resolve(result);
    };
    if (!openLoop) send(8);
    results.push(done.promise);
  });
  return { streaming: streaming.promise, results: Promise.all(results) };
}

/** Summarises what streaming clients saw: close codes and byes, by kind. */
function tally(results: StreamResult[]): string {
  const codes: Record<number, number> = {};
  for (const r of results) codes[r.code] = (codes[r.code] ?? 0) + 1;
  const byes = results.filter((r) => r.bye !== undefined).length;
  const right =
    results.filter((r) => r.bye === `{"bye": true, "total": ${r.lastCount}}`)
      .length;
  return `close codes ${JSON.stringify(codes)}, ${byes} byes, ${right} with ` +
    `the right total, of ${results.length}`;
}

/**
 * Drains `n` streaming clients (see {@link openStreaming}) and `idle` idle
 * ones, each counted once, and checks every one got its bye with the right
 * total and 1001.
 */
async function streamingDrain(
  secondSignal: boolean,
  { n = 500, idle = 0 } = {},
): Promise<void> {
  // With a second signal, a drain delay it must cut short.
  await using proc = await spawnServer({
    SHUTDOWN_TIMEOUT_S: "10",
    DRAIN_DELAY_S: secondSignal ? "6" : "0",
  });
  const url = `ws://127.0.0.1:${proc.port}/ws/chat/`;
  const quiet = await openMany(url, idle);
  await within(
    Promise.all(quiet.map((c) => c.ask("x"))),
    "a first count on every idle client",
  );
  const { streaming, results } = await openStreaming(url, n);
  await within(streaming, "every client streaming");
  proc.child.kill("SIGTERM");
  if (secondSignal) {
    await proc.waitForLine(
      (l) => l.message === "Drain started by SIGTERM",
      "the drain start",
    );
    proc.child.kill("SIGTERM");
  }
  const status = await within(proc.status, "exit after SIGTERM", 15_000);
  const seen = await within(results, "every client closed");
  const drainLines = proc.lines.filter((l) => l.includes('"Drain'));
  const summary = `${tally(seen)}; server: ${drainLines.join(" ")}`;
  assert.equal(status.code, 0, summary);
  seen.forEach((r, i) => {
    assert.equal(r.code, 1001, `client ${i}: ${summary}`);
    assert.equal(
      r.bye,
      `{"bye": true, "total": ${r.lastCount}}`,
      `client ${i}: ${summary}`,
    );
  });
  for (const [i, c] of quiet.entries()) {
    assert.equal((await c.closed).code, 1001, `idle client ${i}`);
    assert.equal(c.received.at(-1), '{"bye": true, "total": 1}');
  }
  const complete = JSON.parse(drainLines.at(-1)!);
  assert.equal(complete.message, "Drain complete");
  assert.equal(complete.closed, n + idle, summary);
  assert.equal(complete.dropped, 0, summary);
  assert.equal(complete.forced, 0, summary);
  if (secondSignal) {
    assert.ok(complete.shutdown_seconds < 5, "the drain delay was skipped");
  }
}

Deno.test("SIGTERM drains clients streaming at full speed: every one gets bye + 1001", async () => {
  await streamingDrain(false);
});

Deno.test("a second SIGTERM skips only DRAIN_DELAY_S: streaming clients still get bye + 1001", async () => {
  await streamingDrain(true);
});

Deno.test("idle sockets closed in the drain's first pass leave the streaming ones to finish: every one gets bye + 1001", async () => {
  await streamingDrain(false, { n: 300, idle: 500 });
});
