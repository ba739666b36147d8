// deno-lint-ignore-file no-console -- a measurement script: its output is the figures
/**
 * Full V8 heap snapshots of a server holding sockets, for two questions.
 *
 * How long a snapshot blocks the event loop of sockeye holding N sockets
 * (the reason `/debug/pprof/heap` serves the sampling heap profile and no
 * snapshot, README "Admin API"): one snapshot while a 5 ms timer measures
 * its own drift; prints one JSON line.
 *
 * What each held socket keeps on the JavaScript heap (`--per-socket`): a
 * snapshot at N/5 sockets and one at N, the difference by kind (constructor,
 * closure name, string, internal array) divided by the sockets opened in
 * between, so that one-time costs (compiled code, caches) fall out. With
 * `--bare`, the same for `bench/bare_server.ts`'s handler: the runtime's own
 * share, to subtract. Prints a table, largest kinds first.
 *
 * Usage:
 *   deno run -A bench/heap_snapshot.ts [SOCKETS]                        # default 5000
 *   deno run -A bench/heap_snapshot.ts --per-socket [--bare] [SOCKETS]
 *
 * The server runs in this process with the default settings (memory store,
 * logs to /dev/null); the sockets come from `bench/hold_client.ts`
 * subprocesses, each sending one frame and then holding its socket.
 *
 * @module
 */
import { Session } from "node:inspector";
import { parseArgs } from "node:util";
import { setupLogging } from "../src/observability/logging.ts";
import { parseSettings } from "../src/settings.ts";
import { startServer } from "../src/server.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const { values, positionals } = parseArgs({
  args: Deno.args,
  options: {
    "per-socket": { type: "boolean", default: false },
    bare: { type: "boolean", default: false },
  },
  allowPositionals: true,
});
const sockets = Number(positionals[0] ?? 5000);

/** Starts the server under test; returns its port and how to stop it. */
async function start(): Promise<{ port: number; stop(): Promise<void> }> {
  if (values.bare) {
    // bench/bare_server.ts's handler.
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (req) => {
        const { socket, response } = Deno.upgradeWebSocket(req);
        let count = 0;
        socket.onmessage = () => socket.send('{"count": ' + ++count + "}");
        return response;
      },
    );
    return { port: server.addr.port, stop: () => server.shutdown() };
  }
  const settings = parseSettings({ PORT: "0", HOST: "127.0.0.1" });
  // Log lines are built and written as in production, to nowhere.
  const devNull = Deno.openSync("/dev/null", { write: true });
  await setupLogging({
    level: settings.logLevel,
    format: settings.logFormat,
    color: settings.color,
    write: (bytes) => devNull.writeSync(bytes),
  });
  const server = await startServer(settings);
  return {
    port: server.port,
    stop: async () => {
      await server.drain("measured");
      devNull.close();
    },
  };
}

/** Opens `n` held sockets from a subprocess; resolves once all are open. */
async function hold(port: number, n: number): Promise<Deno.ChildProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      ...["run", "--allow-net", `${ROOT}bench/hold_client.ts`],
      ...[`ws://127.0.0.1:${port}/ws/chat/`, String(n), "100"],
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) throw new Error("hold_client.ts ended before holding");
    text += value;
  }
  lines.releaseLock();
  const { held } = JSON.parse(text.slice(0, text.indexOf("\n")));
  if (held !== n) throw new Error(`Held ${held} sockets of ${n}`);
  // The last replies and the runtime's buffers settle.
  await new Promise((r) => setTimeout(r, 1000));
  return child;
}

/** Takes a snapshot through the inspector; its JSON text. */
async function snapshot(session: Session): Promise<string> {
  const chunks: string[] = [];
  const onChunk = (message: { params: { chunk: string } }) =>
    chunks.push(message.params.chunk);
  session.on("HeapProfiler.addHeapSnapshotChunk", onChunk);
  await new Promise<void>((resolve, reject) =>
    session.post(
      "HeapProfiler.takeHeapSnapshot",
      { reportProgress: false },
      (error) => error ? reject(error) : resolve(),
    )
  );
  session.off("HeapProfiler.addHeapSnapshotChunk", onChunk);
  return chunks.join("");
}

