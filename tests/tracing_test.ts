/**
 * Traces exported by Deno's built-in OpenTelemetry, received by an OTLP/HTTP
 * (http/json) endpoint inside the test.
 */
import assert from "node:assert/strict";
import {
  rawUpgrade,
  spawnServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes?: Array<{ key: string; value: Record<string, unknown> }>;
  status?: { code?: number | string; message?: string };
  events?: Array<{ name: string; attributes?: OtlpSpan["attributes"] }>;
}

/** An OTLP/HTTP receiver: collects spans from POST /v1/traces. */
function startReceiver(): { url: string; spans: OtlpSpan[] } & AsyncDisposable {
  const spans: OtlpSpan[] = [];
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async (req) => {
      const body = await req.text();
      if (new URL(req.url).pathname === "/v1/traces") {
        const json = JSON.parse(body);
        for (const rs of json.resourceSpans ?? []) {
          for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
        }
      }
      return Response.json({});
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    spans,
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
    },
  };
}

function attr(span: OtlpSpan, key: string): unknown {
  const v = span.attributes?.find((a) => a.key === key)?.value;
  if (v === undefined) return undefined;
  const [value] = Object.values(v);
  return typeof value === "string" && /^\d+$/.test(value) && "intValue" in v
    ? Number(value)
    : value;
}

function otelEnv(url: string, extra: Record<string, string> = {}) {
  return {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_ENDPOINT: url,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_SERVICE_NAME: "sockeye-test",
    OTEL_DENO_CONSOLE: "ignore",
    ...extra,
  };
}

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID = "00f067aa0ba902b7";

