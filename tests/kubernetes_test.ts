/**
 * The Kubernetes manifests (`deploy/kubernetes/`): every overlay renders with
 * `kubectl kustomize`, every rendered object validates against its API
 * schema offline (kubernetes-models, and its Prometheus Operator models for
 * PodMonitor and PrometheusRule), and what they say agrees with sockeye's
 * settings and with `monitoring/`.
 */
import assert from "node:assert/strict";
import { parse, parseAllDocuments } from "yaml";
import { ConfigMap, Namespace, Secret, Service } from "kubernetes-models/v1";
import { Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1";
import {
  PodMonitor,
  PrometheusRule,
} from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { parseSettings, SETTINGS, WATCHDOG_MARGIN_S } from "../src/settings.ts";
import {
  prometheusRule,
  RULE_MANIFEST,
  RULES_FILE,
} from "../deploy/kubernetes/generate.ts";
import { ROOT } from "./_helpers.ts";

const KUBE = `${ROOT}deploy/kubernetes/`;

/** Resident memory at rest, and per socket (measured at 19,000 sockets). */
const BASE_RSS_BYTES = 70 * 1024 * 1024;
const SOCKET_BYTES = 22_600;

// deno-lint-ignore no-explicit-any -- rendered YAML, checked field by field
type Obj = any;

/** Every model, by `apiVersion/kind`: a kind missing here fails the test. */
const MODELS: Record<string, new (data: Obj) => { validate(): void }> = {
  "v1/Namespace": Namespace,
  "v1/ConfigMap": ConfigMap,
  "v1/Secret": Secret,
  "v1/Service": Service,
  "apps/v1/Deployment": Deployment,
  "apps/v1/StatefulSet": StatefulSet,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
  "networking.k8s.io/v1/NetworkPolicy": NetworkPolicy,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};

/** Renders a kustomization with the kubectl on this machine. */
async function kustomize(dir: string): Promise<Obj[]> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("kubectl", {
      args: ["kustomize", dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (error) {
    throw new Error(
      "kubectl (with kustomize v5) is needed to render deploy/kubernetes",
      { cause: error },
    );
  }
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `kubectl kustomize ${dir}: ${stderr}`);
  assert.equal(stderr.trim(), "", `kubectl kustomize ${dir} warns`);
  return parseAllDocuments(new TextDecoder().decode(out.stdout))
    .map((doc) => doc.toJSON())
    .filter((o) => o !== null);
}

function validateAll(objects: Obj[]): void {
  for (const o of objects) {
    const key = `${o.apiVersion}/${o.kind}`;
    const Model = MODELS[key];
    assert.ok(Model, `no schema for ${key} (${o.metadata?.name})`);
    try {
      new Model(o).validate();
    } catch (error) {
      throw new Error(
        `${key} ${o.metadata?.name}: ${(error as Error).message}`,
      );
    }
  }
}

const find = (objects: Obj[], kind: string) =>
  objects.filter((o) => o.kind === kind);

/** A Deployment's environment as sockeye reads it: ConfigMap, then env. */
function environment(objects: Obj[], deployment: Obj): Record<string, string> {
  const container = deployment.spec.template.spec.containers[0];
  const env: Record<string, string> = {};
  for (const from of container.envFrom ?? []) {
    const cm = find(objects, "ConfigMap").find((c) =>
      c.metadata.name === from.configMapRef.name
    );
    assert.ok(cm, `ConfigMap ${from.configMapRef.name} is rendered`);
    Object.assign(env, cm.data);
  }
  for (const e of container.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.labels['color']") {
      env[e.name] = deployment.spec.template.metadata.labels.color;
    }
  }
  return env;
}

/** What every rendering of the base must hold, whatever the overlay. */
function checkSockeye(objects: Obj[], secretExternal: boolean): void {
  const deployments = find(objects, "Deployment").filter((d) =>
    d.metadata.labels?.["app.kubernetes.io/name"] === "sockeye"
  );
  assert.deepEqual(
    deployments.map((d) => d.metadata.name).sort(),
    ["sockeye-blue", "sockeye-green"],
  );
  const live = find(objects, "Service").find((s) =>
    s.metadata.name === "sockeye"
  );
  assert.ok(["blue", "green"].includes(live.spec.selector.color));
  for (const d of deployments) {
    const color = d.metadata.labels.color;
    const pod = d.spec.template.spec;
    const [container] = pod.containers;
    const env = environment(objects, d);
    assert.equal(env.COLOR, color);
    assert.equal(d.spec.template.metadata.labels.color, color);
    // The color's own Service selects its pods only.
    const own = find(objects, "Service").find((s) =>
      s.metadata.name === `sockeye-${color}`
    );
    assert.equal(own.spec.selector.color, color);

    // The settings parse as sockeye would parse them (exit 2 otherwise),
    // each secret read from a file in the Secret's volume.
    const mount = container.volumeMounts.find((m: Obj) => m.name === "secrets");
    const volume = pod.volumes.find((v: Obj) => v.name === "secrets");
    const secret = find(objects, "Secret").find((s) =>
      s.metadata.name === volume.secret.secretName
    );
    if (secretExternal) {
      assert.equal(secret, undefined);
      assert.equal(volume.secret.secretName, "sockeye-secrets");
    }
    const settings = parseSettings(env, {
      readFile(path) {
        assert.ok(path.startsWith(`${mount.mountPath}/`), path);
        if (secretExternal) return "x";
        const key = path.slice(mount.mountPath.length + 1);
        assert.ok(key in secret.data, `the Secret holds ${key}`);
        return atob(secret.data[key]);
      },
    });

    // Ports: the public one is PORT (the contract's default), the admin one
    // ADMIN_PORT; probes use the public one.
    const ports = Object.fromEntries(
      container.ports.map((p: Obj) => [p.name, p.containerPort]),
    );
    assert.equal(ports.http, settings.port);
    assert.equal(String(settings.port), SETTINGS.port.default);
    assert.equal(String(ports.admin), env.ADMIN_PORT);
    assert.equal(env.ADMIN_HOST, "0.0.0.0");
    assert.ok(env.ADMIN_TOKEN_FILE, "the admin port has a token");
    for (const probe of ["startupProbe", "readinessProbe"]) {
      assert.deepEqual(container[probe].httpGet, {
        path: "/readyz",
        port: "http",
      }, probe);
    }
    assert.deepEqual(container.livenessProbe.httpGet, {
      path: "/healthz",
      port: "http",
    });

    // The drain fits the grace period: SHUTDOWN_TIMEOUT_S covers the whole
    // drain (DRAIN_DELAY_S inside it), the watchdog may take 5 s more.
    const grace = pod.terminationGracePeriodSeconds;
    assert.ok(settings.drainDelayS > 0, "DRAIN_DELAY_S lets endpoints go");
    assert.ok(
      grace > settings.shutdownTimeoutS + WATCHDOG_MARGIN_S,
      `grace ${grace} s`,
    );
    assert.ok(grace > settings.shutdownTimeoutS + settings.drainDelayS);

    // Non-root, read-only, nothing extra.
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.automountServiceAccountToken, false);
    assert.equal(container.securityContext.readOnlyRootFilesystem, true);
    assert.equal(container.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(container.securityContext.capabilities.drop, ["ALL"]);
    assert.ok(pod.topologySpreadConstraints.length > 0);

    // Memory for MAX_CONNECTIONS sockets stays under the memory guard.
    const limit = bytes(container.resources.limits.memory);
    const full = BASE_RSS_BYTES + settings.maxConnections! * SOCKET_BYTES;
    assert.ok(
      settings.memoryGuardRatio * limit > full,
      `${limit} B limit for ${full} B`,
    );
    assert.ok(bytes(container.resources.requests.memory) >= full);

    // One pod of a color at a time may be evicted.
    const pdb = find(objects, "PodDisruptionBudget").find((p) =>
      p.spec.selector.matchLabels.color === color
    );
    assert.equal(pdb.spec.maxUnavailable, 1);
  }

  // The admin port only from Prometheus; the public one from anywhere.
  const policy = find(objects, "NetworkPolicy").find((p) =>
    p.metadata.name === "sockeye"
  );
  const rules = policy.spec.ingress;
  const admin = rules.find((r: Obj) =>
    r.ports.some((p: Obj) => p.port === "admin")
  );
  assert.ok(admin.from.length > 0);
  for (const from of admin.from) {
    assert.equal(
      from.podSelector.matchLabels["app.kubernetes.io/name"],
      "prometheus",
    );
  }
  const open = rules.find((r: Obj) =>
    r.ports.some((p: Obj) => p.port === "http")
  );
  assert.equal(open.from, undefined);
  assert.ok(!open.ports.some((p: Obj) => p.port === "admin"));
}

function bytes(quantity: string): number {
  const m = /^(\d+)(Ki|Mi|Gi)?$/.exec(quantity);
  assert.ok(m, `a memory quantity: ${quantity}`);
  const unit = { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 }[m[2] ?? ""] ?? 1;
  return Number(m[1]) * unit;
}

Deno.test("every kustomization renders, and every object validates against its schema", async () => {
  for (
    const dir of ["base", "overlays/compose-like", "overlays/production"]
  ) {
    const objects = await kustomize(`${KUBE}${dir}`);
    assert.ok(objects.length > 0, dir);
    validateAll(objects);
  }
});

Deno.test("compose-like: one pod per color, Redis only sockeye reaches, the generated Secret holds every *_FILE", async () => {
  const objects = await kustomize(`${KUBE}overlays/compose-like`);
  checkSockeye(objects, false);
  assert.equal(find(objects, "HorizontalPodAutoscaler").length, 0);
  for (const d of find(objects, "Deployment")) {
    assert.equal(d.spec.replicas, 1);
    assert.equal(d.metadata.namespace, "sockeye");
  }
  const redis = find(objects, "NetworkPolicy").find((p) =>
    p.metadata.name === "redis"
  );
  assert.deepEqual(redis.spec.ingress[0].from, [{
    podSelector: { matchLabels: { "app.kubernetes.io/name": "sockeye" } },
  }]);
  const env = environment(objects, find(objects, "Deployment")[0]);
  assert.equal(env.REDIS_URL_FILE, "/run/secrets/sockeye/redis-url");
});

Deno.test("production: Sentinel, CPU autoscaling per color, PodMonitor on the admin port with the job the rules expect", async () => {
  const objects = await kustomize(`${KUBE}overlays/production`);
  checkSockeye(objects, true);
  const deployments = find(objects, "Deployment");
  for (const d of deployments) {
    const env = environment(objects, d);
    const settings = parseSettings(env, { readFile: () => "x" });
    assert.ok(settings.redisSentinels!.length > 0);
    assert.equal(settings.redisWaitReplicas, 1);
    assert.ok(env.REDIS_PASSWORD_FILE && env.METRICS_TOKEN_FILE);
    const hpa = find(objects, "HorizontalPodAutoscaler").find((h) =>
      h.spec.scaleTargetRef.name === d.metadata.name
    );
    assert.ok(hpa, `an HPA for ${d.metadata.name}`);
    assert.equal(hpa.spec.metrics[0].resource.name, "cpu");
    assert.ok(d.spec.template.spec.containers[0].resources.requests.cpu);
  }
  const [monitor] = find(objects, "PodMonitor");
  const [endpoint] = monitor.spec.podMetricsEndpoints;
  assert.equal(endpoint.port, "admin");
  assert.equal(endpoint.path, "/metrics");
  assert.equal(endpoint.authorization.credentials.name, "sockeye-secrets");
  assert.equal(endpoint.authorization.credentials.key, "metrics-token");
  // job = the pods' value of jobLabel: what the rules select on.
  const job = deployments[0].spec.template.metadata
    .labels[monitor.spec.jobLabel];
  const rules = find(objects, "PrometheusRule")[0];
  const jobs = new Set(
    JSON.stringify(rules.spec.groups).match(/job=\\"([^\\"]+)\\"/g)!.map((m) =>
      m.split('\\"')[1]
    ),
  );
  assert.deepEqual([...jobs], [job]);
});

