/**
 * The admin port and its API over real sockets: which listener answers
 * what, the bearer token, the log level at run time, the connection list,
 * operator disconnects (4001) with `?forget=true` in memory and in Redis,
 * and `sockeye admin` against a running server.
 */
import assert from "node:assert/strict";
import { routeSplit } from "../src/server.ts";
import { parseSettings } from "../src/settings.ts";
import * as helpers from "./_helpers.ts";
import { metricValue, TestClient, type TestServer } from "./_helpers.ts";

const {
  runSockeye: sockeye,
  spawnServer,
  startRedis,
  startTestServer,
  until,
  within,
} = helpers;

/** `http://127.0.0.1:<admin port>` + path. */
function admin(server: TestServer, path: string): string {
  assert.ok(server.server.adminPort, "the server has an admin port");
  return `http://127.0.0.1:${server.server.adminPort}${path}`;
}

async function status(url: string, init: RequestInit = {}): Promise<number> {
  const res = await fetch(url, init);
  await res.body?.cancel();
  return res.status;
}

/** `DELETE` on the admin port: status and JSON body. */
function del(
  server: TestServer,
  path: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  return json(admin(server, path), { method: "DELETE" });
}

async function json(
  url: string,
  init: RequestInit = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url, init);
  return { status: res.status, body: await res.json() };
}

Deno.test("with ADMIN_PORT the public port 404s /metrics, /status, /admin and /debug; the admin port answers them", async () => {
  await using server = await startTestServer({ ADMIN_PORT: "0" });
  const internal = "/metrics /status /admin/log-level /admin/connections " +
    "/debug/pprof/heap";
  for (const path of internal.split(" ")) {
    assert.equal(await status(server.http(path)), 404, `public ${path}`);
  }
  for (const path of ["/healthz", "/readyz"]) {
    assert.equal(await status(server.http(path)), 200, `public ${path}`);
    assert.equal(await status(admin(server, path)), 200, `admin ${path}`);
  }
  for (const path of ["/metrics", "/status", "/admin/connections"]) {
    assert.equal(await status(admin(server, path)), 200, `admin ${path}`);
  }
  assert.deepEqual((await json(admin(server, "/admin/log-level"))).body, {
    level: "info",
  });
  // The admin port serves no WebSockets; the public port does.
  assert.equal(await status(admin(server, "/ws/chat/")), 404);
  await using client = await TestClient.open(server.ws());
  assert.equal(await client.ask("hi"), '{"count": 1}');
  // Admin requests are counted like any other, by route template.
  const text = await (await fetch(admin(server, "/metrics"))).text();
  assert.equal(
    metricValue(text, "http_requests_total", {
      endpoint: "/admin/connections",
      status: "200",
    }),
    1,
  );
  assert.equal(
    metricValue(text, "http_requests_total", {
      endpoint: "unmatched",
      status: "404",
    }),
    6,
  );
});

Deno.test("ADMIN_TOKEN guards /admin and /debug (401 otherwise); /metrics keeps METRICS_TOKEN", async () => {
  await using server = await startTestServer({
    ADMIN_PORT: "0",
    ADMIN_TOKEN: "adm1n-s3cret",
    METRICS_TOKEN: "m3trics",
  });
  const bearer = (token: string) => ({
    headers: { Authorization: `Bearer ${token}` },
  });
  for (const path of ["/admin/log-level", "/debug/pprof/profile?seconds=1"]) {
    const res = await fetch(admin(server, path));
    assert.equal(res.status, 401, path);
    assert.equal(res.headers.get("WWW-Authenticate"), 'Bearer realm="admin"');
    assert.equal(
      (await res.json()).message,
      "Admin endpoints require a bearer token",
    );
    assert.equal(await status(admin(server, path), bearer("wrong")), 401);
    assert.equal(await status(admin(server, path), bearer("m3trics")), 401);
  }
  assert.equal(
    await status(admin(server, "/admin/log-level"), bearer("adm1n-s3cret")),
    200,
  );
  // /metrics takes its own token, not the admin one.
  assert.equal(await status(admin(server, "/metrics")), 401);
  assert.equal(
    await status(admin(server, "/metrics"), bearer("adm1n-s3cret")),
    401,
  );
  assert.equal(await status(admin(server, "/metrics"), bearer("m3trics")), 200);
  // Probes and /status stay open.
  assert.equal(await status(admin(server, "/status")), 200);
});

