// deno-lint-ignore-file no-console -- a benchmark client: its output is JSON lines
/**
 * Held sockets for `bench/compare.ts --mode held`: opens N sockets (at most C
 * handshakes in flight), each sends one text frame and waits for its reply,
 * then holds them all. Prints `{"held": n, "errors": {...}}` once every
 * socket is open, then, when the server has closed them all (its drain),
 * `{"closes": {"<code>": n}, "byes": n}` and exits. SIGTERM closes what is
 * left with 1000 and exits.
 *
 * Usage: deno run --allow-net bench/hold_client.ts URL N [C]
 *
 * @module
 */
const [url = "ws://127.0.0.1:8000/ws/chat/", n = "1000", c = "200"] = Deno.args;
const total = Number(n);
const concurrency = Math.min(Number(c), total);
const sockets = new Set<WebSocket>();
const errors: Record<string, number> = {};
const closes: Record<string, number> = {};
const fail = (kind: string) => errors[kind] = (errors[kind] ?? 0) + 1;
let byes = 0;
let holding = false;
const allClosed = Promise.withResolvers<void>();

function one(): Promise<void> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let answered = false;
    ws.onopen = () => ws.send("hello");
    ws.onmessage = (e) => {
      const data = String(e.data);
      if (data.startsWith('{"bye": ')) byes++;
      if (answered || data.startsWith('{"ts": ')) return;
      answered = true;
      if (data.startsWith('{"count": ')) sockets.add(ws);
      else fail("bad_frame");
      resolve();
    };
    ws.onerror = () => {
      if (!answered) fail("connect_failed");
    };
    ws.onclose = (e) => {
      if (!answered) {
        fail("closed_early");
        return resolve();
      }
      // Deno reports 0 when no close frame could be read: RFC 6455's 1006.
      const code = String(e.code || 1006);
      closes[code] = (closes[code] ?? 0) + 1;
      sockets.delete(ws);
      if (holding && sockets.size === 0) allClosed.resolve();
    };
  });
}

let next = 0;
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next < total) {
      next++;
      await one();
    }
  }),
);
holding = true;
Deno.addSignalListener("SIGTERM", () => {
  for (const ws of sockets) ws.close(1000);
});
console.log(JSON.stringify({ held: sockets.size, errors }));
if (sockets.size === 0) allClosed.resolve();
await allClosed.promise;
console.log(JSON.stringify({ closes, byes }));
Deno.exit(0);