Deno.test("the PrometheusRule is generated from monitoring/prometheus/rules and not stale", async () => {
  const rulesText = await Deno.readTextFile(`${ROOT}${RULES_FILE}`);
  const written = parse(await Deno.readTextFile(`${ROOT}${RULE_MANIFEST}`));
  assert.deepEqual(
    written,
    parse(prometheusRule(rulesText)),
    "run deno task k8s:generate",
  );
  const objects = await kustomize(`${KUBE}overlays/production`);
  const [rule] = find(objects, "PrometheusRule");
  assert.deepEqual(rule.spec.groups, parse(rulesText).groups);
  assert.throws(() => prometheusRule("rules: []"), /expected a groups list/);
});

Deno.test("the custom-metric autoscaler component scales each color on open sockets", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-kustomize-" });
  try {
    const rel = (p: string) =>
      `${"../".repeat(dir.split("/").length - 1)}${KUBE.slice(1)}${p}`;
    await Deno.writeTextFile(
      `${dir}/kustomization.yaml`,
      [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:",
        `  - ${rel("overlays/production")}`,
        "components:",
        `  - ${rel("components/hpa-connections")}`,
        "",
      ].join("\n"),
    );
    const objects = await kustomize(dir);
    validateAll(objects);
    const hpas = find(objects, "HorizontalPodAutoscaler");
    assert.equal(hpas.length, 2);
    for (const hpa of hpas) {
      assert.deepEqual(hpa.spec.metrics, [{
        type: "Pods",
        pods: {
          metric: { name: "websocket_connections_active" },
          target: { type: "AverageValue", averageValue: "15000" },
        },
      }]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
