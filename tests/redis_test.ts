/**
 * The Redis session store against a real redis-server: sessions shared by
 * blue and green, atomic counts, outages, crashes and expiry.
 */
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import {
  countOf,
  metricValue,
  spawnServer,
  startRedis,
  startStreamers,
  startTestServer,
  type Streamer,
  tally,
  TestClient,
  type TestServer,
  until,
  within,
} from "./_helpers.ts";

async function readyz(
  url: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url);
  return { status: res.status, body: await res.json() };
}

/** Starts a server and waits until its store answers (/readyz 200). */
async function startReady(env: Record<string, string>): Promise<TestServer> {
  const srv = await startTestServer(env);
  await waitReady(srv);
  return srv;
}

function waitReady(srv: TestServer): Promise<unknown> {
  return until(
    async () => (await readyz(srv.http("/readyz"))).status === 200,
    "ready",
  );
}

Deno.test("a session started on blue resumes on green with the exact next count", async () => {
  await using redis = await startRedis();
  await using blue = await startReady({ COLOR: "blue", REDIS_URL: redis.url });
  await using green = await startReady({
    COLOR: "green",
    REDIS_URL: redis.url,
  });
  const id = crypto.randomUUID();
  {
    await using c = await TestClient.open(
      blue.ws(`/ws/chat/?session_uuid=${id}`),
      "sockeye.v1",
    );
    assert.match(await c.next(), /"count": 0, "resumed": false/);
    for (let i = 1; i <= 3; i++) {
      assert.equal(await c.ask("m"), `{"count": ${i}}`);
    }
  }
  await using g = await TestClient.open(
    green.ws(`/ws/chat/?session_uuid=${id}`),
    "sockeye.v1",
  );
  assert.equal(
    await g.next(),
    `{"type": "session", "session_uuid": "${id}", "count": 3, "resumed": true}`,
  );
  assert.equal(await g.ask("m"), '{"count": 4}');

  const { body } = await readyz(green.http("/readyz"));
  assert.deepEqual(body.checks, { redis: "ok" });
  assert.equal(
    (await (await fetch(green.http("/status"))).json()).store,
    "redis",
  );
  const text = await green.metrics();
  assert.equal(
    metricValue(text, "app_dependency_up", { dependency: "redis" }),
    1,
  );
  assert.equal(metricValue(text, "websocket_session_resumes_total"), 1);
});

Deno.test("concurrent frames on both instances for one session get distinct, gap-free counts", async () => {
  await using redis = await startRedis();
  await using blue = await startReady({ COLOR: "blue", REDIS_URL: redis.url });
  await using green = await startReady({
    COLOR: "green",
    REDIS_URL: redis.url,
  });
  const path = "/ws/chat/?session_uuid=shared";
  const clients = await Promise.all([
    TestClient.open(blue.ws(path)),
    TestClient.open(green.ws(path)),
    TestClient.open(blue.ws(path)),
    TestClient.open(green.ws(path)),
  ]);
  const counts: number[] = [];
  await Promise.all(clients.map(async (c) => {
    for (let i = 0; i < 100; i++) counts.push(countOf(await c.ask("x")));
  }));
  for (const c of clients) await c.close();
  counts.sort((a, b) => a - b);
  assert.deepEqual(counts, Array.from({ length: 400 }, (_, i) => i + 1));
});

Deno.test("Redis killed mid-session: unavailable answers, 503, one log line, then counting resumes", async () => {
  await using redis = await startRedis();
  await using proc = await spawnServer({ REDIS_URL: redis.url });
  const base = `http://127.0.0.1:${proc.port}`;
  await until(
    async () => (await readyz(`${base}/readyz`)).status === 200,
    "ready",
  );
  await using c = await TestClient.open(
    `ws://127.0.0.1:${proc.port}/ws/chat/?session_uuid=outage`,
  );
  for (let i = 1; i <= 3; i++) {
    assert.equal(await c.ask("m"), `{"count": ${i}}`);
  }

  await redis.kill();
  const down = await until(async () => {
    const r = await readyz(`${base}/readyz`);
    return r.status === 503 ? r.body : undefined;
  }, "readiness 503");
  assert.equal(down.status, "not_ready");
  assert.match(
    String((down.checks as Record<string, string>).redis),
    /^error: /,
  );
  for (let i = 0; i < 5; i++) {
    assert.equal(
      await c.ask("lost?"),
      '{"error": "unavailable", "retry": true}',
    );
  }
  const metrics = await (await fetch(`${base}/metrics`)).text();
  assert.equal(
    metricValue(metrics, "app_dependency_up", { dependency: "redis" }),
    0,
  );
  assert.equal(
    metricValue(metrics, "websocket_errors_total", {
      error_type: "store_unavailable",
    }),
    5,
  );

  await redis.restart();
  await until(
    async () => (await readyz(`${base}/readyz`)).status === 200,
    "ready again",
  );
  assert.equal(await c.ask("back"), '{"count": 4}');
  const outageLines = proc.lines.filter((l) => l.includes("Redis unavailable"));
  assert.equal(outageLines.length, 1, outageLines.join("\n"));
  assert.equal(JSON.parse(outageLines[0]!).level, "error");
  assert.ok(proc.lines.some((l) => l.includes("Redis available")));
});