Deno.test("without ADMIN_PORT one listener answers all, the admin API only on loopback or with a token", async () => {
  await using local = await startTestServer({ HOST: "localhost" });
  for (const path of ["/metrics", "/status", "/admin/log-level"]) {
    assert.equal(await status(local.http(path)), 200, path);
  }
  // A HOST reachable from elsewhere, without a token: no admin routes, as
  // before the admin API existed (the split is what the server serves).
  const groups = (env: Record<string, string>) =>
    routeSplit(parseSettings(env)).main;
  assert.deepEqual(groups({ HOST: "0.0.0.0" }), [
    "probes",
    "websocket",
    "operations",
  ]);
  assert.deepEqual(groups({ HOST: "0.0.0.0", ADMIN_TOKEN: "t" }), [
    "probes",
    "websocket",
    "operations",
    "admin",
  ]);
  assert.deepEqual(groups({ HOST: "::1" }), groups({ HOST: "127.0.0.2" }));
  assert.deepEqual(routeSplit(parseSettings({ ADMIN_PORT: "9000" })), {
    main: ["probes", "websocket"],
    admin: ["probes", "operations", "admin"],
  });
});

Deno.test("a non-loopback ADMIN_HOST without ADMIN_TOKEN exits 2 naming it", async () => {
  const r = await sockeye(["serve"], {
    PORT: "0",
    ADMIN_PORT: "0",
    ADMIN_HOST: "0.0.0.0",
  });
  assert.equal(r.code, 2);
  assert.equal(
    r.stderr.trim(),
    'sockeye: Cannot parse ADMIN_HOST "0.0.0.0": expected a loopback ' +
      "address (127.0.0.0/8, ::1, localhost) while ADMIN_TOKEN is unset",
  );
  assert.equal(r.stdout, "");
});

Deno.test("the log level changes at run time: frame debug lines start and stop, the socket stays open, a ttl reverts it", async () => {
  await using srv = await spawnServer({ ADMIN_PORT: "0", COLOR: "green" });
  const ready = JSON.parse(srv.lines.find((l) => l.includes("admin_port"))!);
  const base = `http://127.0.0.1:${ready.admin_port}`;
  const put = (body: unknown) =>
    json(`${base}/admin/log-level`, {
      method: "PUT",
      body: JSON.stringify(body),
      headers: { "User-Agent": "ops-console/1" },
    });
  const frameLines = () =>
    srv.lines.filter((l) => l.includes('"message":"Frame answered')).length;

  await using client = await TestClient.open(
    `ws://127.0.0.1:${srv.port}/ws/chat/?session_uuid=lvl`,
  );
  assert.equal(await client.ask("a"), '{"count": 1}');
  assert.equal(frameLines(), 0, "no frame lines at info");

  const changed = await put({ level: "debug" });
  assert.equal(changed.status, 200);
  assert.deepEqual(changed.body, { level: "debug" });
  const audit = await srv.waitForLine(
    (l) => l.message === "Log level changed from info to debug",
    "the change's audit line",
  );
  assert.equal(audit.logger, "sockeye.admin");
  assert.equal(audit.remote_addr, "127.0.0.1");
  assert.equal(audit.user_agent, "ops-console/1");
  assert.equal(audit.old_level, "info");
  assert.equal(audit.new_level, "debug");
  assert.equal(await client.ask("b"), '{"count": 2}');
  const line = await srv.waitForLine(
    (l) => l.message === "Frame answered 2",
    "a frame debug line",
  );
  assert.equal(line.level, "debug");
  assert.equal(line.session_uuid, "lvl");
  assert.equal(line.count, 2);

  // Back to info: no more frame lines; the same socket keeps counting.
  assert.equal((await put({ level: "info" })).status, 200);
  const before = frameLines();
  assert.equal(await client.ask("c"), '{"count": 3}');
  assert.equal(await client.ask("d"), '{"count": 4}');
  assert.equal(frameLines(), before);

  // Bad input: 400 naming the allowed levels; nothing changes.
  const bad = await put({ level: "verbose" });
  assert.equal(bad.status, 400);
  assert.match(
    bad.body.message as string,
    /"verbose".*debug, info, warning, error, critical/,
  );
  for (const body of [{ level: "debug", ttl_s: 0 }, { level: 3 }, {}]) {
    assert.equal((await put(body)).status, 400, JSON.stringify(body));
  }
  const notJson = await fetch(`${base}/admin/log-level`, {
    method: "PUT",
    body: "debug",
  });
  assert.equal(notJson.status, 400);
  await notJson.body?.cancel();
  assert.deepEqual((await json(`${base}/admin/log-level`)).body, {
    level: "info",
  });

  // With a ttl it reverts by itself, and says so.
  const timed = await put({ level: "debug", ttl_s: 1 });
  assert.equal(timed.body.level, "debug");
  assert.equal(timed.body.reverts_to, "info");
  assert.ok(Date.parse(timed.body.reverts_at as string) > Date.now());
  assert.equal(await client.ask("e"), '{"count": 5}');
  await srv.waitForLine((l) => l.message === "Frame answered 5", "frame 5");
  const reverted = await srv.waitForLine(
    (l) => l.message === "Log level reverted from debug to info after 1 s",
    "the revert line",
  );
  assert.equal(reverted.new_level, "info");
  assert.deepEqual((await json(`${base}/admin/log-level`)).body, {
    level: "info",
  });
  const after = frameLines();
  assert.equal(await client.ask("f"), '{"count": 6}');
  assert.equal(frameLines(), after);
  assert.equal(client.ws.readyState, WebSocket.OPEN);
  // The token never appears, and no line was lost or broken.
  for (const l of srv.lines) JSON.parse(l);
});

