/**
 * The metrics module on its own: the frame histogram's exposition in both
 * formats, process metrics against /proc, the event-loop lag gauge, and what
 * the shipped permission set can read.
 */
import assert from "node:assert/strict";
import { Counter, Histogram, Registry } from "prom-client";
import {
  HTTP_DURATION_BUCKETS,
  MESSAGE_DURATION_BUCKETS,
  Metrics,
  type MetricsSources,
} from "../src/observability/metrics.ts";
import { parsePrometheusText } from "../src/cli/prometheus_text.ts";
import { DENO, metricValue, ROOT, until } from "./_helpers.ts";

const SOURCES: MetricsSources = {
  activeConnections: () => 0,
  ready: () => true,
  drainingSeconds: () => undefined,
};

/** One per bucket region: at a bound (le is inclusive), between, above 1 s. */
const OBSERVATIONS = [0.00003, 0.0001, 0.0001, 0.003, 0.7, 2];

const HISTOGRAM = "websocket_message_duration_seconds";

/** The lines of one metric family, from `# HELP` to its last sample. */
function family(body: string, name: string): string[] {
  const lines = body.split("\n");
  const start = lines.indexOf(
    lines.find((l) => l.startsWith(`# HELP ${name} `))!,
  );
  assert.ok(start >= 0, `${name} is in the scrape`);
  const rest = lines.slice(start + 2);
  const end = rest.findIndex((l) => l === "" || l.startsWith("# "));
  return lines.slice(start, start + 2 + (end < 0 ? rest.length : end));
}

/** The same observations through prom-client's own Histogram. */
async function reference(openMetrics: boolean): Promise<{
  lines: string[];
  json: unknown;
}> {
  const registry = new Registry();
  registry.setDefaultLabels({ color: "blue" });
  const h = new Histogram({
    name: HISTOGRAM,
    help: "Time from receiving a text frame to queueing its reply.",
    buckets: [...MESSAGE_DURATION_BUCKETS],
    registers: [registry],
  });
  for (const v of OBSERVATIONS) h.observe(v);
  if (openMetrics) {
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE as never);
  }
  const json = (await registry.getMetricsAsJSON())[0]!;
  // prom-client's own samples carry `exemplar: null`; ours none (no exemplars).
  json.values = json.values.map((v) => {
    const { exemplar, ...rest } = v as typeof v & { exemplar?: unknown };
    assert.equal(exemplar ?? null, null);
    return rest;
  });
  return { lines: family(await registry.metrics(), HISTOGRAM), json };
}

Deno.test("the frame histogram renders cumulative buckets, +Inf, sum and count as prom-client does", async () => {
  using metrics = new Metrics("blue", SOURCES);
  for (const v of OBSERVATIONS) metrics.frames.observe(v);
  const sum = OBSERVATIONS.reduce((a, b) => a + b, 0);
  const cumulative = [1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5];

  const text = await metrics.scrape(false);
  assert.deepEqual(family(text.body, HISTOGRAM), [
    `# HELP ${HISTOGRAM} Time from receiving a text frame to queueing its reply.`,
    `# TYPE ${HISTOGRAM} histogram`,
    ...MESSAGE_DURATION_BUCKETS.map((le, i) =>
      `${HISTOGRAM}_bucket{le="${le}",color="blue"} ${cumulative[i]}`
    ),
    `${HISTOGRAM}_bucket{le="+Inf",color="blue"} 6`,
    `${HISTOGRAM}_sum{color="blue"} ${sum}`,
    `${HISTOGRAM}_count{color="blue"} 6`,
  ]);
  assert.deepEqual(
    family(text.body, HISTOGRAM),
    (await reference(false)).lines,
  );

  const om = await metrics.scrape(true);
  assert.match(
    om.contentType,
    /^application\/openmetrics-text; version=1\.0\.0/,
  );
  assert.ok(om.body.endsWith("\n# EOF\n"));
  const omLines = family(om.body, HISTOGRAM);
  assert.deepEqual(omLines, (await reference(true)).lines);
  assert.deepEqual(omLines, family(text.body, HISTOGRAM));

  const json = (await metrics.registry.getMetricsAsJSON())
    .find((m) => m.name === HISTOGRAM);
  assert.deepEqual(json, (await reference(false)).json);
});