Deno.test("instance killed with SIGKILL while clients stream: each continues on the other, nothing lost or repeated", async () => {
  await using redis = await startRedis();
  await using a = await spawnServer({ COLOR: "blue", REDIS_URL: redis.url });
  await using b = await startTestServer({
    COLOR: "green",
    REDIS_URL: redis.url,
  });
  await until(
    async () =>
      (await readyz(`http://127.0.0.1:${a.port}/readyz`)).status === 200,
    "A ready",
  );
  await waitReady(b);

  const streams = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const id = `stream-${i}`;
    const client = await TestClient.open(
      `ws://127.0.0.1:${a.port}/ws/chat/?session_uuid=${id}`,
    );
    const state = { id, client, lastAcked: 0, done: Promise.resolve() };
    state.done = (async () => {
      try {
        while (true) state.lastAcked = countOf(await client.ask("m"));
      } catch { /* the instance died */ }
    })();
    return state;
  }));
  await until(
    () => streams.every((s) => s.lastAcked >= 5),
    "every stream past 5",
  );
  a.child.kill("SIGKILL");
  await within(a.status, "A gone");
  await Promise.all(streams.map((s) => s.done));

  for (const s of streams) {
    await using again = await TestClient.open(
      b.ws(`/ws/chat/?session_uuid=${s.id}`),
      "sockeye.v1",
    );
    const session = JSON.parse(await again.next());
    assert.equal(session.resumed, true);
    // Closed loop: at most the one frame in flight was counted without an answer.
    assert.ok(
      session.count === s.lastAcked || session.count === s.lastAcked + 1,
      `${s.id}: acked ${s.lastAcked}, stored ${session.count}`,
    );
    assert.equal(await again.ask("m"), `{"count": ${session.count + 1}}`);
    await s.client.closed;
  }
});

Deno.test("a Redis session expires SESSION_TTL_S after its last connection", async () => {
  await using redis = await startRedis();
  await using srv = await startTestServer({
    REDIS_URL: redis.url,
    SESSION_TTL_S: "0.5",
  });
  await waitReady(srv);
  const inspect = new Redis(redis.url);
  try {
    const url = srv.ws("/ws/chat/?session_uuid=ttl");
    {
      await using c = await TestClient.open(url);
      assert.equal(await c.ask("m"), '{"count": 1}');
      assert.equal(await c.ask("m"), '{"count": 2}');
    }
    const ttl = await inspect.pttl("sockeye:session:ttl");
    assert.ok(ttl > 0 && ttl <= 500, `PTTL ${ttl}`);
    await until(
      async () => (await inspect.exists("sockeye:session:ttl")) === 0,
      "expiry",
    );
    await using c = await TestClient.open(url, "sockeye.v1");
    assert.match(await c.next(), /"count": 0, "resumed": false/);
  } finally {
    await inspect.quit();
  }
});

Deno.test("a session key holding no integer closes with 1011, counted as internal", async () => {
  await using redis = await startRedis();
  await using srv = await startTestServer({ REDIS_URL: redis.url });
  await waitReady(srv);
  const inspect = new Redis(redis.url);
  try {
    const c = await TestClient.open(srv.ws("/ws/chat/?session_uuid=corrupt"));
    assert.equal(await c.ask("m"), '{"count": 1}');
    await inspect.set("sockeye:session:corrupt", "not a number");
    c.ws.send("m");
    assert.equal((await c.closed).code, 1011);
    assert.equal(
      metricValue(await srv.metrics(), "websocket_errors_total", {
        error_type: "internal",
      }),
      1,
    );
  } finally {
    await inspect.quit();
  }
});

