/**
 * The WebSocket protocol at /ws/chat/, over real sockets: frames byte for
 * byte, sessions, heartbeats and every bad-input answer.
 */
import assert from "node:assert/strict";
import {
  metricValue,
  rawUpgrade,
  startTestServer,
  TestClient,
  until,
  within,
} from "./_helpers.ts";

const UUID_V4 =
  /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

Deno.test('replies {"count": n} byte for byte, and nothing unsolicited', async () => {
  await using srv = await startTestServer();
  await using client = await TestClient.open(srv.ws());
  assert.equal(await client.ask("hello"), '{"count": 1}');
  assert.equal(await client.ask("again"), '{"count": 2}');
  assert.equal(await client.ask(""), '{"count": 3}');
  assert.equal(await client.ask("ünïcødé ✓"), '{"count": 4}');
  // Plain clients get no session frame: the first frame was the first reply.
  assert.deepEqual(client.received, [
    '{"count": 1}',
    '{"count": 2}',
    '{"count": 3}',
    '{"count": 4}',
  ]);
});

Deno.test("/ws/chat without the slash serves the same protocol", async () => {
  await using srv = await startTestServer();
  await using client = await TestClient.open(srv.ws("/ws/chat"));
  assert.equal(await client.ask("x"), '{"count": 1}');
});

Deno.test("names the session in X-Session-UUID, a fresh UUID v4 when none is given", async () => {
  await using srv = await startTestServer();
  {
    using up = await rawUpgrade(srv.port, "/ws/chat/");
    assert.equal(up.status, 101);
    assert.match(up.headers["x-session-uuid"]!, UUID_V4);
    assert.ok(up.headers["x-request-id"]);
  }
  {
    using up = await rawUpgrade(srv.port, "/ws/chat/?session_uuid=my-own_ID-1");
    assert.equal(up.status, 101);
    assert.equal(up.headers["x-session-uuid"], "my-own_ID-1");
  }
  await until(() => srv.server.lifecycle.state === "ready", "ready");
});

Deno.test("sockeye.v1 clients get the session frame first", async () => {
  await using srv = await startTestServer();
  const id = crypto.randomUUID();
  {
    await using c = await TestClient.open(
      srv.ws(`/ws/chat/?session_uuid=${id}`),
      ["other", "sockeye.v1"],
    );
    assert.equal(c.ws.protocol, "sockeye.v1");
    assert.equal(
      await c.next(),
      `{"type": "session", "session_uuid": "${id}", "count": 0, "resumed": false}`,
    );
    assert.equal(await c.ask("a"), '{"count": 1}');
    assert.equal(await c.ask("b"), '{"count": 2}');
  }
  await using again = await TestClient.open(
    srv.ws(`/ws/chat/?session_uuid=${id}`),
    "sockeye.v1",
  );
  assert.equal(
    await again.next(),
    `{"type": "session", "session_uuid": "${id}", "count": 2, "resumed": true}`,
  );
});

Deno.test("a reconnect with session_uuid or its aliases continues the count", async () => {
  await using srv = await startTestServer();
  const id = crypto.randomUUID();
  let expected = 0;
  for (const param of ["session_uuid", "session_id", "session"]) {
    await using c = await TestClient.open(srv.ws(`/ws/chat/?${param}=${id}`));
    assert.equal(await c.ask("m"), `{"count": ${++expected}}`);
    assert.equal(await c.ask("m"), `{"count": ${++expected}}`);
  }
  const text = await srv.metrics();
  assert.equal(metricValue(text, "websocket_session_resumes_total"), 2);
  assert.equal(metricValue(text, "websocket_connections_total"), 3);
});

Deno.test("another session's count is its own", async () => {
  await using srv = await startTestServer();
  await using a = await TestClient.open(srv.ws("/ws/chat/?session_uuid=a"));
  await using b = await TestClient.open(srv.ws("/ws/chat/?session_uuid=b"));
  assert.equal(await a.ask("1"), '{"count": 1}');
  assert.equal(await a.ask("2"), '{"count": 2}');
  assert.equal(await b.ask("1"), '{"count": 1}');
});

Deno.test("a session expires SESSION_TTL_S after its last connection", async () => {
  await using srv = await startTestServer({ SESSION_TTL_S: "0.3" });
  const url = srv.ws("/ws/chat/?session_uuid=short-lived");
  {
    await using c = await TestClient.open(url);
    assert.equal(await c.ask("x"), '{"count": 1}');
  }
  const closedAt = Date.now();
  {
    // Within the TTL the session is still there.
    await using c = await TestClient.open(url, "sockeye.v1");
    assert.match(await c.next(), /"resumed": true/);
  }
  const lastRelease = Date.now();
  assert.ok(lastRelease >= closedAt);
  // The condition is time itself: wait until the TTL has passed.
  await new Promise((r) =>
    setTimeout(r, 300 - (Date.now() - lastRelease) + 50)
  );
  await using c = await TestClient.open(url, "sockeye.v1");
  assert.equal(
    await c.next(),
    '{"type": "session", "session_uuid": "short-lived", "count": 0, "resumed": false}',
  );
  assert.equal(await c.ask("x"), '{"count": 1}');
});

