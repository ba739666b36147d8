/**
 * The memory store's bound (MAX_SESSIONS) over real sockets: the longest-idle
 * released sessions make room, held ones are kept, a full store of held
 * sessions refuses new ones, and every eviction is counted.
 */
import assert from "node:assert/strict";
import { sessionLimit } from "../src/limits.ts";
import { parseSettings, SettingsError } from "../src/settings.ts";
import {
  metricValue,
  rawUpgrade,
  startTestServer,
  TestClient,
  type TestServer,
  until,
} from "./_helpers.ts";

/** Opens `id`, reads its session frame, sends `frames` frames, closes. */
async function visit(
  srv: TestServer,
  id: string,
  frames: number,
): Promise<{ count: number; resumed: boolean }> {
  const before = metricValue(
    await srv.metrics(),
    "websocket_connections_active",
  );
  const c = await TestClient.open(
    srv.ws(`/ws/chat/?session_uuid=${id}`),
    "sockeye.v1",
  );
  const session = JSON.parse(await c.next());
  for (let i = 1; i <= frames; i++) {
    assert.equal(await c.ask("m"), `{"count": ${session.count + i}}`);
  }
  await c.close();
  // The release order decides eviction: wait until the server saw the close.
  await until(
    async () =>
      metricValue(await srv.metrics(), "websocket_connections_active") ===
        before,
    `${id} released`,
  );
  return { count: session.count, resumed: session.resumed };
}

function sessionMetrics(text: string) {
  return {
    stored: metricValue(text, "websocket_sessions_stored"),
    capacity: metricValue(text, "websocket_sessions_evicted_total", {
      reason: "capacity",
    }),
    expired: metricValue(text, "websocket_sessions_evicted_total", {
      reason: "expired",
    }),
  };
}

Deno.test("MAX_SESSIONS: the longest-idle released sessions are forgotten first, held ones kept, each counted", async () => {
  await using srv = await startTestServer({ MAX_SESSIONS: "4" });
  // One session held open for the whole test, created first (the oldest).
  await using held = await TestClient.open(
    srv.ws("/ws/chat/?session_uuid=held"),
  );
  assert.equal(await held.ask("m"), '{"count": 1}');
  for (const id of ["a", "b", "c"]) await visit(srv, id, 2);
  // Touching "a" again makes it the most recently released.
  assert.deepEqual(await visit(srv, "a", 1), { count: 2, resumed: true });
  assert.deepEqual(sessionMetrics(await srv.metrics()), {
    stored: 4,
    capacity: 0,
    expired: 0,
  });

  // Two new sessions: room is taken from "b", then "c", never from "held".
  await visit(srv, "new1", 1);
  await visit(srv, "new2", 1);
  assert.deepEqual(sessionMetrics(await srv.metrics()), {
    stored: 4,
    capacity: 2,
    expired: 0,
  });
  assert.equal(await held.ask("m"), '{"count": 2}');
  // "a" was kept (released more recently), "b" was forgotten: it starts over.
  assert.deepEqual(await visit(srv, "a", 1), { count: 3, resumed: true });
  assert.deepEqual(await visit(srv, "b", 1), { count: 0, resumed: false });
  // Making room for "b" forgot "new1", the longest idle by then.
  assert.deepEqual(await visit(srv, "new1", 0), { count: 0, resumed: false });
  const figures = sessionMetrics(await srv.metrics());
  assert.deepEqual(figures, { stored: 4, capacity: 4, expired: 0 });
  assert.equal(await held.ask("m"), '{"count": 3}');
});

Deno.test("MAX_SESSIONS all held: a new session is refused with 503 max_sessions, held ones still resume", async () => {
  await using srv = await startTestServer({ MAX_SESSIONS: "2" });
  await using one = await TestClient.open(srv.ws("/ws/chat/?session_uuid=one"));
  await using two = await TestClient.open(srv.ws("/ws/chat/?session_uuid=two"));
  assert.equal(await one.ask("m"), '{"count": 1}');
  assert.equal(await two.ask("m"), '{"count": 1}');

  {
    using refused = await rawUpgrade(
      srv.port,
      "/ws/chat/?session_uuid=three",
    );
    assert.equal(refused.status, 503);
    assert.equal(refused.headers["retry-after"], "1");
  }
  const res = await fetch(srv.http("/ws/chat/"), {
    headers: {
      Upgrade: "websocket",
      Connection: "Upgrade",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version": "13",
    },
  });
  assert.equal(res.status, 503);
  assert.equal((await res.json()).error, "max_sessions");

  // A second socket on a held session adds no session: accepted.
  await using again = await TestClient.open(
    srv.ws("/ws/chat/?session_uuid=one"),
    "sockeye.v1",
  );
  assert.match(await again.next(), /"count": 1, "resumed": true/);
  assert.equal(await again.ask("m"), '{"count": 2}');

  const text = await srv.metrics();
  assert.equal(
    metricValue(text, "websocket_errors_total", { error_type: "max_sessions" }),
    2,
  );
  assert.deepEqual(sessionMetrics(text), {
    stored: 2,
    capacity: 0,
    expired: 0,
  });

  // Once one is released it makes room again.
  await two.close();
  await until(
    async () =>
      metricValue(await srv.metrics(), "websocket_connections_active") === 2,
    "two released",
  );
  await using three = await TestClient.open(
    srv.ws("/ws/chat/?session_uuid=three"),
  );
  assert.equal(await three.ask("m"), '{"count": 1}');
  assert.equal(
    sessionMetrics(await srv.metrics()).capacity,
    1,
  );
});

Deno.test("expired sessions are swept and counted as expired", async () => {
  await using srv = await startTestServer({ SESSION_TTL_S: "0.2" });
  for (const id of ["x", "y"]) await visit(srv, id, 1);
  const swept = await until(async () => {
    const figures = sessionMetrics(await srv.metrics());
    return figures.expired === 2 ? figures : undefined;
  }, "both expired");
  assert.deepEqual(swept, { stored: 0, capacity: 0, expired: 2 });
  assert.deepEqual(await visit(srv, "x", 0), { count: 0, resumed: false });
});

Deno.test("MAX_SESSIONS must be a whole number of at least 1; unset, it is sized from memory", () => {
  assert.equal(parseSettings({}).maxSessions, undefined);
  assert.equal(sessionLimit(undefined, undefined), 250_000);
  assert.equal(sessionLimit(undefined, 512 * 2 ** 20), 178_956);
  assert.equal(sessionLimit(undefined, 16 * 2 ** 20), 10_000);
  assert.equal(sessionLimit(undefined, 64 * 2 ** 30), 1_000_000);
  assert.equal(sessionLimit(7, 64 * 2 ** 30), 7);
  assert.equal(parseSettings({ MAX_SESSIONS: "10" }).maxSessions, 10);
  for (const bad of ["0", "1.5", "-3", "many"]) {
    assert.throws(
      () => parseSettings({ MAX_SESSIONS: bad }),
      (e) => e instanceof SettingsError && e.variable === "MAX_SESSIONS",
    );
  }
});
