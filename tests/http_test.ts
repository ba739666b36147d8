/**
 * The HTTP surface: probes in each lifecycle state, /status, /metrics in both
 * formats and behind a token, request ids.
 */
import assert from "node:assert/strict";
import { createApp } from "../src/app.ts";
import { Lifecycle } from "../src/lifecycle.ts";
import { Metrics } from "../src/observability/metrics.ts";
import { parseSettings } from "../src/settings.ts";
import { Hub } from "../src/sessions/hub.ts";
import { MemorySessionStore } from "../src/sessions/memory_store.ts";
import { logger } from "../src/observability/logging.ts";
import { parsePrometheusText as parseMetrics } from "../src/cli/prometheus_text.ts";
import { metricValue, startTestServer, TestClient } from "./_helpers.ts";

/** Every metric of the contract, with its Prometheus type. */
const CONTRACT_METRICS: Record<string, string> = {
  websocket_connections_total: "counter",
  websocket_connections_active: "gauge",
  websocket_messages_total: "counter",
  websocket_message_duration_seconds: "histogram",
  websocket_errors_total: "counter",
  websocket_disconnects_total: "counter",
  websocket_session_resumes_total: "counter",
  http_requests_total: "counter",
  http_request_duration_seconds: "histogram",
  app_startup_time_seconds: "gauge",
  app_shutdown_time_seconds: "gauge",
  app_info: "gauge",
  app_dependency_up: "gauge",
  app_ready: "gauge",
  process_cpu_seconds_total: "counter",
  process_resident_memory_bytes: "gauge",
  process_open_fds: "gauge",
  process_event_loop_lag_seconds: "gauge",
};

Deno.test("/healthz answers 200 with color, version, uptime and timestamp", async () => {
  await using srv = await startTestServer({ COLOR: "green" });
  const res = await fetch(srv.http("/healthz"));
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.status, "healthy");
  assert.equal(body.color, "green");
  assert.match(body.version, /^\d+\.\d+\.\d+/);
  assert.equal(typeof body.uptime_seconds, "number");
  assert.ok(!Number.isNaN(Date.parse(body.timestamp)));
});

Deno.test("/readyz reports ready with checks and active connections", async () => {
  await using srv = await startTestServer();
  await using _c = await TestClient.open(srv.ws());
  const res = await fetch(srv.http("/readyz"));
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {
    status: "ready",
    color: "blue",
    active_connections: 1,
    checks: { memory: "ok" },
  });
});

Deno.test("/readyz is 503 starting before ready, /healthz already 200", async () => {
  const settings = parseSettings({});
  const lifecycle = new Lifecycle();
  const metrics = new Metrics("blue", {
    activeConnections: () => 0,
    ready: () => lifecycle.state === "ready",
    drainingSeconds: () => undefined,
  });
  const store = new MemorySessionStore(60);
  const hub = new Hub(
    {
      heartbeatIntervalS: 30,
      limits: settings,
      tracing: { enabled: false, frameRatio: 0 },
    },
    metrics,
    logger("ws"),
  );
  try {
    const app = createApp({ settings, lifecycle, metrics, hub, store });
    const starting = await app.request("/readyz");
    assert.equal(starting.status, 503);
    assert.equal((await starting.json()).status, "starting");
    assert.equal((await app.request("/healthz")).status, 200);
    lifecycle.ready();
    assert.equal((await app.request("/readyz")).status, 200);
    lifecycle.drain();
    const draining = await app.request("/readyz");
    assert.equal(draining.status, 503);
    assert.equal((await draining.json()).status, "draining");
    assert.equal((await app.request("/healthz")).status, 200);
  } finally {
    hub[Symbol.dispose]();
    metrics[Symbol.dispose]();
    await store.close();
  }
});

Deno.test("/status names version, color, store, intervals and limits", async () => {
  await using srv = await startTestServer({
    MAX_CONNECTIONS: "10",
    HEARTBEAT_INTERVAL_S: "15",
  });
  const body = await (await fetch(srv.http("/status"))).json();
  assert.equal(body.store, "memory");
  assert.equal(body.color, "blue");
  assert.equal(body.state, "ready");
  assert.equal(body.heartbeat_interval_s, 15);
  assert.equal(body.shutdown_timeout_s, 10);
  assert.equal(body.active_connections, 0);
  assert.equal(body.limits.max_connections, 10);
  assert.equal(body.limits.max_message_bytes, 65536);
  assert.equal(typeof body.uptime_seconds, "number");
});

Deno.test("/metrics exposes every contract metric with its type and color", async () => {
  await using srv = await startTestServer({ COLOR: "green" });
  {
    await using c = await TestClient.open(srv.ws());
    assert.equal(await c.ask("hi"), '{"count": 1}');
  }
  const res = await fetch(srv.http("/metrics"));
  assert.equal(res.status, 200);
  assert.match(
    res.headers.get("content-type")!,
    /^text\/plain; version=0\.0\.4/,
  );
  const text = await res.text();
  const { types, samples } = parseMetrics(text);
  for (const [name, type] of Object.entries(CONTRACT_METRICS)) {
    assert.equal(types.get(name), type, `${name} has type ${type}`);
    const family = samples.filter((s) =>
      s.name === name || s.name.startsWith(name + "_")
    );
    assert.ok(family.length > 0, `${name} has samples`);
    for (const s of family) assert.equal(s.labels.color, "green", s.name);
  }
  assert.equal(
    metricValue(text, "websocket_messages_total", { type: "received" }),
    1,
  );
  assert.equal(
    metricValue(text, "websocket_messages_total", { type: "sent" }),
    1,
  );
  assert.equal(
    metricValue(text, "websocket_message_duration_seconds_count"),
    1,
  );
  assert.equal(metricValue(text, "websocket_connections_total"), 1);
  assert.ok(metricValue(text, "process_resident_memory_bytes") > 1e6);
  assert.ok(metricValue(text, "process_open_fds") > 0);
  const info = samples.find((s) => s.name === "app_info")!;
  assert.match(info.labels.runtime_version!, /^deno \d/);
  // Route templates, never raw paths.
  assert.ok(
    samples.some((s) =>
      s.name === "http_requests_total" && s.labels.endpoint === "/ws/chat/" &&
      s.labels.status === "101"
    ),
  );
});

