/**
 * Who the client is and how much it may open: `TRUSTED_PROXIES` through the
 * shipped nginx (clients on loopback addresses of their own), the connect
 * rate and the per-client socket cap (per address, per subject with
 * authentication), and the bounds of the per-client tables.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { SignJWT } from "jose";
import { ClientLimits } from "../src/sessions/client_limits.ts";
import {
  limitKey,
  normaliseCidr,
  TrustedProxies,
} from "../src/sessions/client_address.ts";
import {
  metricValue,
  rawUpgrade,
  spawnServer,
  startNginx,
  startTestServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

/** A raw upgrade sent from a loopback address of the test's choosing. */
interface UpgradeFrom extends Disposable {
  readonly status: number;
  readonly headers: Record<string, string>;
}

/**
 * Sends an HTTP/1.1 WebSocket upgrade from `localAddress` (any of
 * 127.0.0.0/8) and reads the response head; the socket stays open until
 * disposed.
 */
async function upgradeFrom(
  localAddress: string,
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<UpgradeFrom> {
  const socket = net.connect({ host: "127.0.0.1", port, localAddress });
  const head = Promise.withResolvers<string>();
  let received = "";
  socket.on("data", (chunk: Uint8Array) => {
    received += new TextDecoder().decode(chunk);
    const end = received.indexOf("\r\n\r\n");
    if (end >= 0) head.resolve(received.slice(0, end));
  });
  socket.on("error", (error: Error) => head.reject(error));
  socket.on("close", () => head.reject(new Error("Connection closed")));
  socket.write(
    [
      `GET ${path} HTTP/1.1`,
      `Host: 127.0.0.1:${port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version: 13",
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ].join("\r\n") + "\r\n\r\n",
  );
  try {
    const [statusLine = "", ...lines] = (await within(head.promise, "a head"))
      .split("\r\n");
    const parsed: Record<string, string> = {};
    for (const line of lines) {
      const i = line.indexOf(":");
      parsed[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    return {
      status: Number(statusLine.split(" ")[1]),
      headers: parsed,
      [Symbol.dispose]: () => socket.destroy(),
    };
  } catch (error) {
    socket.destroy();
    throw error;
  }
}

Deno.test("behind the shipped nginx, logs show the client's address; a made-up X-Forwarded-For is not believed", async () => {
  await using proc = await spawnServer({ TRUSTED_PROXIES: "127.0.0.1" });
  await using nginx = await startNginx(proc.port);
  const addressOf = async (session: string) =>
    (await proc.waitForLine(
      (l) => l.message === "WebSocket connected" && l.session_uuid === session,
      `the connect line of ${session}`,
    )).remote_addr;

  {
    using up = await upgradeFrom(
      "127.0.0.9",
      nginx.port,
      "/ws/chat/?session=p1",
    );
    assert.equal(up.status, 101);
    assert.equal(await addressOf("p1"), "127.0.0.9", "the client, not nginx");
  }
  {
    // nginx appends the address it saw: the rightmost untrusted hop wins.
    using up = await upgradeFrom(
      "127.0.0.9",
      nginx.port,
      "/ws/chat/?session=p2",
      { "X-Forwarded-For": "203.0.113.7" },
    );
    assert.equal(up.status, 101);
    assert.equal(await addressOf("p2"), "127.0.0.9");
  }
  {
    // Straight to sockeye from an untrusted peer: the header is ignored.
    using up = await upgradeFrom(
      "127.0.0.9",
      proc.port,
      "/ws/chat/?session=p3",
      { "X-Forwarded-For": "203.0.113.7" },
    );
    assert.equal(up.status, 101);
    assert.equal(await addressOf("p3"), "127.0.0.9");
  }
  {
    // From the trusted address the header is believed.
    using up = await upgradeFrom(
      "127.0.0.1",
      proc.port,
      "/ws/chat/?session=p4",
      { "X-Forwarded-For": "203.0.113.7" },
    );
    assert.equal(up.status, 101);
    assert.equal(await addressOf("p4"), "203.0.113.7");
  }
});

Deno.test("CONNECT_RATE_LIMIT_PER_S answers 429 with Retry-After per address, and recovers", async () => {
  await using server = await startTestServer({
    CONNECT_RATE_LIMIT_PER_S: "0.5",
  });
  {
    using first = await rawUpgrade(server.port, "/ws/chat/");
    assert.equal(first.status, 101);
  }
  {
    using second = await rawUpgrade(server.port, "/ws/chat/");
    assert.equal(second.status, 429);
    assert.equal(second.headers["retry-after"], "2");
  }
  {
    using other = await upgradeFrom("127.0.0.9", server.port, "/ws/chat/");
    assert.equal(other.status, 101, "another address has its own bucket");
  }
  await until(
    async () => {
      using again = await rawUpgrade(server.port, "/ws/chat/");
      return again.status === 101;
    },
    "a token in the bucket again",
    { intervalMs: 250, timeoutMs: 10_000 },
  );
  assert.ok(
    metricValue(await server.metrics(), "websocket_errors_total", {
      error_type: "connect_rate_limited",
    }) >= 1,
  );
});

Deno.test("MAX_CONNECTIONS_PER_CLIENT caps sockets per address, and a closed one makes room", async () => {
  await using server = await startTestServer({
    MAX_CONNECTIONS_PER_CLIENT: "2",
  });
  const a = await TestClient.open(server.ws());
  const b = await TestClient.open(server.ws());
  {
    using third = await rawUpgrade(server.port, "/ws/chat/");
    assert.equal(third.status, 429);
    assert.equal(third.headers["retry-after"], "5");
  }
  {
    using other = await upgradeFrom("127.0.0.9", server.port, "/ws/chat/");
    assert.equal(other.status, 101, "another address is not capped");
  }
  await a.close();
  await until(async () => {
    using again = await rawUpgrade(server.port, "/ws/chat/");
    return again.status === 101;
  }, "room after a close");
  await b.close();
  assert.equal(
    metricValue(await server.metrics(), "websocket_errors_total", {
      error_type: "too_many_connections",
    }),
    1,
  );
});

Deno.test("with authentication the cap counts per subject, whatever the address", async () => {
  const secret = "test-secret-of-at-least-32-bytes-long!";
  await using server = await startTestServer({
    AUTH_JWT_SECRET: secret,
    MAX_CONNECTIONS_PER_CLIENT: "1",
  });
  const token = (sub: string) =>
    new SignJWT({ sub }).setProtectedHeader({ alg: "HS256" })
      .sign(new TextEncoder().encode(secret));
  const alice = await token("alice");
  const first = await TestClient.open(server.ws(`/ws/chat/?token=${alice}`));
  {
    using again = await upgradeFrom("127.0.0.9", server.port, "/ws/chat/", {
      Authorization: `Bearer ${alice}`,
    });
    assert.equal(again.status, 429, "alice from another address");
  }
  {
    using bob = await rawUpgrade(server.port, "/ws/chat/", {
      Authorization: `Bearer ${await token("bob")}`,
    });
    assert.equal(bob.status, 101, "bob from alice's address");
  }
  await first.close();
});

Deno.test("X-Forwarded-For: the rightmost untrusted hop, ports and IPv6 read, junk stops the walk", () => {
  const proxies = new TrustedProxies(["10.0.0.0/8", "fd00::/8"]);
  assert.equal(
    proxies.clientAddress("10.0.0.2", "203.0.113.9, 198.51.100.4, 10.0.0.1"),
    "198.51.100.4",
  );
  assert.equal(proxies.clientAddress("192.0.2.1", "203.0.113.9"), "192.0.2.1");
  assert.equal(proxies.clientAddress("10.0.0.2", null), "10.0.0.2");
  assert.equal(
    proxies.clientAddress("::ffff:10.0.0.2", "[2001:db8::1]:443"),
    "2001:db8::1",
  );
  assert.equal(
    proxies.clientAddress("fd00::5", "198.51.100.4:5000"),
    "198.51.100.4",
  );
  assert.equal(proxies.clientAddress("10.0.0.2", "junk, 10.0.0.7"), "10.0.0.7");
  assert.equal(
    proxies.clientAddress("10.0.0.2", "10.1.1.1, 10.0.0.7"),
    "10.1.1.1",
  );
  assert.equal(
    new TrustedProxies([]).clientAddress("10.0.0.2", "1.2.3.4"),
    "10.0.0.2",
  );
  assert.equal(normaliseCidr("192.0.2.7"), "192.0.2.7/32");
  assert.equal(normaliseCidr("::ffff:10.0.0.0/104"), "10.0.0.0/8");
  for (const bad of ["10.0.0.0/33", "010.0.0.1", "example.com", "10.0.0.0/x"]) {
    assert.equal(normaliseCidr(bad), undefined, bad);
  }
  assert.equal(limitKey("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
  assert.equal(limitKey("2001:db8:1:2::9"), limitKey("2001:db8:1:2:ffff::1"));
  assert.equal(limitKey("192.0.2.7"), "192.0.2.7");
});

Deno.test("the connect buckets stay bounded: idle ones are forgotten, a flood turns the generations early", () => {
  let now = 0;
  const limits = new ClientLimits({
    connectRatePerS: 1,
    maxConnectionsPerClient: 0,
    maxTrackedClients: 100,
    now: () => now,
  });
  for (let i = 0; i < 10_000; i++) {
    assert.equal(limits.takeConnect(`client-${i}`), 0);
    assert.ok(limits.trackedClients <= 200);
  }
  // One second later a bucket has refilled: the same client may connect.
  assert.equal(limits.takeConnect("client-9999"), 1, "empty for now");
  now += 1000;
  assert.equal(limits.takeConnect("client-9999"), 0);
  // Idle for two generations: everything is forgotten.
  now += 2000;
  limits.takeConnect("late");
  assert.equal(limits.trackedClients, 1);
  // Slots exist only while held.
  const capped = new ClientLimits({
    connectRatePerS: 0,
    maxConnectionsPerClient: 1,
  });
  const release = capped.acquire("a")!;
  assert.equal(capped.acquire("a"), undefined);
  release();
  release();
  assert.equal(capped.clientsWithSockets, 0);
  assert.ok(capped.acquire("a"));
});