Deno.test("the HTTP figures render as prom-client's labelled Counter and Histogram do, and a scrape counts each request once", async () => {
  const requests: [string, string, number, number][] = [
    ["GET", "/ws/chat/", 101, 0.0004],
    ["GET", "/healthz", 200, 0.001],
    ["GET", "/ws/chat/", 101, 0.02],
    ["other", "unmatched", 404, 7],
    ["GET", "/ws/chat/", 503, 0.3],
    ["GET", "/healthz", 200, 0.0011],
  ];
  using metrics = new Metrics("blue", SOURCES);
  const registry = new Registry();
  registry.setDefaultLabels({ color: "blue" });
  const counter = new Counter({
    name: "http_requests_total",
    help: "HTTP requests by method, route template and status.",
    labelNames: ["method", "endpoint", "status"],
    registers: [registry],
  });
  const histogram = new Histogram({
    name: "http_request_duration_seconds",
    help: "HTTP request duration until the response is ready.",
    labelNames: ["method", "endpoint"],
    buckets: [...HTTP_DURATION_BUCKETS],
    registers: [registry],
  });
  const record = (from: number, to: number) => {
    for (
      const [method, endpoint, status, seconds] of requests.slice(from, to)
    ) {
      metrics.http.record(method, endpoint, status, seconds);
      counter.labels(method, endpoint, String(status)).inc();
      histogram.labels(method, endpoint).observe(seconds);
    }
  };
  // OpenMetrics names a counter's family without `_total`.
  const families = (body: string, openMetrics: boolean) =>
    [
      openMetrics ? "http_requests" : "http_requests_total",
      "http_request_duration_seconds",
    ].flatMap((name) => family(body, name));
  const compare = async () => {
    for (const openMetrics of [false, true]) {
      registry.setContentType(
        openMetrics
          ? Registry.OPENMETRICS_CONTENT_TYPE as never
          : Registry.PROMETHEUS_CONTENT_TYPE,
      );
      assert.deepEqual(
        families((await metrics.scrape(openMetrics)).body, openMetrics),
        families(await registry.metrics(), openMetrics),
      );
    }
    // prom-client strips `_total` in place for OpenMetrics (client_js#829).
    (counter as unknown as { name: string }).name = "http_requests_total";
    const ours = (await metrics.registry.getMetricsAsJSON())
      .filter((m) => m.name.startsWith("http_request"));
    const theirs = (await registry.getMetricsAsJSON()).map((m) => ({
      ...m,
      values: m.values.map((v) => {
        const { exemplar: _, ...rest } = v as typeof v & { exemplar?: unknown };
        return rest;
      }),
    }));
    assert.deepEqual(ours, theirs);
  };
  record(0, 4);
  await compare();
  // Scraped again with nothing new, and after more requests: no request
  // counted twice or lost.
  await compare();
  record(4, 6);
  await compare();
  assert.equal(
    metricValue((await metrics.scrape(false)).body, "http_requests_total", {
      method: "GET",
      endpoint: "/healthz",
      status: "200",
    }),
    2,
  );
});

Deno.test("the frame histogram reads zero before the first frame", async () => {
  using metrics = new Metrics("blue", SOURCES);
  const { body } = await metrics.scrape(false);
  assert.equal(metricValue(body, `${HISTOGRAM}_bucket`, { le: "+Inf" }), 0);
  assert.equal(metricValue(body, `${HISTOGRAM}_count`), 0);
  assert.equal(family(body, HISTOGRAM).length, 2 + 15 + 2);
});

