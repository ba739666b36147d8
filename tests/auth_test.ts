/**
 * Token authentication against real servers, with tokens and keys made in
 * the test with jose: every key source, every failed check (401, counted,
 * logged without the token), sessions owned by their subject (also across
 * two instances on Redis), the close at `exp`, signed session ids, and no
 * token in traces.
 */
import assert from "node:assert/strict";
import {
  exportJWK,
  exportSPKI,
  generateKeyPair,
  type JWTPayload,
  SignJWT,
  UnsecuredJWT,
} from "jose";
import { Redis } from "ioredis";
import { runLoadtest } from "../src/cli/loadtest.ts";
import {
  metricValue,
  rawUpgrade,
  spawnServer,
  startRedis,
  startTestServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

const SECRET = "test-secret-of-at-least-32-bytes-long!";
const SESSION_SECRET = "another-secret-for-session-ids-32+bytes";
const encoder = new TextEncoder();

/** Whole seconds since the epoch, as JWTs count time. */
function nowS(): number {
  return Math.floor(Date.now() / 1000);
}

/** Signs a token with claims `{sub, exp: +1 h}` and `extra` over them. */
function sign(
  key: CryptoKey | Uint8Array,
  alg: string,
  extra: JWTPayload = {},
  header: Record<string, string> = {},
): Promise<string> {
  return new SignJWT({ sub: "alice", exp: nowS() + 3600, ...extra })
    .setProtectedHeader({ alg, ...header })
    .sign(key);
}

function hs256(extra: JWTPayload = {}): Promise<string> {
  return sign(encoder.encode(SECRET), "HS256", extra);
}

/** Opens a socket with `?token=` (as a browser does) and the session frame. */
async function openAs(
  url: string,
  token: string,
  session?: string,
): Promise<{ client: TestClient; session: string; count: number }> {
  const query = new URLSearchParams({ token });
  if (session !== undefined) query.set("session_uuid", session);
  const client = await TestClient.open(`${url}?${query}`, "sockeye.v1");
  const frame = JSON.parse(await client.next());
  return { client, session: frame.session_uuid, count: frame.count };
}

/** Status of an upgrade sent with a bearer token (or none). */
async function upgradeStatus(
  port: number,
  path: string,
  token?: string,
): Promise<{ status: number; headers: Record<string, string> }> {
  using up = await rawUpgrade(
    port,
    path,
    token === undefined ? {} : { Authorization: `Bearer ${token}` },
  );
  return { status: up.status, headers: up.headers };
}

Deno.test("HS256, RS256, ES256 and a served JWKS each admit a valid token", async (t) => {
  await t.step(
    "HS256 from AUTH_JWT_SECRET, in the header and in ?token=",
    async () => {
      await using server = await startTestServer({ AUTH_JWT_SECRET: SECRET });
      const token = await hs256();
      assert.equal(
        (await upgradeStatus(server.port, "/ws/chat/", token)).status,
        101,
      );
      const { client } = await openAs(server.ws(), token);
      assert.equal(await client.ask("hi"), '{"count": 1}');
      await client.close();
    },
  );
  for (const alg of ["RS256", "ES256"]) {
    await t.step(`${alg} from AUTH_JWT_PUBLIC_KEY`, async () => {
      const keys = await generateKeyPair(alg, { extractable: true });
      await using server = await startTestServer({
        AUTH_JWT_PUBLIC_KEY: await exportSPKI(keys.publicKey),
      });
      const token = await sign(keys.privateKey, alg);
      assert.equal(
        (await upgradeStatus(server.port, "/ws/chat/", token)).status,
        101,
      );
    });
  }
  await t.step(
    "RS256 from a key set the test serves at AUTH_JWKS_URL",
    async () => {
      const keys = await generateKeyPair("RS256", { extractable: true });
      const jwk = {
        ...await exportJWK(keys.publicKey),
        kid: "k1",
        alg: "RS256",
      };
      let fetches = 0;
      const ac = new AbortController();
      const jwks = Deno.serve(
        { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
        () => {
          fetches++;
          return Response.json({ keys: [jwk] });
        },
      );
      try {
        await using server = await startTestServer({
          AUTH_JWKS_URL: `http://127.0.0.1:${jwks.addr.port}/jwks.json`,
        });
        for (let i = 0; i < 3; i++) {
          const token = await sign(keys.privateKey, "RS256", {}, { kid: "k1" });
          assert.equal(
            (await upgradeStatus(server.port, "/ws/chat/", token)).status,
            101,
          );
        }
        assert.equal(fetches, 1, "the key set is fetched once and cached");
      } finally {
        ac.abort();
        await jwks.finished;
      }
    },
  );
});

Deno.test("bad tokens get 401 before the upgrade, each counted and logged with its check, never the token", async () => {
  const rsa = await generateKeyPair("RS256", { extractable: true });
  const other = await generateKeyPair("RS256");
  const pem = await exportSPKI(rsa.publicKey);
  const key = rsa.privateKey;
  await using proc = await spawnServer({
    AUTH_JWT_PUBLIC_KEY: pem,
    AUTH_JWT_ISSUER: "https://issuer.test",
    AUTH_JWT_AUDIENCE: "sockeye",
  });
  const good = { iss: "https://issuer.test", aud: "sockeye" };
  const cases: Array<[string, string | undefined, string]> = [
    ["no token", undefined, "missing"],
    [
      "alg none",
      new UnsecuredJWT({ sub: "alice", ...good }).encode(),
      "algorithm",
    ],
    [
      "HS256 signed with the RSA public key",
      await sign(encoder.encode(pem), "HS256", good),
      "algorithm",
    ],
    ["another key", await sign(other.privateKey, "RS256", good), "signature"],
    [
      "expired",
      await sign(key, "RS256", { ...good, exp: nowS() - 10 }),
      "expired",
    ],
    [
      "nbf in the future",
      await sign(key, "RS256", { ...good, nbf: nowS() + 600 }),
      "not_yet_valid",
    ],
    [
      "wrong iss",
      await sign(key, "RS256", { ...good, iss: "https://evil.test" }),
      "issuer",
    ],
    [
      "wrong aud",
      await sign(key, "RS256", { ...good, aud: "other" }),
      "audience",
    ],
    [
      "no sub",
      await sign(key, "RS256", { ...good, sub: undefined }),
      "subject",
    ],
    ["garbage", "not.a.jwt-at-all", "malformed"],
  ];
  for (const [what, token, reason] of cases) {
    const { status, headers } = await upgradeStatus(
      proc.port,
      "/ws/chat/",
      token,
    );
    assert.equal(status, 401, what);
    assert.equal(
      headers["www-authenticate"],
      token === undefined
        ? 'Bearer realm="sockeye"'
        : 'Bearer error="invalid_token"',
      what,
    );
    const line = await proc.waitForLine(
      (l) => l.error_type === "unauthorized" && l.reason === reason,
      `the log line of "${what}"`,
    );
    assert.equal(line.status, 401);
  }
  // The same through ?token=, as browsers send it.
  const expired = await sign(key, "RS256", { ...good, exp: nowS() - 10 });
  {
    using up = await rawUpgrade(proc.port, `/ws/chat/?token=${expired}`);
    assert.equal(up.status, 401);
  }
  const metrics = await (await fetch(`http://127.0.0.1:${proc.port}/metrics`))
    .text();
  assert.equal(
    metricValue(metrics, "websocket_errors_total", {
      error_type: "unauthorized",
    }),
    cases.length + 1,
  );
  // A valid token still passes on the same server.
  assert.equal(
    (await upgradeStatus(
      proc.port,
      "/ws/chat/",
      await sign(key, "RS256", good),
    ))
      .status,
    101,
  );
  await proc.waitForLine((l) => l.message === "WebSocket connected", "connect");
  const tokens = cases.map(([, token]) => token).filter((t) => t !== undefined);
  for (const line of proc.lines) {
    for (const token of [...tokens, expired]) {
      // The signature part alone would be enough to replay nothing, but no
      // part of a token belongs in a log line.
      assert.ok(!line.includes(token!.split(".").at(-1) || token!), line);
    }
  }
});

Deno.test("a key set that cannot be fetched is 503 auth_unavailable, not the client's fault", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await using server = await startTestServer({
    AUTH_JWKS_URL: `http://127.0.0.1:${port}/jwks.json`,
  });
  const keys = await generateKeyPair("ES256");
  const { status, headers } = await upgradeStatus(
    server.port,
    "/ws/chat/",
    await sign(keys.privateKey, "ES256", {}, { kid: "k" }),
  );
  assert.equal(status, 503);
  assert.equal(headers["retry-after"], "5");
  assert.equal(
    metricValue(await server.metrics(), "websocket_errors_total", {
      error_type: "auth_unavailable",
    }),
    1,
  );
});

Deno.test("a session belongs to the subject that created it", async () => {
  await using server = await startTestServer({ AUTH_JWT_SECRET: SECRET });
  const alice = await hs256({ sub: "alice" });
  const bob = await hs256({ sub: "bob" });
  const a = await openAs(server.ws(), alice);
  assert.equal(a.count, 0);
  assert.equal(await a.client.ask("one"), '{"count": 1}');
  assert.equal(await a.client.ask("two"), '{"count": 2}');
  await a.client.close();

  const { status } = await upgradeStatus(
    server.port,
    `/ws/chat/?session_uuid=${a.session}`,
    bob,
  );
  assert.equal(status, 403, "bob cannot resume alice's session");
  const again = await openAs(server.ws(), alice, a.session);
  assert.equal(again.count, 2, "bob's attempt changed nothing");
  assert.equal(await again.client.ask("three"), '{"count": 3}');
  await again.client.close();
  // Without SESSION_SECRET a new id is created for whoever names it first.
  const b = await openAs(server.ws(), bob, "bobs-own-session");
  assert.equal(b.count, 0);
  await b.client.close();
  assert.equal(
    metricValue(await server.metrics(), "websocket_errors_total", {
      error_type: "session_forbidden",
    }),
    1,
  );
});

Deno.test("ownership holds across two instances sharing Redis, stored with the count", async () => {
  await using redis = await startRedis();
  const env = { AUTH_JWT_SECRET: SECRET, REDIS_URL: redis.url };
  await using blue = await startTestServer(env);
  await using green = await startTestServer({ ...env, COLOR: "green" });
  await until(() => blue.server.lifecycle.state === "ready", "blue ready");
  const ready = async (s: typeof blue) => {
    const res = await fetch(s.http("/readyz"));
    await res.body?.cancel();
    return res.status === 200;
  };
  await until(() => ready(blue), "blue's Redis");
  await until(() => ready(green), "green's Redis");
  const alice = await hs256({ sub: "alice" });
  const bob = await hs256({ sub: "bob" });

  const a = await openAs(blue.ws(), alice);
  assert.equal(await a.client.ask("one"), '{"count": 1}');
  await a.client.close();
  assert.equal(
    (await upgradeStatus(
      green.port,
      `/ws/chat/?session_uuid=${a.session}`,
      bob,
    )).status,
    403,
  );
  const resumed = await openAs(green.ws(), alice, a.session);
  assert.equal(resumed.count, 1);
  assert.equal(await resumed.client.ask("two"), '{"count": 2}');
  await resumed.client.close();

  const client = new Redis(redis.url, { lazyConnect: true });
  try {
    await client.connect();
    assert.equal(await client.get(`sockeye:session:${a.session}`), "2");
    assert.equal(await client.get(`sockeye:owner:${a.session}`), "alice");
    const countTtl = await client.pttl(`sockeye:session:${a.session}`);
    const ownerTtl = await client.pttl(`sockeye:owner:${a.session}`);
    assert.ok(ownerTtl > countTtl, "the owner outlives its count");
  } finally {
    await client.quit();
  }
});

Deno.test("at the token's exp an open socket closes with 1008 token expired; a fresh token resumes", async () => {
  await using server = await startTestServer({ AUTH_JWT_SECRET: SECRET });
  const { client, session } = await openAs(
    server.ws(),
    await hs256({ exp: nowS() + 2 }),
  );
  assert.equal(await client.ask("one"), '{"count": 1}');
  const closed = await within(client.closed, "the close at exp", 5000);
  assert.equal(closed.code, 1008);
  assert.equal(closed.reason, "token expired");
  assert.equal(
    metricValue(await server.metrics(), "websocket_errors_total", {
      error_type: "token_expired",
    }),
    1,
  );
  const again = await openAs(server.ws(), await hs256(), session);
  assert.equal(again.count, 1);
  assert.equal(await again.client.ask("two"), '{"count": 2}');
  await again.client.close();
});

Deno.test("SESSION_SECRET: server-issued ids resume, chosen and altered ones get 400", async () => {
  await using server = await startTestServer({ SESSION_SECRET });
  const first = await TestClient.open(server.ws(), "sockeye.v1");
  const { session_uuid: id } = JSON.parse(await first.next());
  assert.match(id, /^[A-Za-z0-9_-]{44}$/);
  assert.equal(await first.ask("one"), '{"count": 1}');
  await first.close();

  const again = await TestClient.open(
    server.ws(`/ws/chat/?session_uuid=${id}`),
    "sockeye.v1",
  );
  assert.equal(JSON.parse(await again.next()).count, 1);
  await again.close();

  const last = id.at(-1) === "A" ? "B" : "A";
  const altered = [
    "test",
    crypto.randomUUID(),
    id.slice(0, -1) + last,
    (id[0] === "A" ? "B" : "A") + id.slice(1),
  ];
  for (const bad of altered) {
    using up = await rawUpgrade(server.port, `/ws/chat/?session_uuid=${bad}`);
    assert.equal(up.status, 400, bad);
  }
  assert.equal(
    metricValue(await server.metrics(), "websocket_errors_total", {
      error_type: "invalid_session_id",
    }),
    altered.length,
  );
});

Deno.test("with SESSION_SECRET and a token, another subject's id is refused alike whether its session exists or not", async () => {
  const env = { AUTH_JWT_SECRET: SECRET, SESSION_SECRET };
  await using one = await startTestServer(env);
  // A second instance with an empty memory store, the same secrets.
  await using two = await startTestServer(env);
  const a = await openAs(one.ws(), await hs256({ sub: "alice" }));
  await a.client.close();
  const bob = await hs256({ sub: "bob" });
  const answers = [];
  for (const server of [one, two]) {
    const res = await upgradeStatus(
      server.port,
      `/ws/chat/?session_uuid=${a.session}`,
      bob,
    );
    answers.push([res.status, res.headers["content-length"]]);
  }
  assert.deepEqual(answers[0], [403, answers[0]![1]]);
  assert.deepEqual(answers[1], answers[0], "exists on one, not on two");
  const resumed = await openAs(two.ws(), await hs256(), a.session);
  assert.equal(resumed.count, 0, "alice's id is hers on any instance");
  await resumed.client.close();
});

Deno.test("a bearer token never reaches a span; the connection span names the subject", async () => {
  const spans: Array<{ name: string; attributes?: unknown[] }> = [];
  const ac = new AbortController();
  const receiver = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async (req) => {
      const json = await req.json();
      for (const rs of json.resourceSpans ?? []) {
        for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
      }
      return Response.json({});
    },
  );
  try {
    await using proc = await spawnServer({
      AUTH_JWT_SECRET: SECRET,
      OTEL_DENO: "true",
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.addr.port}`,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_DENO_CONSOLE: "ignore",
    });
    const token = await hs256({ sub: "alice" });
    {
      using up = await rawUpgrade(proc.port, "/ws/chat/?session_uuid=s1", {
        Authorization: `Bearer ${token}`,
      });
      assert.equal(up.status, 101);
      assert.equal(await up.sendText("m") > 0, true);
    }
    const expired = await hs256({ exp: nowS() - 5 });
    {
      using up = await rawUpgrade(proc.port, "/ws/chat/", {
        Authorization: `Bearer ${expired}`,
      });
      assert.equal(up.status, 401);
    }
    const connected = await proc.waitForLine(
      (l) => l.message === "WebSocket connected",
      "connect line",
    );
    assert.equal(connected.user_id, "alice");
    await proc.waitForLine(
      (l) => l.message === "WebSocket disconnected",
      "disconnect line",
    );
    proc.child.kill("SIGTERM");
    await proc.status;
    await until(
      () =>
        spans.filter((s) => s.name === "GET /ws/chat/").length >= 2 &&
        spans.some((s) => s.name === "WebSocket /ws/chat/"),
      "the exported spans",
    );
    const text = JSON.stringify(spans);
    for (const t of [token, expired]) {
      for (const part of t.split(".")) assert.ok(!text.includes(part), part);
    }
    const conn = spans.find((s) => s.name === "WebSocket /ws/chat/")!;
    assert.ok(
      JSON.stringify(conn.attributes).includes(
        '{"key":"enduser.id","value":{"stringValue":"alice"}}',
      ),
    );
  } finally {
    ac.abort();
    await receiver.finished;
  }
});

Deno.test("sockeye loadtest --token authenticates every socket with a bearer header", async () => {
  await using server = await startTestServer({ AUTH_JWT_SECRET: SECRET });
  const options = {
    url: server.ws(),
    connections: 3,
    messages: 2,
    rate: 0,
    ramp: 0,
    connectConcurrency: 3,
    holdS: 0,
    timeoutS: 10,
    payload: "x",
  };
  const without = await runLoadtest(options);
  assert.equal(without.connections.opened, 0);
  assert.equal(without.errors.connect_failed, 3);
  const authed = await runLoadtest({ ...options, token: await hs256() });
  assert.equal(authed.connections.opened, 3);
  assert.equal(authed.messages.ok, 6);
  assert.ok(!authed.url.includes("token"));
});