Deno.test("connections are listed with their facts, paged; one can be closed with 4001", async () => {
  await using server = await startTestServer({ ADMIN_PORT: "0" });
  const clients = await Promise.all(
    [0, 1, 2].map((i) =>
      TestClient.open(server.ws(`/ws/chat/?session_uuid=list-${i}`))
    ),
  );
  try {
    assert.equal(await clients[0]!.ask("x"), '{"count": 1}');
    assert.equal(await clients[0]!.ask("y"), '{"count": 2}');
    const all = await json(admin(server, "/admin/connections"));
    assert.equal(all.body.total, 3);
    assert.equal(all.body.next_offset, null);
    const rows = all.body.connections as Array<Record<string, unknown>>;
    assert.deepEqual(rows.map((r) => r.session_id), [
      "list-0",
      "list-1",
      "list-2",
    ]);
    const first = rows[0]!;
    assert.equal(first.remote_addr, "127.0.0.1");
    assert.equal(first.messages, 2);
    assert.equal(first.buffered_bytes, 0);
    assert.match(first.user_agent as string, /Deno/);
    assert.ok(
      Math.abs(Date.parse(first.connected_at as string) - Date.now()) < 60_000,
    );
    assert.match(first.connection_id as string, /^[0-9a-f-]{36}$/);

    const page = await json(
      admin(server, "/admin/connections?limit=2&offset=1"),
    );
    assert.deepEqual(
      (page.body.connections as Array<{ session_id: string }>).map((r) =>
        r.session_id
      ),
      ["list-1", "list-2"],
    );
    assert.equal(page.body.next_offset, null);
    const head = await json(admin(server, "/admin/connections?limit=1"));
    assert.equal(head.body.next_offset, 1);
    for (const q of ["limit=0", "limit=1001", "limit=x", "offset=-1"]) {
      assert.equal(
        await status(admin(server, `/admin/connections?${q}`)),
        400,
        q,
      );
    }

    const closed = await del(
      server,
      `/admin/connections/${rows[1]!.connection_id}`,
    );
    assert.equal(closed.status, 200);
    assert.equal(closed.body.session_id, "list-1");
    const event = await within(clients[1]!.closed, "the 4001 close");
    assert.equal(event.code, 4001);
    assert.equal(event.reason, "disconnected by operator");
    assert.equal(
      (await del(server, `/admin/connections/${rows[1]!.connection_id}`))
        .status,
      404,
    );
    assert.equal(await clients[0]!.ask("z"), '{"count": 3}');
  } finally {
    for (const c of clients) await c.close();
  }
});

