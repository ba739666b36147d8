// deno-lint-ignore-file no-console -- a measurement script: its output is the figures
/**
 * Measures how long a full V8 heap snapshot blocks the event loop of a
 * sockeye server holding N sockets: the reason `/debug/pprof/heap` serves
 * the sampling heap profile and no snapshot (README, "Admin API").
 *
 * Usage:
 *   deno run -A bench/heap_snapshot.ts [SOCKETS]     # default 5000
 *
 * It starts sockeye in this process, opens the sockets from a
 * `sockeye loadtest --hold` subprocess, takes one snapshot through
 * `node:inspector` while a 5 ms timer measures its own drift, and prints
 * one JSON line.
 *
 * @module
 */
import { Session } from "node:inspector";
import { parseSettings } from "../src/settings.ts";
import { startServer } from "../src/server.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const sockets = Number(Deno.args[0] ?? 5000);
const server = await startServer(
  parseSettings({ PORT: "0", HOST: "127.0.0.1" }),
);
const loadtest = {
  url: `ws://127.0.0.1:${server.port}/ws/chat/`,
  connections: sockets,
  messages: 2,
  hold: 120,
  timeout: 180,
};
const load = new Deno.Command(Deno.execPath(), {
  args: [
    ...["run", "-A", `${ROOT}main.ts`, "loadtest"],
    ...Object.entries(loadtest).flatMap(([k, v]) => [`--${k}`, String(v)]),
  ],
  stdout: "null",
  stderr: "null",
}).spawn();
const open = async () =>
  (await (await fetch(`http://127.0.0.1:${server.port}/status`)).json())
    .active_connections as number;
while (await open() < sockets) await new Promise((r) => setTimeout(r, 500));

const before = Deno.memoryUsage();
let maxDriftMs = 0;
let last = performance.now();
const timer = setInterval(() => {
  const now = performance.now();
  maxDriftMs = Math.max(maxDriftMs, now - last - 5);
  last = now;
}, 5);
await new Promise((r) => setTimeout(r, 200));
const session = new Session();
session.connect();
let bytes = 0;
session.on("HeapProfiler.addHeapSnapshotChunk", (message) => {
  bytes += (message.params as { chunk: string }).chunk.length;
});
const start = performance.now();
await new Promise<void>((resolve, reject) =>
  session.post(
    "HeapProfiler.takeHeapSnapshot",
    { reportProgress: false },
    (error) => error ? reject(error) : resolve(),
  )
);
const snapshotMs = performance.now() - start;
await new Promise((r) => setTimeout(r, 200));
clearInterval(timer);
session.disconnect();
console.log(JSON.stringify({
  sockets: await open(),
  heap_used_mib: Math.round(before.heapUsed / 2 ** 20),
  rss_before_mib: Math.round(before.rss / 2 ** 20),
  rss_after_mib: Math.round(Deno.memoryUsage().rss / 2 ** 20),
  snapshot_mib: Math.round(bytes / 2 ** 20),
  snapshot_ms: Math.round(snapshotMs),
  max_loop_block_ms: Math.round(maxDriftMs),
}));
load.kill("SIGKILL");
await load.status;
await server.drain("measured");
