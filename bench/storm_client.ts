// deno-lint-ignore-file no-console -- a benchmark client: its output is one JSON line
/**
 * A connect storm for `bench/compare.ts --mode storm`: N connections, at most
 * C in flight; each opens, sends one text frame, waits for `{"count": 1}`,
 * closes with 1000 and waits for the close handshake. Prints one JSON line:
 * `{"connects", "ok", "errors", "seconds"}`.
 *
 * Usage: deno run --allow-net bench/storm_client.ts URL N [C]
 *
 * @module
 */
const [url = "ws://127.0.0.1:8000/ws/chat/", n = "10000", c = "200"] =
  Deno.args;
const total = Number(n);
const concurrency = Math.min(Number(c), total);
let next = 0;
let ok = 0;
const errors: Record<string, number> = {};
const fail = (kind: string) => errors[kind] = (errors[kind] ?? 0) + 1;

function one(): Promise<void> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let answered = false;
    ws.onopen = () => ws.send("hello");
    ws.onmessage = (e) => {
      if (answered || String(e.data).startsWith('{"ts": ')) return;
      answered = true;
      if (e.data === '{"count": 1}') ok++;
      else fail("bad_frame");
      ws.close(1000);
    };
    ws.onerror = () => {
      if (!answered) fail("connect_failed");
    };
    ws.onclose = () => {
      if (!answered) fail("closed_early");
      resolve();
    };
  });
}

const started = performance.now();
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next < total) {
      next++;
      await one();
    }
  }),
);
console.log(JSON.stringify({
  connects: total,
  ok,
  errors,
  seconds: (performance.now() - started) / 1000,
}));