Deno.test("/metrics speaks OpenMetrics when asked", async () => {
  await using srv = await startTestServer();
  const res = await fetch(srv.http("/metrics"), {
    headers: { Accept: "application/openmetrics-text; version=1.0.0" },
  });
  assert.match(
    res.headers.get("content-type")!,
    /^application\/openmetrics-text/,
  );
  const text = await res.text();
  assert.match(text, /# EOF\n?$/);
  const plain = await fetch(srv.http("/metrics"));
  assert.match(plain.headers.get("content-type")!, /^text\/plain/);
  await plain.body?.cancel();
});

Deno.test("METRICS_TOKEN guards /metrics with a bearer token", async () => {
  await using srv = await startTestServer({ METRICS_TOKEN: "s3cret" });
  const none = await fetch(srv.http("/metrics"));
  assert.equal(none.status, 401);
  assert.match(none.headers.get("www-authenticate")!, /^Bearer/);
  await none.body?.cancel();
  const wrong = await fetch(srv.http("/metrics"), {
    headers: { Authorization: "Bearer nope" },
  });
  assert.equal(wrong.status, 401);
  await wrong.body?.cancel();
  const right = await fetch(srv.http("/metrics"), {
    headers: { Authorization: "Bearer s3cret" },
  });
  assert.equal(right.status, 200);
  await right.body?.cancel();
  // Probes stay open.
  const health = await fetch(srv.http("/healthz"));
  assert.equal(health.status, 200);
  await health.body?.cancel();
});

Deno.test("every response carries X-Request-ID: the client's if sane, else new", async () => {
  await using srv = await startTestServer();
  const mine = await fetch(srv.http("/healthz"), {
    headers: { "X-Request-ID": "req-123_abc" },
  });
  assert.equal(mine.headers.get("x-request-id"), "req-123_abc");
  await mine.body?.cancel();
  const insane = await fetch(srv.http("/healthz"), {
    headers: { "X-Request-ID": "bad id <script>" },
  });
  const generated = insane.headers.get("x-request-id")!;
  assert.notEqual(generated, "bad id <script>");
  assert.match(generated, /^[0-9a-f-]{36}$/);
  await insane.body?.cancel();
  for (
    const path of ["/readyz", "/status", "/metrics", "/missing", "/ws/chat/"]
  ) {
    const res = await fetch(srv.http(path));
    assert.ok(res.headers.get("x-request-id"), path);
    await res.body?.cancel();
  }
});

Deno.test("unknown paths get a JSON 404 counted under endpoint=unmatched", async () => {
  await using srv = await startTestServer();
  const res = await fetch(srv.http("/no/such/thing"));
  assert.equal(res.status, 404);
  assert.equal((await res.json()).error, "not_found");
  assert.equal(
    metricValue(await srv.metrics(), "http_requests_total", {
      endpoint: "unmatched",
      status: "404",
    }),
    1,
  );
});

Deno.test("made-up HTTP methods are counted as method=other: the label set stays bounded", async () => {
  await using srv = await startTestServer();
  const httpSeries = async () =>
    parseMetrics(await srv.metrics()).samples.filter((s) =>
      s.name.startsWith("http_request")
    );
  // One request of each shape first, so that every series exists.
  const send = async (method: string, path: string) => {
    const res = await fetch(srv.http(path), { method });
    await res.body?.cancel();
    return res.status;
  };
  assert.equal(await send("FROB0", "/healthz"), 404);
  // Methods are case-sensitive: `patch` is not PATCH (fetch keeps its case).
  assert.equal(await send("patch", "/healthz"), 404);
  assert.equal(await send("DELETE", "/no/such/0"), 404);
  const before = await httpSeries();
  for (let i = 1; i <= 300; i++) {
    assert.equal(await send(`FROB${i}`, `/no/such/${i}`), 404);
  }
  const after = await httpSeries();
  const series = (samples: typeof after) =>
    new Set(samples.map((s) => `${s.name}${JSON.stringify(s.labels)}`));
  // The scrapes in between add series of their own (GET /metrics 200).
  const added = [...series(after)].filter((s) => !series(before).has(s));
  assert.ok(
    added.every((s) => s.includes('"endpoint":"/metrics"')),
    `new series: ${added.join(", ")}`,
  );
  const methods = new Set(after.map((s) => s.labels.method));
  assert.deepEqual([...methods].sort(), ["DELETE", "GET", "other"]);
  assert.equal(
    metricValue(await srv.metrics(), "http_requests_total", {
      method: "other",
      endpoint: "unmatched",
      status: "404",
    }),
    302,
  );
});
