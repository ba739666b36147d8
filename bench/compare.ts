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
 *   deno task bench --mode storm [--connects 10000] [--concurrency 200] [--warmup 0]
 *   deno task bench --mode held [--held 19000]
 *
 * Modes: `messages` (the default: message throughput, latency and server
 * CPU per message, above); `storm` (N connects, at most `--concurrency` in
 * flight, each opens, sends one message, waits for `{"count": 1}` and
 * closes, from `bench/storm_client.ts`: connects per second and server CPU
 * per connection from `/proc`; `--warmup N` runs N such connects first and
 * leaves them out, so the figure is a warm server's, without the JIT's
 * compiling and the heap's first growth); `held` (N sockets opened by
 * `bench/hold_client.ts`, one message each, then held: server RSS per held
 * socket over the idle server's; then SIGTERM: seconds to exit, the
 * `Drain complete` line's `shutdown_seconds`, `closed` and `forced`, and
 * the close codes and bye frames the clients saw).
 *
 * Targets: `bare` (bench/bare_server.ts), `bare-drain` (the same with
 * sockeye's drain protocol on SIGTERM: bye, 500 ms, 1001; for `--mode
 * held`), `memory` (sockeye, defaults),
 * `memory-quiet` (sockeye with LOG_LEVEL=warning: no per-connection lines),
 * `redis` (sockeye with REDIS_URL; starts its own redis-server),
 * `redis-cluster` (sockeye with REDIS_CLUSTER_NODES; starts its own Redis
 * Cluster of three masters, no replicas, REDIS_WAIT_REPLICAS=0: the same
 * durability as `redis`), `redis-cluster-replicas` (three masters with a
 * replica each, REDIS_WAIT_REPLICAS=1: every batch waits for its replica),
 * `otel-off`, `otel-default`, `otel-all` (sockeye with OTEL_DENO and the
 * sampler settings, exporting to a local sink that discards),
 * `memory@REV` (sockeye at git revision REV, defaults: a before/after
 * comparison in one run, e.g. `--targets bare,memory@HEAD~3,memory`),
 * `auth-hs256`, `auth-rs256` (sockeye with AUTH_JWT_SECRET or an RSA
 * AUTH_JWT_PUBLIC_KEY; the load test sends a token made here with every
 * handshake). Authentication costs per connection, not per frame: compare
 * with `memory` at many sockets and few messages, e.g. `--sizes 1000x1`,
 * and read the CPU per connection column,
 * `profiling` (sockeye with continuous profiling: `PYROSCOPE_URL` at a local
 * sink that accepts and discards, `PROFILE_INTERVAL_S` default),
 * `profile-on-demand` (sockeye with a 10 s CPU profile from its admin port
 * running when the load starts; compare with `memory`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { exportSPKI, generateKeyPair, SignJWT } from "jose";
import type { LoadtestReport } from "../src/cli/loadtest.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DENO = Deno.execPath();

/** A started server; with `capture`, its stdout is read for the drain line. */
interface Started {
  readonly child: Deno.ChildProcess;
  /** The `Drain complete` line, once the process has exited (captured only). */
  drainLine(): Promise<Record<string, unknown> | undefined>;
}

interface Target {
  name: string;
  start(port: number, capture?: boolean): Promise<Started>;
  /** Extra `sockeye loadtest` arguments, e.g. `--token`. */
  loadtestArgs?: string[];
}

/** A token valid for a day, signed with `key`. */
function benchToken(key: CryptoKey | Uint8Array, alg: string): Promise<string> {
  return new SignJWT({ sub: "bench" })
    .setProtectedHeader({ alg })
    .setExpirationTime("1d")
    .sign(key);
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

/** Reads a stream as lines of text. */
async function* lines(stream: ReadableStream<Uint8Array>) {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl;
    while ((nl = rest.indexOf("\n")) >= 0) {
      yield rest.slice(0, nl);
      rest = rest.slice(nl + 1);
    }
  }
  if (rest) yield rest;
}

function spawn(
  args: string[],
  env: Record<string, string>,
  capture = false,
): Started {
  const child = new Deno.Command(DENO, {
    args,
    env: { NO_COLOR: "1", ...env },
    stdout: capture ? "piped" : "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
  // Every line is read (a full pipe would stall the server); only the
  // drain line is kept.
  const drain = capture
    ? (async () => {
      let found: Record<string, unknown> | undefined;
      for await (const line of lines(child.stdout)) {
        if (line.includes('"Drain complete"')) found = JSON.parse(line);
      }
      return found;
    })()
    : Promise.resolve(undefined);
  return { child, drainLine: () => drain };
}

function sockeye(
  name: string,
  env: Record<string, string>,
  root = ROOT,
): Target {
  return {
    name,
    async start(port, capture) {
      const started = spawn(["run", "-A", `${root}main.ts`, "serve"], {
        PORT: String(port),
        HOST: "127.0.0.1",
        ...env,
      }, capture);
      await waitForPort(port);
      await waitReady(port);
      return started;
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

/**
 * sockeye whose admin port is taking a 10 s CPU profile when the load
 * starts. Two profile requests go out at once: the one refused (409) comes
 * back at once, which says the other holds the profiler and V8 samples.
 */
function profilingOnDemand(name: string): Target {
  return {
    name,
    async start(port, capture) {
      const adminPort = freePort();
      const started = await sockeye(name, { ADMIN_PORT: String(adminPort) })
        .start(port, capture);
      await waitForPort(adminPort);
      const url =
        `http://127.0.0.1:${adminPort}/debug/pprof/profile?seconds=10`;
      const both = [fetch(url), fetch(url)];
      for (const p of both) p.then((r) => r.body?.cancel(), () => {});
      const first = await Promise.race(both);
      if (first.status !== 409) {
        throw new Error(
          `Expected a 409 beside the profile, got ${first.status}`,
        );
      }
      return started;
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
    mode: { type: "string", default: "messages" },
    connects: { type: "string", default: "10000" },
    warmup: { type: "string", default: "0" },
    concurrency: { type: "string", default: "200" },
    held: { type: "string", default: "19000" },
  },
});
if (!["messages", "storm", "held"].includes(values.mode)) {
  throw new Error(`Unknown mode ${values.mode}: messages, storm or held`);
}
const sizes = values.sizes.split(",").map((s) => {
  const [c, n] = s.split("x").map(Number);
  return { connections: c!, messages: n! };
});
const repeat = Number(values.repeat);
const cleanups: Array<() => Promise<void>> = [];
const targets: Target[] = [];
for (const name of values.targets.split(",")) {
  if (name === "bare" || name === "bare-drain") {
    targets.push({
      name,
      async start(port, capture) {
        const started = spawn(
          [
            "run",
            "--allow-net",
            `${ROOT}bench/bare_server.ts`,
            String(port),
            ...(name === "bare-drain" ? ["--drain"] : []),
          ],
          {},
          capture,
        );
        await waitForPort(port);
        return started;
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
  } else if (name === "auth-hs256") {
    const secret = crypto.randomUUID() + crypto.randomUUID();
    targets.push({
      ...sockeye(name, { AUTH_JWT_SECRET: secret }),
      loadtestArgs: [
        "--token",
        await benchToken(new TextEncoder().encode(secret), "HS256"),
      ],
    });
  } else if (name === "auth-rs256") {
    const keys = await generateKeyPair("RS256", { extractable: true });
    targets.push({
      ...sockeye(name, {
        AUTH_JWT_PUBLIC_KEY: await exportSPKI(keys.publicKey),
      }),
      loadtestArgs: ["--token", await benchToken(keys.privateKey, "RS256")],
    });
  } else if (name === "profiling") {
    const sink = startOtlpSink();
    cleanups.push(sink.close);
    targets.push(sockeye(name, { PYROSCOPE_URL: sink.url }));
  } else if (name === "profile-on-demand") {
    targets.push(profilingOnDemand(name));
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

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
};

if (values.mode === "storm") await storm();
else if (values.mode === "held") await held();
else await messages();
for (const cleanup of cleanups) await cleanup();

async function messages() {
  interface Row {
    target: string;
    size: string;
    perSecond: number;
    p50: number;
    p99: number;
    rssBefore: number;
    rssAfter: number;
    cpuUsPerMsg: number;
    cpuUsPerConn: number;
    errors: number;
  }
  const rows: Row[] = [];
  for (let r = 0; r < repeat; r++) {
    for (const size of sizes) {
      for (const target of targets) {
        const port = freePort();
        const { child } = await target.start(port);
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
            ...target.loadtestArgs ?? [],
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
          cpuUsPerConn: Math.round(
            (after.cpuS - before.cpuS) /
              Math.max(1, report.connections.opened) * 1e6,
          ),
          errors: Object.values(report.errors).reduce((a, b) => a + b, 0),
        };
        rows.push(row);
        console.error(JSON.stringify(row));
      }
    }
  }
  console.log(
    `| target | sockets × msgs | msg/s (median of ${repeat}) | vs ${
      targets[0]!.name
    } | p50 ms | p99 ms | RSS before → after MiB | server CPU µs/msg | server CPU µs/conn | errors |`,
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|");
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
        } | ${m((r) => r.cpuUsPerMsg)} | ${m((r) => r.cpuUsPerConn)} | ${
          rs.reduce((a, r) => a + r.errors, 0)
        } |`,
      );
    }
  }
}

/** Runs a bench client script and returns its JSON lines as they come. */
function client(script: string, args: string[]) {
  const child = new Deno.Command(DENO, {
    args: ["run", "--allow-net", `${ROOT}bench/${script}`, ...args],
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  return { child, lines: lines(child.stdout) };
}

async function nextJson(
  it: AsyncGenerator<string>,
): Promise<Record<string, unknown>> {
  const { value, done } = await it.next();
  if (done) throw new Error("A bench client ended without its report");
  return JSON.parse(value);
}

async function storm() {
  const connects = Number(values.connects);
  const concurrency = values.concurrency;
  interface StormRow {
    target: string;
    perSecond: number;
    cpuUsPerConnect: number;
    rssBefore: number;
    rssAfter: number;
    errors: number;
  }
  const rows: StormRow[] = [];
  for (let r = 0; r < repeat; r++) {
    for (const target of targets) {
      const port = freePort();
      const { child } = await target.start(port);
      if (Number(values.warmup) > 0) {
        const warm = client("storm_client.ts", [
          `ws://127.0.0.1:${port}/ws/chat/`,
          values.warmup,
          concurrency,
        ]);
        await nextJson(warm.lines);
        await warm.child.status;
      }
      const before = procStats(child.pid);
      const run = client("storm_client.ts", [
        `ws://127.0.0.1:${port}/ws/chat/`,
        String(connects),
        concurrency,
      ]);
      const report = await nextJson(run.lines);
      await run.child.status;
      const after = procStats(child.pid);
      child.kill("SIGTERM");
      await child.status;
      const row: StormRow = {
        target: target.name,
        perSecond: Math.round(
          (report.ok as number) / (report.seconds as number),
        ),
        cpuUsPerConnect: Math.round(
          (after.cpuS - before.cpuS) / connects * 1e6,
        ),
        rssBefore: Math.round(before.rssMiB),
        rssAfter: Math.round(after.rssMiB),
        errors: Object.values(report.errors as Record<string, number>)
          .reduce((a, b) => a + b, 0),
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    }
  }
  console.log(
    `| target | connects (${concurrency} in flight${
      Number(values.warmup) > 0 ? `, after ${values.warmup} to warm up` : ""
    }) | connects/s (median of ${repeat}) | server CPU µs/connect | vs ${
      targets[0]!.name
    } | RSS before → after MiB | errors |`,
  );
  console.log("|---|---|---|---|---|---|---|");
  const base = median(
    rows.filter((r) => r.target === targets[0]!.name).map((r) =>
      r.cpuUsPerConnect
    ),
  );
  for (const target of targets) {
    const rs = rows.filter((r) => r.target === target.name);
    const m = (f: (r: StormRow) => number) => median(rs.map(f));
    console.log(
      `| ${target.name} | ${connects} | ${m((r) => r.perSecond)} | ${
        m((r) => r.cpuUsPerConnect)
      } | ${(m((r) => r.cpuUsPerConnect) / base).toFixed(2)}× | ${
        m((r) => r.rssBefore)
      } → ${m((r) => r.rssAfter)} | ${rs.reduce((a, r) => a + r.errors, 0)} |`,
    );
  }
}