Deno.test("SIGTERM with Redis: every socket gets its stored total and 1001; the totals are read in batches, not a GET each", async () => {
  await using redis = await startRedis();
  await using proc = await spawnServer({ REDIS_URL: redis.url });
  const url = `ws://127.0.0.1:${proc.port}/ws/chat/`;
  await until(async () => {
    const res = await fetch(`http://127.0.0.1:${proc.port}/readyz`);
    await res.body?.cancel();
    return res.status === 200;
  }, "ready");
  const n = 600;
  const clients: TestClient[] = [];
  for (let i = 0; i < n; i += 100) {
    clients.push(
      ...await Promise.all(
        Array.from({ length: 100 }, () => TestClient.open(url)),
      ),
    );
  }
  // One to three frames each; one session expires (deleted) before the bye.
  await Promise.all(clients.map(async (c, i) => {
    for (let k = 1; k <= i % 3 + 1; k++) {
      assert.equal(await c.ask("m"), `{"count": ${k}}`);
    }
  }));
  const inspect = new Redis(redis.url);
  try {
    const [gone] = await inspect.keys("sockeye:session:*");
    await inspect.del(gone!);
    await inspect.config("RESETSTAT");
    proc.child.kill("SIGTERM");
    assert.equal((await within(proc.status, "exit after SIGTERM")).code, 0);
    const totals = await Promise.all(clients.map(async (c) => {
      assert.equal((await c.closed).code, 1001);
      return c.received.at(-1);
    }));
    const expected = clients.map((_, i) =>
      `{"bye": true, "total": ${i % 3 + 1}}`
    );
    const missing = totals.findIndex((t, i) => t !== expected[i]);
    assert.equal(totals[missing], '{"bye": true, "total": 0}');
    totals.splice(missing, 1);
    expected.splice(missing, 1);
    assert.deepEqual(totals, expected);
    const stats = await inspect.info("commandstats");
    const calls = (name: string) =>
      Number(
        stats.match(new RegExp(`^cmdstat_${name}:calls=(\\d+)`, "m"))?.[1] ?? 0,
      );
    // 600 totals: two MGETs of at most 512 keys.
    assert.equal(calls("mget"), 2);
    assert.equal(calls("get"), 0);
  } finally {
    await inspect.quit();
  }
  const complete = JSON.parse(
    proc.lines.find((l) => l.includes('"Drain complete"'))!,
  );
  assert.equal(complete.closed, n);
  assert.equal(complete.forced, 0);
});

Deno.test("Redis unreachable at start: the service starts, stays not ready, refuses upgrades, then recovers", async () => {
  await using redis = await startRedis();
  await redis.kill();
  await using srv = await startTestServer({ REDIS_URL: redis.url });
  const down = await readyz(srv.http("/readyz"));
  assert.equal(down.status, 503);
  assert.equal(down.body.status, "not_ready");
  const refused = await fetch(srv.http("/ws/chat/"), {
    headers: {
      Upgrade: "websocket",
      Connection: "Upgrade",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version": "13",
    },
  });
  assert.equal(refused.status, 503);
  assert.equal((await refused.json()).error, "store_unavailable");
  await redis.restart();
  await waitReady(srv);
  await using c = await TestClient.open(srv.ws());
  assert.equal(await c.ask("m"), '{"count": 1}');
});

/** Asserts each stream's stored count is what it was acknowledged. */
async function assertStored(redisUrl: string, streams: Streamer[]) {
  const inspect = new Redis(redisUrl);
  try {
    const stored = await inspect.mget(
      streams.map((s) => `sockeye:session:${s.id}`),
    );
    const wrong = streams
      .map((s, i) => ({ id: s.id, acked: s.acked, stored: Number(stored[i]) }))
      .filter((r) => r.stored !== r.acked);
    assert.deepEqual(
      wrong,
      [],
      "stored count differs from frames acknowledged",
    );
  } finally {
    await inspect.quit();
  }
}