Deno.test("a text scrape after an OpenMetrics scrape keeps counters' _total", async () => {
  using metrics = new Metrics("blue", SOURCES);
  const before = (await metrics.scrape(false)).body;
  const om = (await metrics.scrape(true)).body;
  assert.match(om, /^# TYPE websocket_connections counter$/m);
  assert.match(om, /^websocket_connections_total\{color="blue"\} 0$/m);
  const after = (await metrics.scrape(false)).body;
  assert.match(after, /^# TYPE websocket_connections_total counter$/m);
  const types = (body: string) =>
    body.split("\n").filter((l) => l.startsWith("# TYPE")).join("\n");
  assert.equal(types(after), types(before));
});

/** Counts /proc/self/fd, less the descriptor that lists it. */
function procFds(): number {
  let fds = -1;
  for (const _ of Deno.readDirSync("/proc/self/fd")) fds++;
  return fds;
}

/** Reads /proc/self (the test runs with --allow-all). */
function procSelf() {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const status = Deno.readTextFileSync("/proc/self/status");
  return {
    // CLK_TCK is 100 on Linux.
    cpuSeconds: (Number(fields[11]) + Number(fields[12])) / 100,
    rss: Number(status.match(/^VmRSS:\s+(\d+) kB$/m)![1]) * 1024,
    maxFds: Number(
      Deno.readTextFileSync("/proc/self/limits")
        .match(/^Max open files\s+(\d+)/m)![1],
    ),
  };
}

Deno.test("process metrics agree with /proc", async () => {
  using metrics = new Metrics("blue", SOURCES);
  // Some CPU and descriptors worth counting.
  const files = Array.from(
    { length: 5 },
    () => Deno.openSync(ROOT + "deno.json"),
  );
  try {
    let x = 0;
    for (let i = 0; i < 2e6; i++) x += Math.sqrt(i);
    assert.ok(x > 0);
    const { body } = await metrics.scrape(false);
    const proc = procSelf();
    const value = (name: string) => metricValue(body, name);

    const cpu = value("process_cpu_seconds_total");
    assert.ok(
      Math.abs(cpu - proc.cpuSeconds) <= 0.1,
      `${cpu} vs ${proc.cpuSeconds}`,
    );
    assert.ok(
      Math.abs(
        value("process_cpu_user_seconds_total") +
          value("process_cpu_system_seconds_total") - cpu,
      ) < 0.01, // each counter reads the clock on its own
    );
    const rss = value("process_resident_memory_bytes");
    assert.ok(
      Math.abs(rss - proc.rss) <= proc.rss * 0.05,
      `${rss} vs ${proc.rss}`,
    );
    // Runtime threads may open files meanwhile: compare when the count holds still.
    await until(async () => {
      const before = procFds();
      const open = metricValue(
        (await metrics.scrape(false)).body,
        "process_open_fds",
      );
      return open === before && procFds() === before;
    }, "process_open_fds to equal /proc/self/fd");
    assert.equal(value("process_max_fds"), proc.maxFds);
    const heapUsed = value("process_heap_used_bytes");
    const heapTotal = value("process_heap_total_bytes");
    assert.ok(0 < heapUsed && heapUsed <= heapTotal && heapTotal < rss);
  } finally {
    for (const f of files) f.close();
  }
});

Deno.test("the loop-lag gauge shows a blocked loop", async () => {
  using metrics = new Metrics("blue", SOURCES);
  const lagSamples = (body: string) =>
    parsePrometheusText(body).samples
      .filter((s) => s.name === "process_event_loop_lag_seconds");
  // Not started: nothing measured, no sample.
  assert.deepEqual(lagSamples((await metrics.scrape(false)).body), []);

  metrics.start();
  // Block the loop: the 250 ms timer is at least 600 - 250 ms late.
  const t0 = performance.now();
  while (performance.now() - t0 < 600) { /* busy */ }
  const blocked = lagSamples((await metrics.scrape(false)).body);
  assert.equal(blocked.length, 1);
  assert.ok(blocked[0]!.value >= 0.35, `lag ${blocked[0]!.value} s`);
  assert.ok(blocked[0]!.value < 5, `lag ${blocked[0]!.value} s`);
});

/**
 * Scrapes a fresh `Metrics` in a child process with the given permissions
 * (a process of its own: `deno test` type-checks before the runtime's time
 * origin, so its own start time is seconds earlier than that origin).
 */
async function scrapeInChild(
  permissions: string[],
): Promise<{ body: string; procStart: number | null }> {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-metrics-" });
  try {
    const script = `${dir}/scrape.ts`;
    const metricsUrl = new URL(
      "../src/observability/metrics.ts",
      import.meta.url,
    );
    await Deno.writeTextFile(
      script,
      `import { Metrics } from ${JSON.stringify(metricsUrl.href)};
using m = new Metrics("blue", {
  activeConnections: () => 0, ready: () => true, drainingSeconds: () => undefined,
});
const body = (await m.scrape(false)).body;
let procStart = null;
try {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const btime = Deno.readTextFileSync("/proc/stat").match(/^btime (\\d+)$/m)[1];
  procStart = Number(btime) + Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]) / 100;
} catch { /* needs --allow-all */ }
console.log(JSON.stringify({ body, procStart }));
`,
    );
    const out = await new Deno.Command(DENO, {
      args: ["run", ...permissions, `--config=${ROOT}deno.json`, script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    return JSON.parse(new TextDecoder().decode(out.stdout));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("process_start_time_seconds is when the process started", async () => {
  const { body, procStart } = await scrapeInChild(["--allow-all"]);
  assert.ok(procStart !== null);
  const start = metricValue(body, "process_start_time_seconds");
  // /proc/stat's btime has whole seconds.
  assert.ok(Math.abs(start - procStart) <= 1.5, `${start} vs ${procStart}`);
});

Deno.test("under a narrower permission set CPU reads, descriptors have no sample", async () => {
  // An operator's narrower set: /proc/self needs --allow-all on Deno 2.9.6.
  const { body, procStart } = await scrapeInChild([
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "--allow-sys",
  ]);
  assert.equal(procStart, null);
  const { types, samples } = parsePrometheusText(body);
  assert.ok(metricValue(body, "process_cpu_seconds_total") > 0);
  assert.ok(metricValue(body, "process_resident_memory_bytes") > 1e6);
  assert.ok(metricValue(body, "process_start_time_seconds") > 1.7e9);
  for (const name of ["process_open_fds", "process_max_fds"]) {
    assert.equal(types.get(name), "gauge", name);
    assert.deepEqual(samples.filter((s) => s.name === name), [], name);
  }
});
