/**
 * The log line format: fields, levels, redaction of values.
 */
import assert from "node:assert/strict";
import type { LogRecord } from "@logtape/logtape";
import { redactByField } from "@logtape/redaction";
import {
  eventBuilder,
  flushLogging,
  hasNoSecretField,
  isoTimestamps,
  jsonFormatter,
  logger,
  prettyFormatter,
  REDACTED_FIELDS,
  REDACTION_PATTERNS,
  redactText,
  setupLogging,
} from "../src/observability/logging.ts";
import { rawUpgrade, spawnServer } from "./_helpers.ts";

function record(
  properties: Record<string, unknown>,
  level: LogRecord["level"] = "info",
): LogRecord {
  return {
    category: ["sockeye", "ws"],
    level,
    message: ["Hello ", "world", ""],
    rawMessage: "Hello {who}",
    timestamp: Date.UTC(2026, 10, 23, 10, 0, 0, 123),
    properties,
  };
}

Deno.test("a JSON line carries the contract's fields, Python level names and flat context", () => {
  const line = JSON.parse(
    jsonFormatter("green")(
      record({ session_uuid: "s1", close_code: 1000 }, "fatal"),
    ),
  );
  assert.deepEqual(line, {
    timestamp: "2026-11-23T10:00:00.123Z",
    level: "critical",
    logger: "sockeye.ws",
    message: "Hello world",
    color: "green",
    session_uuid: "s1",
    close_code: 1000,
  });
});

Deno.test("personal data in string values is masked; numbers are left alone", () => {
  const text = jsonFormatter("blue")(record({
    user_agent: "bot (jane@example.com)",
    note: "card 4111 1111 1111 1111",
    shutdown_seconds: 0.4111111111111111,
    epoch_ms: 4111111111111111,
  }));
  const line = JSON.parse(text);
  assert.equal(line.user_agent, "bot (REDACTED@EMAIL.ADDRESS)");
  assert.ok(!line.note.includes("4111 1111 1111 1111"));
  assert.equal(line.shutdown_seconds, 0.4111111111111111);
  assert.equal(line.epoch_ms, 4111111111111111);
});

Deno.test("errors are logged as type and message", () => {
  const line = JSON.parse(
    jsonFormatter("blue")(record({ error: new TypeError("boom") })),
  );
  assert.deepEqual(line.error, { type: "TypeError", message: "boom" });
});

Deno.test("a JSON line is the event object, serialised by JSON.stringify", () => {
  const format = jsonFormatter('blue "b"');
  const build = eventBuilder('blue "b"');
  const fields: Record<string, unknown>[] = [
    {},
    { connection_id: crypto.randomUUID(), count: 0, resumed: false },
    { user_agent: "bot (jane@example.com)", close_reason: "token=abc&x=1" },
    { note: "card 4111 1111 1111 1111", url: "redis://u:pw@h:6379/0" },
    { nan: NaN, inf: -Infinity, zero: -0, big: 1e21, tiny: 5e-7 },
    { none: undefined, nothing: null, fn: () => 1, sym: Symbol("s") },
    { error: new RangeError("bad token=abc"), nested: { a: [1, "x@y.z"] } },
    { message: "shadowed", level: "shadowed", color: "x", timestamp: 1 },
    { 'quo"te': "\u2028 line\nbreak \ud800", "ünï": "çödé" },
    { trace_id: "t", span_id: "s" },
    { span_id: "s" },
  ];
  const times = [
    Date.UTC(2026, 10, 23, 10, 0, 0, 0),
    Date.UTC(2026, 10, 23, 10, 0, 0, 7),
    Date.UTC(2026, 10, 23, 10, 0, 0, 99),
    Date.UTC(2026, 10, 23, 10, 0, 1, 999),
    0,
    1.5,
    -1,
    Date.UTC(10000, 0, 1),
  ];
  for (const properties of fields) {
    for (const timestamp of times) {
      const r = { ...record(properties), timestamp };
      assert.equal(format(r), JSON.stringify(build(r)) + "\n");
    }
  }
});

Deno.test("timestamps formatted a second at a time match Date#toISOString", () => {
  const iso = isoTimestamps();
  const start = Date.UTC(2026, 10, 23, 23, 59, 58, 990);
  for (let ms = start; ms < start + 2_100; ms += 7) {
    assert.equal(iso(ms), new Date(ms).toISOString());
  }
  for (const ms of [0, 999, 1000, 0.5, -1, 253_402_300_799_999, 8.64e15]) {
    assert.equal(iso(ms), new Date(ms).toISOString());
  }
});