Deno.test("upgrade, connection and message spans with parentage, a client's traceparent, and the drain", async () => {
  await using receiver = startReceiver();
  await using proc = await spawnServer(
    otelEnv(receiver.url, { TRACE_FRAME_RATIO: "1" }),
  );
  {
    using up = await rawUpgrade(proc.port, "/ws/chat/?session_uuid=traced", {
      traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`,
    });
    assert.equal(up.status, 101);
    for (let i = 0; i < 3; i++) await up.sendText("m");
    await proc.waitForLine(
      (l) => l.message === "WebSocket connected",
      "connect line",
    );
    // A binary frame: the connection span records the error.
    await up.conn.write(new Uint8Array([0x82, 0x80, 1, 2, 3, 4]));
    const { code } = await up.readUntilClose();
    assert.equal(code, 1003);
  }
  await proc.waitForLine(
    (l) => l.message === "WebSocket disconnected",
    "disconnect line",
  );
  proc.child.kill("SIGTERM");
  assert.equal((await within(proc.status, "exit")).code, 0);

  const spans = await until(() => {
    const names = new Set(receiver.spans.map((s) => s.name));
    return [
        "GET /ws/chat/",
        "WebSocket /ws/chat/",
        "WebSocket message",
        "sockeye drain",
      ]
        .every((n) => names.has(n))
      ? receiver.spans
      : undefined;
  }, "the exported spans");

  const upgrade = spans.find((s) => s.name === "GET /ws/chat/")!;
  assert.equal(upgrade.traceId, TRACE_ID, "the client's traceparent continues");
  assert.equal(upgrade.parentSpanId, PARENT_ID);
  assert.equal(attr(upgrade, "http.route"), "/ws/chat/");

  const conn = spans.find((s) => s.name === "WebSocket /ws/chat/")!;
  assert.equal(conn.traceId, TRACE_ID);
  assert.equal(conn.parentSpanId, upgrade.spanId);
  assert.equal(attr(conn, "session.id"), "traced");
  assert.equal(attr(conn, "sockeye.session.resumed"), false);
  assert.equal(attr(conn, "sockeye.close.code"), 1003);
  assert.equal(attr(conn, "sockeye.messages"), 3);
  assert.equal(attr(conn, "error.type"), "binary_frame");
  assert.ok(conn.events?.some((e) => e.name === "exception"));
  assert.ok([2, "STATUS_CODE_ERROR"].includes(conn.status?.code as number));

  const messages = spans.filter((s) => s.name === "WebSocket message");
  assert.equal(messages.length, 3);
  for (const m of messages) {
    assert.equal(m.traceId, TRACE_ID);
    assert.equal(m.parentSpanId, conn.spanId);
  }
  assert.deepEqual(messages.map((m) => attr(m, "sockeye.count")).sort(), [
    1,
    2,
    3,
  ]);
  assert.equal(typeof attr(messages[0]!, "sockeye.store.duration"), "number");

  const drain = spans.find((s) => s.name === "sockeye drain")!;
  assert.equal(attr(drain, "sockeye.drain.forced"), 0);
  assert.equal(typeof attr(drain, "sockeye.drain.duration"), "number");
  assert.ok(spans.some((s) => s.name === "sockeye startup"));

  // Log lines of the traced connection carry its trace and span ids.
  const lines = proc.lines.map((l) => JSON.parse(l));
  const connected = lines.find((l) => l.message === "WebSocket connected");
  assert.equal(connected.trace_id, TRACE_ID);
  assert.equal(connected.span_id, conn.spanId);
  const closing = lines.find((l) => l.error_type === "binary_frame");
  assert.equal(closing.trace_id, TRACE_ID);
  const drainDone = lines.find((l) => l.message === "Drain complete");
  assert.equal(drainDone.trace_id, drain.traceId);
});

Deno.test("refusals before the upgrade mark the request span failed", async () => {
  await using receiver = startReceiver();
  await using proc = await spawnServer(otelEnv(receiver.url));
  {
    using up = await rawUpgrade(proc.port, "/ws/chat/?session_uuid=bad%20id");
    assert.equal(up.status, 400);
  }
  proc.child.kill("SIGTERM");
  await proc.status;
  const span = await until(
    () => receiver.spans.find((s) => s.name === "GET /ws/chat/"),
    "the refused request's span",
  );
  assert.equal(attr(span, "error.type"), "invalid_session_id");
  assert.ok(span.events?.some((e) => e.name === "exception"));
});

Deno.test("TRACE_FRAME_RATIO=0 traces connections without frame spans", async () => {
  await using receiver = startReceiver();
  await using proc = await spawnServer(
    otelEnv(receiver.url, { TRACE_FRAME_RATIO: "0" }),
  );
  {
    await using c = await TestClient.open(
      `ws://127.0.0.1:${proc.port}/ws/chat/`,
    );
    for (let i = 1; i <= 20; i++) {
      assert.equal(await c.ask("m"), `{"count": ${i}}`);
    }
  }
  await proc.waitForLine(
    (l) => l.message === "WebSocket disconnected",
    "disconnect",
  );
  proc.child.kill("SIGTERM");
  await proc.status;
  await until(
    () => receiver.spans.some((s) => s.name === "WebSocket /ws/chat/"),
    "connection span",
  );
  assert.equal(
    receiver.spans.filter((s) => s.name === "WebSocket message").length,
    0,
  );
});

Deno.test("a made-up method names its span HTTP, with http.request.method _OTHER and the original", async () => {
  await using receiver = startReceiver();
  await using proc = await spawnServer(otelEnv(receiver.url));
  const request = async (method: string, path: string) => {
    const res = await fetch(`http://127.0.0.1:${proc.port}${path}`, {
      method,
    });
    await res.body?.cancel();
    assert.equal(res.status, 404);
  };
  await request("FROB", "/healthz");
  await request("DELETE", "/no/such/path");
  proc.child.kill("SIGTERM");
  await proc.status;
  const values = (span: OtlpSpan, key: string) =>
    (span.attributes ?? []).filter((a) => a.key === key)
      .map((a) => Object.values(a.value)[0]);
  const frob = await until(
    () =>
      receiver.spans.find((s) =>
        values(s, "http.request.method_original").includes("FROB")
      ),
    "the made-up method's span",
  );
  assert.equal(frob.name, "HTTP");
  // Deno keeps its own attribute beside ours: the last value is ours.
  assert.equal(values(frob, "http.request.method").at(-1), "_OTHER");
  assert.deepEqual(values(frob, "http.route"), []);
  // A known method on no route: the span is named for the method alone.
  const unmatched = await until(
    () =>
      receiver.spans.find((s) =>
        values(s, "http.request.method").includes("DELETE")
      ),
    "the unmatched request's span",
  );
  assert.equal(unmatched.name, "DELETE");
  assert.deepEqual(values(unmatched, "http.route"), []);
});
