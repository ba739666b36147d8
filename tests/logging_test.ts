/**
 * The log line format: fields, levels, redaction of values.
 */
import assert from "node:assert/strict";
import type { LogRecord } from "@logtape/logtape";
import {
  jsonFormatter,
  prettyFormatter,
} from "../src/observability/logging.ts";

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

Deno.test("the pretty format is one readable line", () => {
  const text = prettyFormatter("blue")(record({ close_code: 1001 }, "warning"));
  assert.equal(
    text,
    "10:00:00.123 WARNING  [blue] sockeye.ws Hello world close_code=1001\n",
  );
});