async function held() {
  const total = Number(values.held);
  // One client process holds at most 10,000 sockets (a descriptor each).
  const processes = Math.ceil(total / 10_000);
  interface HeldRow {
    target: string;
    held: number;
    rssIdle: number;
    rssHeld: number;
    kibPerSocket: number;
    exitSeconds: number;
    shutdownSeconds: number | undefined;
    closed: number | undefined;
    forced: number | undefined;
    closes: Record<string, number>;
    /** Bye frames the clients received. */
    byes: number;
    errors: number;
  }
  const rows: HeldRow[] = [];
  for (let r = 0; r < repeat; r++) {
    for (const target of targets) {
      const port = freePort();
      const started = await target.start(port, true);
      const pid = started.child.pid;
      const idle = procStats(pid);
      const clients = Array.from(
        { length: processes },
        (_, i) =>
          client("hold_client.ts", [
            `ws://127.0.0.1:${port}/ws/chat/`,
            String(
              Math.floor(total / processes) +
                (i < total % processes ? 1 : 0),
            ),
            values.concurrency,
          ]),
      );
      const holding = await Promise.all(clients.map((c) => nextJson(c.lines)));
      const count = holding.reduce((a, h) => a + (h.held as number), 0);
      const errors = holding.reduce(
        (a, h) =>
          a +
          Object.values(h.errors as Record<string, number>)
            .reduce((x, y) => x + y, 0),
        0,
      );
      // Let the last replies and the runtime's buffers settle.
      await new Promise((r) => setTimeout(r, 1000));
      const busy = procStats(pid);
      const t0 = performance.now();
      started.child.kill("SIGTERM");
      await started.child.status;
      const exitSeconds = (performance.now() - t0) / 1000;
      const drain = await started.drainLine();
      const closes: Record<string, number> = {};
      let byes = 0;
      await Promise.all(clients.map(async (c) => {
        const timer = setTimeout(() => c.child.kill("SIGTERM"), 10_000);
        const done: Record<string, unknown> = await nextJson(c.lines)
          .catch(() => ({ closes: {} }));
        clearTimeout(timer);
        for (const [code, n] of Object.entries(done.closes ?? {})) {
          closes[code] = (closes[code] ?? 0) + (n as number);
        }
        byes += (done.byes as number | undefined) ?? 0;
        await c.child.status;
      }));
      const row: HeldRow = {
        target: target.name,
        held: count,
        rssIdle: Math.round(idle.rssMiB),
        rssHeld: Math.round(busy.rssMiB),
        kibPerSocket: Math.round(
          (busy.rssMiB - idle.rssMiB) * 1024 / Math.max(1, count) * 10,
        ) / 10,
        exitSeconds: Math.round(exitSeconds * 1000) / 1000,
        shutdownSeconds: drain?.shutdown_seconds as number | undefined,
        closed: drain?.closed as number | undefined,
        forced: drain?.forced as number | undefined,
        closes,
        byes,
        errors,
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    }
  }
  console.log(
    `| target | sockets held | RSS idle → held MiB | KiB per held socket (median of ${repeat}) | vs ${
      targets[0]!.name
    } | SIGTERM → exit s | Drain complete: shutdown_seconds, closed, forced | client closes | byes | errors |`,
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|");
  const base = median(
    rows.filter((r) => r.target === targets[0]!.name).map((r) =>
      r.kibPerSocket
    ),
  );
  for (const target of targets) {
    const rs = rows.filter((r) => r.target === target.name);
    const m = (f: (r: HeldRow) => number) => median(rs.map(f));
    const last = rs.at(-1)!;
    console.log(
      `| ${target.name} | ${m((r) => r.held)} | ${m((r) => r.rssIdle)} → ${
        m((r) => r.rssHeld)
      } | ${m((r) => r.kibPerSocket)} | ${
        (m((r) => r.kibPerSocket) / base).toFixed(2)
      }× | ${m((r) => r.exitSeconds)} | ${
        last.shutdownSeconds === undefined
          ? "—"
          : `${
            m((r) => r.shutdownSeconds ?? NaN)
          }, ${last.closed}, ${last.forced}`
      } | ${
        Object.entries(last.closes).map(([k, v]) => `${k}=${v}`).join(" ")
      } | ${last.byes} | ${rs.reduce((a, r) => a + r.errors, 0)} |`,
    );
  }
}
