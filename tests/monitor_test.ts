/**
 * `sockeye monitor` against a running service and one that is down.
 */
import assert from "node:assert/strict";
import {
  histogramQuantile,
  rates,
  type Scrape,
} from "../src/cli/monitor_sample.ts";
import { parsePrometheusText, seriesKey } from "../src/cli/prometheus_text.ts";
import { DENO, ROOT, startTestServer, TestClient } from "./_helpers.ts";

async function monitor(args: string[], stdin?: string) {
  const child = new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`, "monitor", ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: stdin === undefined ? "null" : "piped",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

const ERROR_LINE = JSON.stringify({
  timestamp: "2026-11-23T10:00:00.000Z",
  level: "error",
  logger: "sockeye.redis",
  message:
    "Redis unavailable: frames are answered unavailable until it returns",
  color: "green",
});
const INFO_LINE = JSON.stringify({
  timestamp: "2026-11-23T10:00:01.000Z",
  level: "info",
  logger: "sockeye.ws",
  message: "WebSocket connected",
  color: "green",
});

Deno.test("monitor shows health, readiness, connections, moving counters and error lines", async () => {
  await using srv = await startTestServer({ COLOR: "green" });
  await using c = await TestClient.open(srv.ws());
  const dir = await Deno.makeTempDir();
  try {
    const logFile = `${dir}/sockeye.log`;
    await Deno.writeTextFile(logFile, `${INFO_LINE}\n${ERROR_LINE}\n`);
    let running = true;
    const traffic = (async () => {
      while (running) await c.ask("m");
    })();
    const down = "http://127.0.0.1:1";
    const run = monitor([
      "--url",
      srv.http(""),
      "--url",
      down,
      "--interval",
      "0.3",
      "--duration",
      "1",
      "--logs",
      logFile,
    ]);
    const result = await run;
    running = false;
    await traffic;
    assert.equal(result.code, 0, result.stderr);
    const out = result.stdout;
    // Plain blocks, no terminal escapes, when stdout is not a terminal.
    assert.ok(!out.includes("\x1b["));
    assert.match(
      out,
      /^green\s+healthy\s+ready\s+memory ok\s+1\s+http:\/\/127\.0\.0\.1:\d+$/m,
    );
    assert.match(
      out,
      /^\?\s+unreachable\s+unreachable\s+-\s+-\s+http:\/\/127\.0\.0\.1:1$/m,
    );
    // Traffic: messages per second and reply latency for the live one.
    assert.match(
      out,
      /^green\s+\d+\.\d\d\s+\d+\.\d{3}\s+\d+\.\d{3}\s+\d+\.\d{3}\s+http:\/\/127\.0\.0\.1:\d+$/m,
    );
    assert.match(
      out,
      /websocket_messages_total\{color="green",type="received"\}/,
    );
    assert.match(out, /green ERROR sockeye\.redis: Redis unavailable/);
    assert.ok(!out.includes("WebSocket connected"), "info lines are not shown");
    assert.ok(
      (out.match(/^sockeye monitor /gm) ?? []).length >= 3,
      "refreshed",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("monitor --logs - reads docker compose logs from stdin; --logs-only hides instances", async () => {
  const result = await monitor(
    ["--logs", "-", "--logs-only", "--interval", "0.2", "--duration", "0.5"],
    `app_green-1  | ${INFO_LINE}\napp_green-1  | ${ERROR_LINE}\nplain text ERROR: disk full\n`,
  );
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /green ERROR sockeye\.redis: Redis unavailable/);
  assert.match(result.stdout, /plain text ERROR: disk full/);
  assert.ok(!result.stdout.includes("HEALTH"));
});

Deno.test("monitor --metrics-only against a service that is down still prints, exit 0", async () => {
  const result = await monitor([
    "--url",
    "http://127.0.0.1:1",
    "--metrics-only",
    "--duration",
    "0.1",
  ]);
  assert.equal(result.code, 0);
  assert.match(result.stdout, /unreachable/);
  assert.ok(!result.stdout.includes("ERROR LINES"));
  const bad = await monitor(["--interval", "zero"]);
  assert.equal(bad.code, 2);
});

Deno.test("histogramQuantile interpolates inside the bucket as PromQL does", () => {
  const buckets = [
    { le: 0.001, count: 50 },
    { le: 0.01, count: 90 },
    { le: 0.1, count: 100 },
    { le: Infinity, count: 100 },
  ];
  assert.equal(histogramQuantile(0.5, buckets), 0.001);
  assert.ok(Math.abs(histogramQuantile(0.7, buckets) - 0.0055) < 1e-12);
  assert.ok(Math.abs(histogramQuantile(0.95, buckets) - 0.055) < 1e-12);
  assert.ok(Number.isNaN(histogramQuantile(0.5, [{ le: Infinity, count: 0 }])));
  // A rank in +Inf answers the highest finite bound.
  assert.equal(
    histogramQuantile(0.99, [{ le: 1, count: 1 }, { le: Infinity, count: 10 }]),
    1,
  );
});

function scrapeOf(text: string, at: number): Scrape {
  const { samples } = parsePrometheusText(text);
  return { at, samples: new Map(samples.map((s) => [seriesKey(s), s])) };
}

Deno.test("rates: messages, latency, errors by type, movers less the monitor's own requests", () => {
  const before = scrapeOf(
    [
      'websocket_messages_total{type="received"} 100',
      'websocket_errors_total{error_type="rate_limited"} 1',
      'websocket_errors_total{error_type="binary_frame"} 0',
      'websocket_message_duration_seconds_bucket{le="0.001"} 10',
      'websocket_message_duration_seconds_bucket{le="+Inf"} 10',
      'http_requests_total{endpoint="/healthz",method="GET",status="200"} 7',
      'http_requests_total{endpoint="/readyz",method="GET",status="503"} 7',
      'http_request_duration_seconds_count{endpoint="/readyz",method="GET"} 7',
      "process_resident_memory_bytes 1000",
    ].join("\n"),
    1000,
  );
  const after = scrapeOf(
    [
      'websocket_messages_total{type="received"} 300',
      'websocket_errors_total{error_type="rate_limited"} 5',
      'websocket_errors_total{error_type="binary_frame"} 0',
      'websocket_message_duration_seconds_bucket{le="0.001"} 210',
      'websocket_message_duration_seconds_bucket{le="+Inf"} 210',
      // Ours (one) and a load balancer's (two).
      'http_requests_total{endpoint="/healthz",method="GET",status="200"} 10',
      'http_requests_total{endpoint="/readyz",method="GET",status="503"} 8',
      'http_request_duration_seconds_count{endpoint="/readyz",method="GET"} 8',
      "process_resident_memory_bytes 9000000",
    ].join("\n"),
    3000,
  );
  const own = new Map([
    ["/healthz", new Map([["200", 1]])],
    ["/readyz", new Map([["503", 1]])],
  ]);
  const r = rates(before, after, own);
  assert.equal(r.seconds, 2);
  assert.equal(r.messagesPerSecond, 100);
  assert.ok(r.latency && r.latency.p50 > 0 && r.latency.p99 <= 0.001);
  assert.deepEqual(r.errorsPerSecond, { rate_limited: 2 });
  assert.deepEqual(r.movers.map((m) => [m.series, m.perSecond]), [
    ['websocket_messages_total{type="received"}', 100],
    ['websocket_errors_total{error_type="rate_limited"}', 2],
    ['http_requests_total{endpoint="/healthz",method="GET",status="200"}', 1],
  ]);
  // A counter that went down restarted: its new value is the increase.
  const restarted = rates(
    after,
    scrapeOf('websocket_messages_total{type="received"} 50', 4000),
  );
  assert.equal(restarted.messagesPerSecond, 50);
});