Deno.test("disconnecting a session closes its sockets with 4001, counted and logged; ?forget=true starts it over", async () => {
  await using server = await startTestServer({ ADMIN_PORT: "0" });
  const url = server.ws("/ws/chat/?session_uuid=op-1");
  const a = await TestClient.open(url, "sockeye.v1");
  const b = await TestClient.open(url, "sockeye.v1");
  await using other = await TestClient.open(
    server.ws("/ws/chat/?session_uuid=op-2"),
  );
  await a.next();
  await b.next();
  assert.equal(await a.ask("1"), '{"count": 1}');
  assert.equal(await b.ask("2"), '{"count": 2}');
  assert.equal(await other.ask("x"), '{"count": 1}');

  const res = await del(server, "/admin/sessions/op-1");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, {
    session_id: "op-1",
    disconnected: 2,
    forgotten: null,
  });
  for (const client of [a, b]) {
    const event = await within(client.closed, "the 4001 close");
    assert.equal(event.code, 4001);
    assert.equal(event.reason, "disconnected by operator");
  }
  await until(
    async () =>
      metricValue(
        await (await fetch(admin(server, "/metrics"))).text(),
        "websocket_disconnects_total",
        {
          code: "4001",
        },
      ) === 2,
    "two 4001 closes counted",
  );
  const text = await (await fetch(admin(server, "/metrics"))).text();
  assert.equal(
    metricValue(text, "websocket_errors_total", {
      error_type: "closed_by_operator",
    }),
    2,
  );
  // Not forgotten: it resumes where it was; the other session is untouched.
  {
    await using again = await TestClient.open(url, "sockeye.v1");
    assert.match(await again.next(), /"count": 2, "resumed": true/);
  }
  assert.equal(await other.ask("y"), '{"count": 2}');

  // Forgotten: the next connection starts at 0.
  const c = await TestClient.open(url, "sockeye.v1");
  await c.next();
  assert.equal(await c.ask("3"), '{"count": 3}');
  const forgot = await del(server, "/admin/sessions/op-1?forget=true");
  assert.deepEqual(forgot.body, {
    session_id: "op-1",
    disconnected: 1,
    forgotten: true,
  });
  assert.equal((await c.closed).code, 4001);
  {
    await using fresh = await TestClient.open(url, "sockeye.v1");
    assert.match(await fresh.next(), /"count": 0, "resumed": false/);
    assert.equal(await fresh.ask("again"), '{"count": 1}');
  }
  // A stored session without sockets can be forgotten; nothing else is 404.
  assert.equal(
    (await del(server, "/admin/sessions/op-1?forget=true")).body.forgotten,
    true,
  );
  const refused: Array<[string, number]> = [
    ["op-1?forget=true", 404],
    ["nobody", 404],
    ["bad%20id", 400],
    ["op-2?forget=yes", 400],
  ];
  for (const [path, code] of refused) {
    assert.equal((await del(server, `/admin/sessions/${path}`)).status, code);
  }
});

Deno.test("?forget=true deletes the session's key in Redis", async () => {
  await using redis = await startRedis();
  await using server = await startTestServer({
    ADMIN_PORT: "0",
    REDIS_URL: redis.url,
  });
  await until(
    async () => await status(server.http("/readyz")) === 200,
    "Redis ready",
  );
  const url = server.ws("/ws/chat/?session_uuid=redis-op");
  const c = await TestClient.open(url, "sockeye.v1");
  await c.next();
  for (let i = 1; i <= 3; i++) {
    assert.equal(await c.ask("m"), `{"count": ${i}}`);
  }
  const { body } = await del(server, "/admin/sessions/redis-op?forget=true");
  assert.equal(body.forgotten, true, "the key existed");
  assert.equal(body.disconnected, 1);
  assert.equal((await c.closed).code, 4001);
  const cli = await new Deno.Command("redis-cli", {
    args: ["-p", String(redis.port), "EXISTS", "sockeye:session:redis-op"],
    stdout: "piped",
  }).output();
  assert.equal(new TextDecoder().decode(cli.stdout).trim(), "0");
  await using fresh = await TestClient.open(url, "sockeye.v1");
  assert.match(await fresh.next(), /"count": 0, "resumed": false/);
});

