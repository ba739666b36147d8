/**
 * The baseline: a bare `Deno.upgradeWebSocket` server speaking the same
 * protocol (`{"count": n}` per text frame, one counter per socket) with no
 * sessions, metrics, logging or tracing. `bench/compare.ts` measures sockeye
 * against it in the same run.
 *
 * SIGTERM is the runtime's own goodbye: `server.shutdown()` closes every
 * WebSocket with 1001 at once, then the process exits (the baseline of
 * `--mode held`'s drain). With `--drain`, SIGTERM runs sockeye's drain
 * protocol with nothing else: `{"bye": true, "total": n}` to every socket in
 * one loop, 500 ms for frames in flight (sockeye's quiet window), 1001 to
 * every socket, and exit once every close handshake has ended (the
 * `bare-drain` target: the runtime's floor for that protocol).
 *
 * Usage: deno run --allow-net bench/bare_server.ts PORT [--drain]
 *
 * @module
 */
const port = Number(Deno.args[0] ?? 8100);
const drainProtocol = Deno.args.includes("--drain");
/** Each open socket and its count (`--drain` only). */
const open = new Map<WebSocket, () => number>();
let allClosed = Promise.withResolvers<void>();
const server = Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, (
  req,
) => {
  const { socket, response } = Deno.upgradeWebSocket(req);
  let count = 0;
  socket.onmessage = () => socket.send('{"count": ' + ++count + "}");
  if (drainProtocol) {
    open.set(socket, () => count);
    socket.onclose = () => {
      open.delete(socket);
      if (open.size === 0) allClosed.resolve();
    };
  }
  return response;
});
Deno.addSignalListener("SIGTERM", async () => {
  if (drainProtocol && open.size > 0) {
    allClosed = Promise.withResolvers<void>();
    for (const [socket, count] of open) {
      socket.onmessage = null;
      socket.send('{"bye": true, "total": ' + count() + "}");
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
    for (const socket of open.keys()) {
      socket.close(1001, "server shutting down");
    }
    await allClosed.promise;
  }
  await server.shutdown();
  Deno.exit(0);
});
