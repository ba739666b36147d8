// deno-lint-ignore-file no-console -- a benchmark script: its output is the table
/**
 * Measures sockeye against the bare-runtime baseline in one run.
 *
 * For each target and socket count it starts a fresh server, reads its RSS
 * and CPU time, runs `sockeye loadtest --json` (closed loop) in a separate
 * process, reads RSS and CPU again, and stops the server. Runs are
 * interleaved across targets and repeated; the table shows medians.
 *
 * Usage:
 *   deno task bench [--targets bare,memory] [--sizes 100x1000,1000x100] [--repeat 3]
 *
 * Targets: `bare` (bench/bare_server.ts), `memory` (sockeye, defaults),
 * `memory-quiet` (sockeye with LOG_LEVEL=warning: no per-connection lines),
 * `redis` (sockeye with REDIS_URL; starts its own redis-server),
 * `redis-cluster` (sockeye with REDIS_CLUSTER_NODES; starts its own Redis
 * Cluster of three masters, no replicas, REDIS_WAIT_REPLICAS=0: the same
 * durability as `redis`), `redis-cluster-replicas` (three masters with a
 * replica each, REDIS_WAIT_REPLICAS=1: every batch waits for its replica),
 * `otel-off`, `otel-default`, `otel-all` (sockeye with OTEL_DENO and the
 * sampler settings, exporting to a local sink that discards),
 * `memory@REV` (sockeye at git revision REV, defaults: a before/after
 * comparison in one run, e.g. `--targets bare,memory@HEAD~3,memory`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { LoadtestReport } from "../src/cli/loadtest.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DENO = Deno.execPath();

interface Target {
  name: string;
  start(port: number): Promise<Deno.ChildProcess>;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function waitForPort(port: number): Promise<void> {
  const deadline = performance.now() + 15_000;
  while (performance.now() < deadline) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`Nothing listens on ${port}`);
}

function procStats(pid: number): { rssMiB: number; cpuS: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const rssKiB = Number(status.match(/VmRSS:\s+(\d+)/)![1]);
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return {
    rssMiB: rssKiB / 1024,
    cpuS: (Number(f[11]) + Number(f[12])) / 100,
  };
}

function spawn(args: string[], env: Record<string, string>) {
  return new Deno.Command(DENO, {
    args,
    env: { NO_COLOR: "1", ...env },
    stdout: "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
}

function sockeye(
  name: string,
  env: Record<string, string>,
  root = ROOT,
): Target {
  return {
    name,
    async start(port) {
      const child = spawn(["run", "-A", `${root}main.ts`, "serve"], {
        PORT: String(port),
        HOST: "127.0.0.1",
        ...env,
      });
      await waitForPort(port);
      await waitReady(port);
      return child;
    },
  };
}

/** A local OTLP/HTTP endpoint that accepts and discards, so export costs are real. */
function startOtlpSink(): { url: string; close(): Promise<void> } {
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async (req) => {
      await req.arrayBuffer();
      return new Response(null, { status: 200 });
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    async close() {
      ac.abort();
      await server.finished;
    },
  };
}

/** Extracts the tree at a git revision into a temporary folder. */
async function checkout(
  rev: string,
): Promise<{ root: string; remove(): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-bench-rev-" });
  const archive = new Deno.Command("git", {
    args: ["-C", ROOT, "archive", "--format=tar", rev],
    stdout: "piped",
  }).spawn();
  const tar = new Deno.Command("tar", {
    args: ["-x", "-C", dir],
    stdin: "piped",
  }).spawn();
  await archive.stdout.pipeTo(tar.stdin);
  if (!(await archive.status).success || !(await tar.status).success) {
    throw new Error(`Cannot check out revision ${rev}`);
  }
  return {
    root: dir + "/",
    remove: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Waits until sockeye's /readyz answers 200 (its store connected). */
async function waitReady(port: number): Promise<void> {
  const deadline = performance.now() + 15_000;
  while (performance.now() < deadline) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      await res.body?.cancel();
      if (res.status === 200) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`sockeye on ${port} is not ready`);
}

/**
 * Starts a Redis Cluster of `masters` masters with `replicas` replicas each
 * (redis-server, `redis-cli --cluster create`), on ports whose bus port
 * (port + 10000) is free too.
 */
async function startRedisCluster(
  masters: number,
  replicas: number,
): Promise<{ nodes: string; stop(): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "sockeye-bench-cluster-" });
  const children: Deno.ChildProcess[] = [];
  const ports: number[] = [];
  const stop = async () => {
    for (const child of children) child.kill("SIGTERM");
    await Promise.all(children.map((c) => c.status));
    await Deno.remove(dir, { recursive: true });
  };
  while (ports.length < masters * (1 + replicas)) {
    const port = 20000 + Math.floor(Math.random() * 25536);
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      Deno.listen({ hostname: "127.0.0.1", port: port + 10000 }).close();
    } catch {
      continue;
    }
    ports.push(port);
    await Deno.mkdir(`${dir}/${port}`);
    children.push(
      new Deno.Command("redis-server", {
        args: [
          "--port",
          String(port),
          "--bind",
          "127.0.0.1",
          "--dir",
          `${dir}/${port}`,
          "--save",
          "",
          "--appendonly",
          "no",
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          "nodes.conf",
        ],
        stdout: "null",
        stderr: "null",
      }).spawn(),
    );
  }
  for (const port of ports) await waitForPort(port);
  const nodes = ports.map((p) => `127.0.0.1:${p}`);
  const created = await new Deno.Command("redis-cli", {
    args: [
      "--cluster",
      "create",
      ...nodes,
      "--cluster-replicas",
      String(replicas),
      "--cluster-yes",
    ],
    stdout: "null",
    stderr: "null",
  }).output();
  if (!created.success) {
    await stop();
    throw new Error("redis-cli --cluster create failed");
  }
  return { nodes: nodes.join(","), stop };
}