Deno.test('heartbeats {"ts": ISO-8601} arrive every HEARTBEAT_INTERVAL_S', async () => {
  await using srv = await startTestServer({ HEARTBEAT_INTERVAL_S: "0.1" });
  await using c = await TestClient.open(srv.ws());
  const first = await c.next(true);
  const second = await c.next(true);
  for (const frame of [first, second]) {
    assert.match(frame, /^\{"ts": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"\}$/);
  }
  const gap = Date.parse(JSON.parse(second).ts) -
    Date.parse(JSON.parse(first).ts);
  assert.ok(gap >= 50 && gap < 1000, `heartbeat gap ${gap} ms`);
  // Heartbeats do not move the count.
  assert.equal(await c.ask("x"), '{"count": 1}');
  await until(
    async () =>
      metricValue(await srv.metrics(), "websocket_messages_total", {
        type: "heartbeat",
      }) >= 2,
    "heartbeat metric",
  );
});

Deno.test("a binary frame closes with 1003 and is counted", async () => {
  await using srv = await startTestServer();
  const c = await TestClient.open(srv.ws("/ws/chat/?session_uuid=bin"));
  assert.equal(await c.ask("text"), '{"count": 1}');
  c.ws.send(new Uint8Array([1, 2, 3]));
  const closed = await c.closed;
  assert.equal(closed.code, 1003);
  const text = await srv.metrics();
  assert.equal(
    metricValue(text, "websocket_errors_total", { error_type: "binary_frame" }),
    1,
  );
  assert.equal(
    metricValue(text, "websocket_disconnects_total", { code: "1003" }),
    1,
  );
  // The count survives: the session resumes where it was.
  await using again = await TestClient.open(
    srv.ws("/ws/chat/?session_uuid=bin"),
  );
  assert.equal(await again.ask("text"), '{"count": 2}');
});

Deno.test("a frame over MAX_MESSAGE_BYTES closes with 1009", async () => {
  await using srv = await startTestServer({ MAX_MESSAGE_BYTES: "100" });
  {
    await using ok = await TestClient.open(srv.ws());
    assert.equal(await ok.ask("x".repeat(100)), '{"count": 1}');
    // 40 three-byte characters: 120 bytes in 40 UTF-16 units.
    ok.ws.send("€".repeat(40));
    assert.equal((await ok.closed).code, 1009);
  }
  const c = await TestClient.open(srv.ws());
  c.ws.send("x".repeat(101));
  assert.equal((await c.closed).code, 1009);
  assert.equal(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "message_too_big",
    }),
    2,
  );
});

Deno.test("frames over RATE_LIMIT_PER_S close with 1008", async () => {
  await using srv = await startTestServer({ RATE_LIMIT_PER_S: "5" });
  const c = await TestClient.open(srv.ws());
  // 50 frames a second against a limit of 5: the sixth within a second is over.
  const ticker = setInterval(() => {
    if (c.ws.readyState === WebSocket.OPEN) c.ws.send("fast");
  }, 20);
  const closed = await c.closed;
  clearInterval(ticker);
  assert.equal(closed.code, 1008);
  assert.equal(closed.reason, "rate limit exceeded");
  const replies = c.received.filter((f) => f.startsWith('{"count": '));
  assert.ok(
    replies.length >= 5 && replies.length < 10,
    `${replies.length} replies`,
  );
  const text = await srv.metrics();
  assert.equal(
    metricValue(text, "websocket_errors_total", { error_type: "rate_limited" }),
    1,
  );
  assert.equal(
    metricValue(text, "websocket_disconnects_total", { code: "1008" }),
    1,
  );
});

Deno.test("a burst over RATE_LIMIT_PER_S is cut off and counted as 1008", async () => {
  await using srv = await startTestServer({ RATE_LIMIT_PER_S: "5" });
  const c = await TestClient.open(srv.ws());
  for (let i = 0; i < 50; i++) c.ws.send("flood");
  await c.closed;
  // Frames already in flight after the close make the runtime drop the TCP
  // connection (a reset may also discard replies the client had not read),
  // so the client may not see the code; the server counts it. Nothing past
  // the bucket's five frames is ever answered.
  const replies = c.received.filter((f) => f.startsWith('{"count": '));
  assert.ok(replies.length <= 5, `${replies.length} replies`);
  assert.deepEqual(
    replies,
    Array.from({ length: replies.length }, (_, i) => `{"count": ${i + 1}}`),
  );
  await until(
    async () =>
      metricValue(await srv.metrics(), "websocket_disconnects_total", {
        code: "1008",
      }) === 1,
    "the 1008 disconnect counted",
  );
});

