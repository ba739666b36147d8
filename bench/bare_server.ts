/**
 * The baseline: a bare `Deno.upgradeWebSocket` server speaking the same
 * protocol (`{"count": n}` per text frame, one counter per socket) with no
 * sessions, metrics, logging or tracing. `bench/compare.ts` measures sockeye
 * against it in the same run.
 *
 * SIGTERM is the runtime's own goodbye: `server.shutdown()` closes every
 * WebSocket with 1001 at once, then the process exits (the baseline of
 * `--mode held`'s drain).
 *
 * Usage: deno run --allow-net bench/bare_server.ts PORT
 *
 * @module
 */
const port = Number(Deno.args[0] ?? 8100);
const server = Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, (
  req,
) => {
  const { socket, response } = Deno.upgradeWebSocket(req);
  let count = 0;
  socket.onmessage = () => socket.send('{"count": ' + ++count + "}");
  return response;
});
Deno.addSignalListener("SIGTERM", async () => {
  await server.shutdown();
  Deno.exit(0);
});
