/**
 * Settings parsing: defaults, bounds, and the messages that name the variable.
 */
import assert from "node:assert/strict";
import { parseSettings, SettingsError } from "../src/settings.ts";

Deno.test("defaults follow the contract", () => {
  const s = parseSettings({});
  assert.equal(s.port, 8000);
  assert.equal(s.host, "0.0.0.0");
  assert.equal(s.color, "blue");
  assert.equal(s.redisUrl, undefined);
  assert.equal(s.heartbeatIntervalS, 30);
  assert.equal(s.shutdownTimeoutS, 10);
  assert.equal(s.drainDelayS, 0);
  assert.equal(s.sessionTtlS, 3600);
  assert.equal(s.maxMessageBytes, 65536);
  assert.equal(s.maxConnections, undefined);
  assert.equal(s.rateLimitPerS, 0);
  assert.equal(s.idleTimeoutS, 60);
  assert.equal(s.allowedOrigins, undefined);
  assert.equal(s.metricsToken, undefined);
  assert.equal(s.logLevel, "info");
  assert.equal(s.logFormat, "json");
  assert.equal(s.otelEnabled, false);
  assert.ok(Object.isFrozen(s));
});

Deno.test("an invalid value names the variable, the value and the expected form", () => {
  assert.throws(
    () => parseSettings({ HEARTBEAT_INTERVAL_S: "abc" }),
    (e: unknown) =>
      e instanceof SettingsError && e.variable === "HEARTBEAT_INTERVAL_S" &&
      e.message ===
        'Cannot parse HEARTBEAT_INTERVAL_S "abc": expected a number above 0',
  );
  assert.throws(
    () => parseSettings({ PORT: "65536" }),
    /PORT "65536": expected an integer from 0 to 65535/,
  );
  assert.throws(
    () => parseSettings({ TRACE_FRAME_RATIO: "2" }),
    /TRACE_FRAME_RATIO/,
  );
  assert.throws(() => parseSettings({ OTEL_DENO: "yes" }), /OTEL_DENO/);
});

Deno.test("a password in a bad REDIS_URL is not echoed", () => {
  assert.throws(
    () => parseSettings({ REDIS_URL: "http://user:hunter2@host:6379" }),
    (e: unknown) =>
      e instanceof SettingsError && !e.message.includes("hunter2"),
  );
});

Deno.test("npm's COLOR=0/1 is not taken for a deployment color; a real one is", () => {
  assert.equal(
    parseSettings({ COLOR: "0", npm_config_user_agent: "npm/11" }).color,
    "blue",
  );
  assert.equal(
    parseSettings({ COLOR: "green", npm_config_user_agent: "npm/11" }).color,
    "green",
  );
  assert.equal(parseSettings({ COLOR: "1" }).color, "1");
});

Deno.test("lists and flags parse", () => {
  const s = parseSettings({
    ALLOWED_ORIGINS: "https://a.example.com, https://b.example.com,",
    OTEL_DENO: "true",
    LOG_LEVEL: "WARNING",
    HEARTBEAT_INTERVAL_S: "0.5",
  });
  assert.deepEqual(s.allowedOrigins, [
    "https://a.example.com",
    "https://b.example.com",
  ]);
  assert.equal(s.otelEnabled, true);
  assert.equal(s.logLevel, "warning");
  assert.equal(s.heartbeatIntervalS, 0.5);
});