Deno.test("the pretty format is one readable line", () => {
  const text = prettyFormatter("blue")(record({ close_code: 1001 }, "warning"));
  assert.equal(
    text,
    "10:00:00.123 WARNING  [blue] sockeye.ws Hello world close_code=1001\n",
  );
});

/** Logs through the real pipeline (field and pattern redaction) and returns the lines. */
async function logLines(
  log: (l: ReturnType<typeof logger>) => void,
): Promise<Record<string, unknown>[]> {
  const out: string[] = [];
  const decoder = new TextDecoder();
  await setupLogging({
    level: "debug",
    format: "json",
    color: "blue",
    write: (bytes) => out.push(decoder.decode(bytes)),
  });
  try {
    log(logger("ws"));
  } finally {
    await flushLogging();
  }
  return out.join("").trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("key=value secrets and Bearer/Basic credentials inside strings are masked", async () => {
  const [line] = await logLines((log) =>
    log.info("WebSocket disconnected", {
      user_agent: "probe/1.0 token=abc123 (Authorization: Bearer xyz)",
      close_reason: "password=hunter2; api_key=k-42",
      url: "/ws/chat/?session_uuid=s1&token=abc123&x=1",
      error: new Error("Upstream refused Basic dXNlcjpwYXNz"),
      note: '{"client_secret": "cs_live_1", "user": "bob"}',
    })
  );
  assert.deepEqual(line, {
    timestamp: line!.timestamp,
    level: "info",
    logger: "sockeye.ws",
    message: "WebSocket disconnected",
    color: "blue",
    user_agent: "probe/1.0 token=[REDACTED] (Authorization: Bearer [REDACTED])",
    close_reason: "password=[REDACTED]; api_key=[REDACTED]",
    url: "/ws/chat/?session_uuid=s1&token=[REDACTED]&x=1",
    error: { type: "Error", message: "Upstream refused Basic [REDACTED]" },
    note: '{"client_secret": [REDACTED], "user": "bob"}',
  });
});

Deno.test("a Redis URL keeps its host and loses its password, also in an error message", async () => {
  const [line] = await logLines((log) =>
    log.error("Redis unavailable: {error}", {
      error: new Error(
        "connect ECONNREFUSED redis://default:hunter2@10.0.0.5:6379/0",
      ),
      redis_url: "rediss://app:p@ss@redis.internal.example.com:6380/1",
    })
  );
  assert.equal(
    line!.message,
    'Redis unavailable: {"type":"Error","message":"connect ECONNREFUSED redis://default:***@10.0.0.5:6379/0"}',
  );
  assert.equal(
    line!.redis_url,
    "rediss://app:***@redis.internal.example.com:6380/1",
  );
});

Deno.test("prose that only mentions secrets is left alone", async () => {
  const texts = [
    "Metrics require a bearer token",
    "Cannot use Sec-WebSocket-Key: expected the base64 encoding of 16 bytes",
    "token expired",
    "keyboard=qwerty monkey=banana author: Jane",
    "redis://10.0.0.5:6379/0",
  ];
  const [line] = await logLines((log) => log.warning("x", { texts }));
  assert.deepEqual(line!.texts, texts);
});

Deno.test("a user agent and close reason holding secrets are logged without them", async () => {
  await using proc = await spawnServer();
  {
    using up = await rawUpgrade(proc.port, "/ws/chat/?session_uuid=leaky", {
      "User-Agent": "probe/1.0 token=abc123 (Bearer xyz)",
    });
    assert.equal(up.status, 101);
    await proc.waitForLine(
      (l) => l.message === "WebSocket connected",
      "the connect line",
    );
    // A masked close frame with code 1000 and the reason "password=hunter2".
    const reason = new TextEncoder().encode("password=hunter2");
    const payload = new Uint8Array([0x03, 0xe8, ...reason]);
    const mask = crypto.getRandomValues(new Uint8Array(4));
    const frame = new Uint8Array([
      0x88,
      0x80 | payload.length,
      ...mask,
      ...payload.map((b, i) => b ^ mask[i % 4]!),
    ]);
    await up.conn.write(frame);
    assert.equal((await up.readUntilClose()).code, 1000);
  }
  const closed = await proc.waitForLine(
    (l) => l.message === "WebSocket disconnected",
    "the disconnect line",
  );
  assert.equal(closed.close_reason, "password=[REDACTED]");
  const connected = proc.lines.map((l) => JSON.parse(l))
    .find((l) => l.message === "WebSocket connected");
  assert.match(
    connected.user_agent,
    /token=\[REDACTED\] \(Bearer \[REDACTED\]\)/,
  );
  for (const secret of ["abc123", "xyz", "hunter2"]) {
    assert.ok(
      proc.lines.every((l) => !l.includes(secret)),
      `${secret} is not on stdout`,
    );
  }
});

Deno.test("the one-pass check skips only strings no redaction pattern changes", () => {
  // Every pattern applied in full, as the library does: the reference.
  const full = (text: string) => {
    for (const { pattern, replacement } of REDACTION_PATTERNS) {
      text = typeof replacement === "string"
        ? text.replaceAll(pattern, replacement)
        : text.replaceAll(pattern, replacement);
    }
    return text;
  };
  // Strings built from the characters the patterns look for, so that many
  // of them match: 20,000 of them, from a fixed seed.
  const alphabet = [
    ...'aZ0149 -=:"@./',
    ...["token", "password", "Bearer ", "BEARER ", "Basic ", "BASIC "],
    ...["eyJ", "4111", "4111111111111111", "://", "x.io"],
  ];
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  let changed = 0;
  for (let i = 0; i < 20_000; i++) {
    let text = "";
    const parts = 1 + Math.floor(random() * 12);
    for (let j = 0; j < parts; j++) {
      text += alphabet[Math.floor(random() * alphabet.length)];
    }
    const expected = full(text);
    if (expected !== text) changed++;
    assert.equal(redactText(text), expected, JSON.stringify(text));
  }
  // The corpus exercises the patterns, not just the skip.
  assert.ok(changed > 1000, `only ${changed} strings matched a pattern`);
  // One string per kind of match, each without any other trigger.
  for (
    const text of [
      "a=b token=x",
      "x@y.io",
      'Z "secret" : 1',
      "4111 1111 1111 1111",
      "4111111111111111",
      "eyJa.b.c",
      "Bearer abc",
      "BEARER abc",
      "Basic abc",
      "BASIC abc",
    ]
  ) {
    assert.notEqual(redactText(text), text, JSON.stringify(text));
    assert.equal(redactText(text), full(text));
  }
  // Ids keep their shape even when all digits (not a card number).
  const id = "12345678-1234-1234-1234-123456789012";
  assert.equal(redactText(id), id);
});

Deno.test("an info line logged just before an uncaught error still reaches stdout", async () => {
  for (const how of ["throw", "reject"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "tests/_log_then_crash.ts", how],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1, how);
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
    assert.equal(lines.length, 1, how);
    assert.equal(JSON.parse(lines[0]!).message, "Last words", how);
  }
});