Deno.test("sockeye admin: log-level, connections, disconnect, profile, and its errors", async () => {
  await using server = await startTestServer({
    ADMIN_PORT: "0",
    ADMIN_TOKEN: "cli-token",
  });
  const env = {
    ADMIN_URL: `http://127.0.0.1:${server.server.adminPort}`,
    ADMIN_TOKEN: "cli-token",
  };
  await using client = await TestClient.open(
    server.ws("/ws/chat/?session_uuid=cli-1"),
  );
  assert.equal(await client.ask("m"), '{"count": 1}');

  let r = await sockeye(["admin", "log-level"], env);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "info\n");
  r = await sockeye(["admin", "log-level", "warning", "--ttl", "30"], env);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^warning \(reverts to info at \d{4}-.*Z\)\n$/);
  r = await sockeye(["admin", "log-level", "info"], env);
  assert.equal(r.stdout, "info\n");

  r = await sockeye(["admin", "connections", "--json"], env);
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout);
  assert.equal(rows.length, 1);
  assert.equal(rows[0].session_id, "cli-1");
  r = await sockeye(["admin", "connections"], env);
  assert.match(r.stdout, /^CONNECTION\s+SESSION\s+CLIENT/);
  assert.match(r.stdout, /cli-1\s+127\.0\.0\.1/);
  assert.match(r.stdout, /\n1 open\n$/);

  const dir = await Deno.makeTempDir({ prefix: "sockeye-admin-cli-" });
  try {
    r = await sockeye(
      ["admin", "profile", "--seconds", "1", "-o", `${dir}/cpu.pb.gz`],
      env,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /CPU profile \(1 s, pprof\): \d+ bytes written to/);
    const bytes = await Deno.readFile(`${dir}/cpu.pb.gz`);
    assert.deepEqual([...bytes.subarray(0, 2)], [0x1f, 0x8b], "gzip");
    r = await sockeye(
      [
        "admin",
        "heap",
        "--seconds",
        "1",
        "--format",
        "heapprofile",
        "-o",
        `${dir}/h.json`,
      ],
      env,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.ok(JSON.parse(await Deno.readTextFile(`${dir}/h.json`)).head);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  r = await sockeye(["admin", "disconnect", "cli-1", "--forget"], env);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    r.stdout,
    "session cli-1: 1 sockets closed (4001), stored count deleted\n",
  );
  assert.equal((await client.closed).code, 4001);

  // Refused or unreachable: exit 1 with the server's message.
  r = await sockeye(["admin", "disconnect", "cli-1"], env);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /answered 404: No open connection holds session "cli-1"/,
  );
  r = await sockeye(["admin", "log-level"], { ...env, ADMIN_TOKEN: "nope" });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /answered 401: .*\(set ADMIN_TOKEN\)/);
  // Bad command lines: exit 2, one line.
  for (
    const args of [
      ["admin"],
      ["admin", "nope"],
      ["admin", "log-level", "loud"],
      ["admin", "profile", "--seconds", "61"],
      ["admin", "disconnect"],
      ["admin", "connections", "--jsno"],
    ]
  ) {
    r = await sockeye(args, env);
    assert.equal(r.code, 2, args.join(" "));
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
  for (
    const action of [
      "log-level",
      "profile",
      "heap",
      "connections",
      "disconnect",
    ]
  ) {
    r = await sockeye(["admin", action, "--help"]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, new RegExp(`^Usage: sockeye admin ${action}\\b`));
  }
  r = await sockeye(["admin", "--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^Usage: sockeye admin ACTION/);
});