Deno.test("Redis paused (SIGSTOP) under load: unavailable, one outage line, readiness 503, then no gap and no repeat", async () => {
  await using redis = await startRedis();
  await using proc = await spawnServer({ REDIS_URL: redis.url });
  const base = `http://127.0.0.1:${proc.port}`;
  await until(
    async () => (await readyz(`${base}/readyz`)).status === 200,
    "ready",
  );
  const streams = await startStreamers(proc.port, "stall", 60);
  try {
    await until(() => streams.every((s) => s.acked >= 3), "every stream at 3");
    const pausedAt = performance.now();
    redis.pause();
    try {
      await until(
        async () => (await readyz(`${base}/readyz`)).status === 503,
        "readiness 503 during the stall",
      );
      await until(
        async () =>
          metricValue(
            await (await fetch(`${base}/metrics`)).text(),
            "app_dependency_up",
            { dependency: "redis" },
          ) === 0,
        "app_dependency_up 0",
      );
      await until(
        () => streams.every((s) => s.unavailable > 0),
        "every stream answered unavailable",
      );
      // The stall lasts 3 s in all, well past the 1 s command timeout.
      const left = 3000 - (performance.now() - pausedAt);
      if (left > 0) await new Promise((r) => setTimeout(r, left));
    } finally {
      redis.resume();
    }
    const before = streams.map((s) => s.acked);
    await until(
      async () => (await readyz(`${base}/readyz`)).status === 200,
      "ready again",
    );
    await until(
      () => streams.every((s, i) => s.acked >= before[i]! + 3),
      "every stream 3 frames further",
    );
  } finally {
    await Promise.all(streams.map((s) => s.stop()));
  }
  const figures = tally(streams);
  assert.equal(figures.clientsSkipping, 0, JSON.stringify(figures));
  assert.equal(figures.clientsRepeating, 0, JSON.stringify(figures));
  assert.equal(figures.clientsAnsweredUnavailable, streams.length);
  for (const s of streams) assert.equal(s.last, s.acked, s.id);
  await assertStored(redis.url, streams);

  const outage = proc.lines.filter((l) => l.includes("Redis unavailable"));
  assert.equal(outage.length, 1, outage.join("\n"));
  assert.equal(JSON.parse(outage[0]!).level, "error");
  const after = proc.lines.slice(proc.lines.indexOf(outage[0]!))
    .map((l) => JSON.parse(l));
  const back = after.filter((l) => l.message.startsWith("Redis available"));
  assert.equal(back.length, 1, JSON.stringify(after));
  // Frames sent into the stall reached Redis: refused there past their
  // deadline, or counted before it and withdrawn. Either way not counted.
  const withdrawn = after.filter((l) => l.message.startsWith("Withdrew"))
    .reduce((sum, l) => sum + l.withdrawn, 0);
  assert.ok(
    back[0].frames_refused_late + withdrawn > 0,
    JSON.stringify(after),
  );
});

Deno.test("Redis restarted and killed (AOF always) under load: nothing acknowledged lost, no gap, no repeat", async () => {
  await using redis = await startRedis();
  await using proc = await spawnServer({ REDIS_URL: redis.url });
  const base = `http://127.0.0.1:${proc.port}`;
  const ready = () =>
    until(
      async () => (await readyz(`${base}/readyz`)).status === 200,
      "ready",
    );
  await ready();
  const streams = await startStreamers(proc.port, "restart", 60);
  try {
    for (let round = 0; round < 2; round++) {
      const before = streams.map((s) => s.acked);
      await until(
        () => streams.every((s, i) => s.acked >= before[i]! + 3),
        "every stream 3 frames further",
      );
      // A supervisor's restart (SIGTERM), then a crash (SIGKILL).
      await (round === 0 ? redis.shutdown() : redis.kill());
      await until(
        async () => (await readyz(`${base}/readyz`)).status === 503,
        "readiness 503 while Redis is down",
      );
      await redis.restart();
      await ready();
    }
    const before = streams.map((s) => s.acked);
    await until(
      () => streams.every((s, i) => s.acked >= before[i]! + 3),
      "every stream 3 frames further",
    );
  } finally {
    await Promise.all(streams.map((s) => s.stop()));
  }
  const figures = tally(streams);
  assert.equal(figures.clientsRepeating, 0, JSON.stringify(figures));
  assert.equal(figures.clientsSkipping, 0, JSON.stringify(figures));
  for (const s of streams) assert.equal(s.last, s.acked, s.id);
  await assertStored(redis.url, streams);
});