async function startRedis(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "sockeye-bench-redis-" });
  const child = new Deno.Command("redis-server", {
    args: [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitForPort(port);
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    targets: { type: "string", default: "bare,memory" },
    sizes: { type: "string", default: "100x1000,1000x100" },
    repeat: { type: "string", default: "3" },
  },
});
const sizes = values.sizes.split(",").map((s) => {
  const [c, n] = s.split("x").map(Number);
  return { connections: c!, messages: n! };
});
const repeat = Number(values.repeat);
const cleanups: Array<() => Promise<void>> = [];
const targets: Target[] = [];
for (const name of values.targets.split(",")) {
  if (name === "bare") {
    targets.push({
      name,
      async start(port) {
        const child = spawn([
          "run",
          "--allow-net",
          `${ROOT}bench/bare_server.ts`,
          String(port),
        ], {});
        await waitForPort(port);
        return child;
      },
    });
  } else if (name === "memory") {
    targets.push(sockeye(name, {}));
  } else if (name.startsWith("memory@")) {
    const tree = await checkout(name.slice("memory@".length));
    cleanups.push(tree.remove);
    targets.push(sockeye(name, {}, tree.root));
  } else if (name === "memory-quiet") {
    targets.push(sockeye(name, { LOG_LEVEL: "warning" }));
  } else if (name === "redis") {
    const redis = await startRedis();
    cleanups.push(redis.stop);
    targets.push(sockeye(name, { REDIS_URL: redis.url }));
  } else if (name === "redis-cluster" || name === "redis-cluster-replicas") {
    const replicas = name === "redis-cluster" ? 0 : 1;
    const cluster = await startRedisCluster(3, replicas);
    cleanups.push(cluster.stop);
    targets.push(
      sockeye(name, {
        REDIS_CLUSTER_NODES: cluster.nodes,
        REDIS_WAIT_REPLICAS: String(replicas),
      }),
    );
  } else if (name.startsWith("otel-")) {
    const sink = startOtlpSink();
    cleanups.push(sink.close);
    const otel = {
      OTEL_DENO: "true",
      OTEL_EXPORTER_OTLP_ENDPOINT: sink.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_SERVICE_NAME: "sockeye-bench",
    };
    if (name === "otel-off") targets.push(sockeye(name, {}));
    else if (name === "otel-default") targets.push(sockeye(name, otel));
    else if (name === "otel-all") {
      targets.push(
        sockeye(name, {
          ...otel,
          OTEL_TRACES_SAMPLER: "always_on",
          TRACE_FRAME_RATIO: "1",
        }),
      );
    } else throw new Error(`Unknown target ${name}`);
  } else {
    throw new Error(`Unknown target ${name}`);
  }
}

interface Row {
  target: string;
  size: string;
  perSecond: number;
  p50: number;
  p99: number;
  rssBefore: number;
  rssAfter: number;
  cpuUsPerMsg: number;
  errors: number;
}
const rows: Row[] = [];
for (let r = 0; r < repeat; r++) {
  for (const size of sizes) {
    for (const target of targets) {
      const port = freePort();
      const child = await target.start(port);
      const before = procStats(child.pid);
      const out = await new Deno.Command(DENO, {
        args: [
          "run",
          "-A",
          `${ROOT}main.ts`,
          "loadtest",
          "--url",
          `ws://127.0.0.1:${port}/ws/chat/`,
          "-c",
          String(size.connections),
          "-n",
          String(size.messages),
          "--timeout",
          "300",
          "--json",
        ],
        stdout: "piped",
        stderr: "inherit",
      }).output();
      const after = procStats(child.pid);
      child.kill("SIGTERM");
      await child.status;
      const report = JSON.parse(
        new TextDecoder().decode(out.stdout),
      ) as LoadtestReport;
      const row: Row = {
        target: target.name,
        size: `${size.connections}x${size.messages}`,
        perSecond: report.messages.perSecond,
        p50: report.latencyMs.p50,
        p99: report.latencyMs.p99,
        rssBefore: Math.round(before.rssMiB),
        rssAfter: Math.round(after.rssMiB),
        cpuUsPerMsg: Math.round(
          (after.cpuS - before.cpuS) / Math.max(1, report.messages.ok) * 1e7,
        ) / 10,
        errors: Object.values(report.errors).reduce((a, b) => a + b, 0),
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    }
  }
}
for (const cleanup of cleanups) await cleanup();

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
};
console.log(
  `| target | sockets × msgs | msg/s (median of ${repeat}) | vs ${
    targets[0]!.name
  } | p50 ms | p99 ms | RSS before → after MiB | server CPU µs/msg | errors |`,
);
console.log("|---|---|---|---|---|---|---|---|---|");
for (const size of sizes) {
  const key = `${size.connections}x${size.messages}`;
  const base = median(
    rows.filter((r) => r.target === targets[0]!.name && r.size === key).map((
      r,
    ) => r.perSecond),
  );
  for (const target of targets) {
    const rs = rows.filter((r) => r.target === target.name && r.size === key);
    const m = (f: (r: Row) => number) => median(rs.map(f));
    console.log(
      `| ${target.name} | ${key.replace("x", " × ")} | ${
        m((r) => r.perSecond)
      } | ${(m((r) => r.perSecond) / base).toFixed(2)}× | ${
        m((r) => r.p50)
      } | ${m((r) => r.p99)} | ${m((r) => r.rssBefore)} → ${
        m((r) => r.rssAfter)
      } | ${m((r) => r.cpuUsPerMsg)} | ${
        rs.reduce((a, r) => a + r.errors, 0)
      } |`,
    );
  }
}