/** Self sizes and counts by kind; a snapshot holds only live objects (V8 collects first). */
function byKind(json: string): Map<string, { bytes: number; count: number }> {
  const snap = JSON.parse(json);
  const fields: string[] = snap.snapshot.meta.node_fields;
  const types: string[] = snap.snapshot.meta.node_types[0];
  const typeAt = fields.indexOf("type");
  const nameAt = fields.indexOf("name");
  const sizeAt = fields.indexOf("self_size");
  const nodes: number[] = snap.nodes;
  const strings: string[] = snap.strings;
  const kinds = new Map<string, { bytes: number; count: number }>();
  for (let i = 0; i < nodes.length; i += fields.length) {
    const type = types[nodes[i + typeAt]!]!;
    const name = strings[nodes[i + nameAt]!]!;
    // Objects by constructor, closures by name; strings and numbers by their
    // type only (their name is their value); scopes without their id.
    const kind = type === "object"
      ? name.replace(/ \/ scope @\d+$/, "")
      : type === "closure"
      ? `(closure) ${name}`
      : /string|number|code/.test(type)
      ? `(${type})`
      : `(${type}) ${name}`;
    const k = kinds.get(kind) ?? { bytes: 0, count: 0 };
    k.bytes += nodes[i + sizeAt]!;
    k.count++;
    kinds.set(kind, k);
  }
  return kinds;
}

const server = await start();
const session = new Session();
session.connect();

if (values["per-socket"]) {
  const first = Math.round(sockets / 5);
  const clients = [await hold(server.port, first)];
  const before = byKind(await snapshot(session));
  clients.push(await hold(server.port, sockets - first));
  const after = byKind(await snapshot(session));
  const per = sockets - first;
  const rows = [...new Set([...before.keys(), ...after.keys()])].map((kind) => {
    const a = before.get(kind) ?? { bytes: 0, count: 0 };
    const b = after.get(kind) ?? { bytes: 0, count: 0 };
    return {
      kind,
      bytes: (b.bytes - a.bytes) / per,
      count: (b.count - a.count) / per,
    };
  }).sort((x, y) => y.bytes - x.bytes);
  const total = rows.reduce((sum, r) => sum + r.bytes, 0);
  console.log(
    `${values.bare ? "bare" : "sockeye"}: ${
      Math.round(total)
    } bytes of heap per held socket (${first} → ${sockets} sockets)`,
  );
  console.log("| bytes per socket | objects per socket | kind |");
  console.log("|---:|---:|---|");
  for (const r of rows.filter((r) => Math.abs(r.bytes) >= 8)) {
    console.log(
      `| ${r.bytes.toFixed(0)} | ${r.count.toFixed(2)} | ${r.kind} |`,
    );
  }
  for (const c of clients) c.kill("SIGKILL");
  await Promise.all(clients.map((c) => c.status));
} else {
  const client = await hold(server.port, sockets);
  const before = Deno.memoryUsage();
  let maxDriftMs = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    maxDriftMs = Math.max(maxDriftMs, now - last - 5);
    last = now;
  }, 5);
  await new Promise((r) => setTimeout(r, 200));
  const start = performance.now();
  const json = await snapshot(session);
  const snapshotMs = performance.now() - start;
  await new Promise((r) => setTimeout(r, 200));
  clearInterval(timer);
  console.log(JSON.stringify({
    sockets,
    heap_used_mib: Math.round(before.heapUsed / 2 ** 20),
    rss_before_mib: Math.round(before.rss / 2 ** 20),
    rss_after_mib: Math.round(Deno.memoryUsage().rss / 2 ** 20),
    snapshot_mib: Math.round(json.length / 2 ** 20),
    snapshot_ms: Math.round(snapshotMs),
    max_loop_block_ms: Math.round(maxDriftMs),
  }));
  client.kill("SIGKILL");
  await client.status;
}
session.disconnect();
await server.stop();