Deno.test("records skipping field redaction are exactly those it would leave as they are", () => {
  const format = jsonFormatter("blue");
  const viaLibrary = (r: LogRecord) => {
    let out = "";
    redactByField((x: LogRecord) => out = format(x), {
      fieldPatterns: REDACTED_FIELDS,
      action: () => "[REDACTED]",
    })(r);
    return out;
  };
  const templated = (
    rawMessage: string,
    properties: Record<string, unknown>,
  ): LogRecord => ({
    ...record(properties),
    rawMessage,
    message: rawMessage.split(/\{([^{}]*)\}/).map((part, i) =>
      i % 2 === 0 ? part : properties[part]
    ),
  });
  const plain = [
    templated("WebSocket connected", { session_uuid: "s", count: 3 }),
    templated("Closing WebSocket: {reason}", { reason: "x", close_code: 1008 }),
    templated("Refusing {method} {path}", { method: "GET", path: "/a?b=c" }),
  ];
  for (const r of plain) {
    assert.ok(hasNoSecretField(r), r.rawMessage as string);
    assert.equal(format(r), viaLibrary(r));
  }
  const secret = [
    templated("Login", { password: "hunter2" }),
    templated("Token {token}", { token: "abc" }),
    templated("Key {api_key}", {}),
    templated("All {*}", { a: 1 }),
    templated("Failed: {error}", { error: { token: "abc" } }),
    { ...record({ a: 1 }), rawMessage: ["tagged ", ""] as unknown as string },
  ];
  for (const r of secret) {
    assert.ok(!hasNoSecretField(r), String(r.rawMessage));
  }
  // And the library does change the first three.
  for (const r of secret.slice(0, 3)) assert.notEqual(viaLibrary(r), format(r));
});