Deno.test("invalid session ids are refused with 400 before the upgrade", async () => {
  await using srv = await startTestServer();
  for (const bad of ["has%20space", "x".repeat(65), "semi%3Bcolon", "%C3%A9"]) {
    using up = await rawUpgrade(srv.port, `/ws/chat/?session_uuid=${bad}`);
    assert.equal(up.status, 400, bad);
  }
  using alias = await rawUpgrade(srv.port, "/ws/chat/?session=a.b");
  assert.equal(alias.status, 400);
  assert.equal(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "invalid_session_id",
    }),
    5,
  );
});

Deno.test("an Origin outside ALLOWED_ORIGINS gets 403 before the upgrade", async () => {
  await using srv = await startTestServer({
    ALLOWED_ORIGINS: "https://chat.example.com, https://app.example.com",
  });
  {
    using up = await rawUpgrade(srv.port, "/ws/chat/", {
      Origin: "https://evil.example.net",
    });
    assert.equal(up.status, 403);
  }
  {
    using up = await rawUpgrade(srv.port, "/ws/chat/", {
      Origin: "https://app.example.com",
    });
    assert.equal(up.status, 101);
  }
  assert.equal(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "origin_not_allowed",
    }),
    1,
  );
});

Deno.test("at MAX_CONNECTIONS new upgrades get 503", async () => {
  await using srv = await startTestServer({ MAX_CONNECTIONS: "2" });
  await using a = await TestClient.open(srv.ws());
  await using b = await TestClient.open(srv.ws());
  {
    using up = await rawUpgrade(srv.port, "/ws/chat/");
    assert.equal(up.status, 503);
  }
  await a.close();
  await until(async () => {
    using up = await rawUpgrade(srv.port, "/ws/chat/");
    return up.status === 101;
  }, "a free slot after a close");
  assert.equal(await b.ask("still here"), '{"count": 1}');
  assert.ok(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "max_connections",
    }) >= 1,
  );
});

Deno.test("an upgrade without Sec-WebSocket-Key gets 400, counted as bad_upgrade", async () => {
  await using srv = await startTestServer();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
  try {
    await conn.write(
      new TextEncoder().encode(
        "GET /ws/chat/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
      ),
    );
    const buf = new Uint8Array(4096);
    const n = await conn.read(buf);
    assert.match(
      new TextDecoder().decode(buf.subarray(0, n!)),
      /^HTTP\/1\.1 400 /,
    );
  } finally {
    conn.close();
  }
  assert.equal(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "bad_upgrade",
    }),
    1,
  );
});

Deno.test("a plain GET on /ws/chat/ gets 426 Upgrade Required", async () => {
  await using srv = await startTestServer();
  const res = await fetch(srv.http("/ws/chat/"));
  assert.equal(res.status, 426);
  assert.equal(res.headers.get("upgrade"), "websocket");
  assert.equal((await res.json()).error, "upgrade_required");
});

Deno.test("a client that stops answering pings is dropped after IDLE_TIMEOUT_S", async () => {
  await using srv = await startTestServer({ IDLE_TIMEOUT_S: "1" });
  using up = await rawUpgrade(srv.port, "/ws/chat/");
  assert.equal(up.status, 101);
  const { code, opcodes } = await up.readUntilClose();
  assert.ok(opcodes.includes(0x9), "the server pinged first");
  assert.equal(code, 1001);
  await until(
    async () =>
      metricValue(await srv.metrics(), "websocket_errors_total", {
        error_type: "idle_timeout",
      }) === 1,
    "idle_timeout counted",
  );
});

/** What a hand-written upgrade request got back. */
interface Handshake extends Disposable {
  readonly status: number;
  /** Lower-case header names. */
  readonly headers: Record<string, string>;
  /** The response body (for refusals). */
  readonly body: string;
  /** Reads the next server frame's text (unmasked, under 64 KiB). */
  nextText(): Promise<string>;
}

/**
 * Sends exactly these upgrade headers (RFC 6455 §4.1), so that tests can
 * leave one out or get one wrong.
 */
