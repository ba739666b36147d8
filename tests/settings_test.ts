/**
 * Settings parsing: defaults, bounds, and the messages that name the variable.
 */
import assert from "node:assert/strict";
import {
  MAX_DURATION_S,
  MIN_DURATION_S,
  parseSettings,
  SettingsError,
} from "../src/settings.ts";
import { DENO, ROOT, within } from "./_helpers.ts";

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
        'Cannot parse HEARTBEAT_INTERVAL_S "abc": expected a number from 0.01 to 2147483.647',
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

Deno.test("durations fit a timer: at most 2^31 - 1 ms, and repeating ones at least 10 ms", () => {
  assert.equal(MAX_DURATION_S * 1000, 2 ** 31 - 1);
  assert.equal(MIN_DURATION_S, 0.01);
  const s = parseSettings({
    HEARTBEAT_INTERVAL_S: "2147483.647",
    SESSION_TTL_S: "2147483.647",
    DRAIN_DELAY_S: "2147478",
    // The exit watchdog fires 5 s after SHUTDOWN_TIMEOUT_S: that sum is the timer.
    SHUTDOWN_TIMEOUT_S: "2147478.647",
    IDLE_TIMEOUT_S: "2147483",
  });
  assert.equal(s.heartbeatIntervalS, MAX_DURATION_S);
  assert.equal((s.shutdownTimeoutS + 5) * 1000, 2 ** 31 - 1);
  assert.equal(s.idleTimeoutS, 2147483);
  assert.equal(
    parseSettings({ HEARTBEAT_INTERVAL_S: "0.01" }).heartbeatIntervalS,
    0.01,
  );
  const refused: Array<[string, string, string]> = [
    ["HEARTBEAT_INTERVAL_S", "3000000", "a number from 0.01 to 2147483.647"],
    [
      "HEARTBEAT_INTERVAL_S",
      "2147483.648",
      "a number from 0.01 to 2147483.647",
    ],
    ["HEARTBEAT_INTERVAL_S", "0.0001", "a number from 0.01 to 2147483.647"],
    ["SESSION_TTL_S", "3000000", "a number from 0.01 to 2147483.647"],
    ["SESSION_TTL_S", "0.001", "a number from 0.01 to 2147483.647"],
    ["SHUTDOWN_TIMEOUT_S", "2147483", "a number from 0.01 to 2147478.647"],
    ["SHUTDOWN_TIMEOUT_S", "0.005", "a number from 0.01 to 2147478.647"],
    ["DRAIN_DELAY_S", "3000000", "a number from 0 to 2147483.647"],
    ["IDLE_TIMEOUT_S", "2147484", "an integer from 0 to 2147483"],
  ];
  for (const [name, value, expected] of refused) {
    assert.throws(
      () => parseSettings({ SHUTDOWN_TIMEOUT_S: "2147478.647", [name]: value }),
      (e: unknown) =>
        e instanceof SettingsError && e.variable === name &&
        e.message === `Cannot parse ${name} "${value}": expected ${expected}`,
      `${name}=${value}`,
    );
  }
});

Deno.test("a duration past the timer limit exits 2 with the message on stderr", async () => {
  const child = new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}main.ts`, "serve"],
    env: { PORT: "0", HOST: "127.0.0.1", HEARTBEAT_INTERVAL_S: "3000000" },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const { code, stdout, stderr } = await within(
    child.output(),
    "the process to exit",
  );
  assert.equal(code, 2);
  assert.match(
    new TextDecoder().decode(stderr),
    /Cannot parse HEARTBEAT_INTERVAL_S "3000000": expected a number from 0\.01 to 2147483\.647/,
  );
  // It never started: no ready line.
  assert.doesNotMatch(new TextDecoder().decode(stdout), /startup_seconds/);
});