async function handshake(
  port: number,
  headers: Record<string, string>,
): Promise<Handshake> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const lines = [
    "GET /ws/chat/ HTTP/1.1",
    `Host: 127.0.0.1:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  await conn.write(new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n"));
  let buffer = new Uint8Array(0);
  const fill = async (n: number) => {
    while (buffer.length < n) {
      const chunk = new Uint8Array(16384);
      const got = await within(conn.read(chunk), "bytes from the server");
      if (got === null) throw new Error("Connection closed early");
      const next = new Uint8Array(buffer.length + got);
      next.set(buffer);
      next.set(chunk.subarray(0, got), buffer.length);
      buffer = next;
    }
  };
  let end;
  while ((end = new TextDecoder().decode(buffer).indexOf("\r\n\r\n")) < 0) {
    await fill(buffer.length + 1);
  }
  const [statusLine = "", ...headerLines] = new TextDecoder()
    .decode(buffer.subarray(0, end)).split("\r\n");
  buffer = buffer.slice(end + 4);
  const parsed: Record<string, string> = {};
  for (const line of headerLines) {
    const i = line.indexOf(":");
    parsed[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const status = Number(statusLine.split(" ")[1]);
  let body = "";
  if (status !== 101) {
    await fill(Number(parsed["content-length"] ?? 0));
    body = new TextDecoder().decode(buffer);
  }
  return {
    status,
    headers: parsed,
    body,
    async nextText() {
      await fill(2);
      let len = buffer[1]! & 0x7f;
      let off = 2;
      if (len === 126) {
        await fill(4);
        len = (buffer[2]! << 8) | buffer[3]!;
        off = 4;
      }
      await fill(off + len);
      const text = new TextDecoder().decode(buffer.subarray(off, off + len));
      buffer = buffer.slice(off + len);
      return text;
    },
    [Symbol.dispose]() {
      try {
        conn.close();
      } catch { /* already closed */ }
    },
  };
}

const GOOD_KEY = "dGhlIHNhbXBsZSBub25jZQ==";

Deno.test("an upgrade with a Sec-WebSocket-Version other than 13 gets 400 naming 13", async () => {
  await using srv = await startTestServer();
  for (const version of ["8", "12", "14", "13, 8", undefined]) {
    using h = await handshake(srv.port, {
      "Sec-WebSocket-Key": GOOD_KEY,
      ...(version === undefined ? {} : { "Sec-WebSocket-Version": version }),
    });
    assert.equal(h.status, 400, `version ${version}`);
    // RFC 6455 §4.4: the versions the server understands.
    assert.equal(h.headers["sec-websocket-version"], "13");
    assert.equal(JSON.parse(h.body).error, "bad_upgrade");
  }
  assert.equal(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "bad_upgrade",
    }),
    5,
  );
  // Version 13 with a good key still upgrades.
  using ok = await handshake(srv.port, {
    "Sec-WebSocket-Key": GOOD_KEY,
    "Sec-WebSocket-Version": "13",
  });
  assert.equal(ok.status, 101);
});

Deno.test("a missing or malformed Sec-WebSocket-Key gets 400 bad_upgrade", async () => {
  await using srv = await startTestServer();
  const keys = [
    undefined,
    "abc",
    "dGhlIHNhbXBsZSBub25j", // 15 bytes
    "dGhlIHNhbXBsZSBub25jZSE=", // 17 bytes
    "dGhlIHNhbXBsZSBub25jZQ", // no padding
    "dGhlIHNhbXBsZSBub25j!Q==", // not base64
  ];
  for (const key of keys) {
    using h = await handshake(srv.port, {
      "Sec-WebSocket-Version": "13",
      ...(key === undefined ? {} : { "Sec-WebSocket-Key": key }),
    });
    assert.equal(h.status, 400, `key ${key}`);
    assert.deepEqual(JSON.parse(h.body), {
      error: "bad_upgrade",
      message:
        "Cannot use Sec-WebSocket-Key: expected the base64 encoding of 16 bytes",
    });
  }
  assert.equal(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "bad_upgrade",
    }),
    keys.length,
  );
});

Deno.test("subprotocol lists parse with or without spaces", async () => {
  await using srv = await startTestServer();
  for (
    const list of [
      "sockeye.v1,chat",
      "chat, sockeye.v1",
      "chat,sockeye.v1",
      "chat ,\tsockeye.v1",
    ]
  ) {
    using h = await handshake(srv.port, {
      "Sec-WebSocket-Key": GOOD_KEY,
      "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Protocol": list,
    });
    assert.equal(h.status, 101, list);
    assert.equal(h.headers["sec-websocket-protocol"], "sockeye.v1", list);
    const session = JSON.parse(await h.nextText());
    assert.equal(session.type, "session", list);
    assert.equal(session.count, 0);
  }
  // A list without sockeye.v1 upgrades without a subprotocol or session frame.
  using plain = await handshake(srv.port, {
    "Sec-WebSocket-Key": GOOD_KEY,
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Protocol": "chat,superchat",
  });
  assert.equal(plain.status, 101);
  assert.equal(plain.headers["sec-websocket-protocol"], undefined);
  assert.equal(
    metricValue(await srv.metrics(), "websocket_errors_total", {
      error_type: "bad_upgrade",
    }),
    0,
  );
});
