/**
 * Settings parsing: defaults, bounds, the messages that name the variable,
 * every problem at once, `*_FILE` secrets, and misspelt names.
 */
import assert from "node:assert/strict";
import {
  describeSettings,
  MAX_DURATION_S,
  MIN_DURATION_S,
  parseSettings,
  SETTINGS,
  SettingsError,
  type SettingSpec,
  splitHostPort,
  suspectVariables,
} from "../src/settings.ts";
import { redisTarget, waitReplicas } from "../src/server.ts";
import { closest, editDistance } from "../src/suggest.ts";
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
  assert.equal(s.maxSessions, undefined);
  assert.equal(s.memoryLimitBytes, undefined);
  assert.equal(s.memoryGuardRatio, 0.85);
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

/** The SettingsError that `parse` throws. */
function settingsError(parse: () => unknown): SettingsError {
  try {
    parse();
  } catch (error) {
    if (error instanceof SettingsError) return error;
    throw error;
  }
  throw new Error("Expected a SettingsError");
}

Deno.test("every invalid variable is reported at once, in table order", () => {
  const error = settingsError(() =>
    parseSettings({
      TRACE_FRAME_RATIO: "2",
      PORT: "http",
      HEARTBEAT_INTERVAL_S: "abc",
      DRAIN_DELAY_S: "20",
      LOG_FORMAT: "xml",
    })
  );
  assert.deepEqual(error.problems.map((p) => p.variable), [
    "PORT",
    "HEARTBEAT_INTERVAL_S",
    "DRAIN_DELAY_S",
    "LOG_FORMAT",
    "TRACE_FRAME_RATIO",
  ]);
  assert.equal(error.variable, "PORT");
  assert.equal(
    error.message.split("\n")[2],
    'Cannot parse DRAIN_DELAY_S "20": expected a number below SHUTDOWN_TIMEOUT_S (10)',
  );
});

Deno.test("a rule between two settings waits until both are valid", () => {
  // SHUTDOWN_TIMEOUT_S is wrong itself: DRAIN_DELAY_S is not blamed for it.
  const error = settingsError(() =>
    parseSettings({ SHUTDOWN_TIMEOUT_S: "0", DRAIN_DELAY_S: "5" })
  );
  assert.deepEqual(error.problems.map((p) => p.variable), [
    "SHUTDOWN_TIMEOUT_S",
  ]);
});

Deno.test("empty values count as unset", () => {
  const s = parseSettings({ PORT: "", REDIS_URL: "  ", METRICS_TOKEN: "" });
  assert.equal(s.port, 8000);
  assert.equal(s.redisUrl, undefined);
  assert.equal(s.metricsToken, undefined);
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
Deno.test("*_FILE variants read secrets from files", () => {
  const files: Record<string, string> = {
    "/run/secrets/token": "t0ken\n",
    "/run/secrets/redis": "redis://:pw@cache:6379/0\r\n",
    "/run/secrets/empty": "\n",
  };
  const readFile = (path: string) => {
    const text = files[path];
    if (text === undefined) {
      throw new Error("No such file or directory (os error 2)");
    }
    return text;
  };
  const s = parseSettings({
    METRICS_TOKEN_FILE: "/run/secrets/token",
    REDIS_URL_FILE: "/run/secrets/redis",
  }, { readFile });
  assert.equal(s.metricsToken, "t0ken");
  assert.equal(s.redisUrl, "redis://:pw@cache:6379/0");

  const error = settingsError(() =>
    parseSettings({
      METRICS_TOKEN: "inline",
      METRICS_TOKEN_FILE: "/run/secrets/token",
      REDIS_URL_FILE: "/run/secrets/missing",
    }, { readFile })
  );
  assert.deepEqual(error.problems.map((p) => p.message), [
    'Cannot read REDIS_URL_FILE "/run/secrets/missing": No such file or directory',
    "Cannot use both METRICS_TOKEN and METRICS_TOKEN_FILE: set one",
  ]);
  assert.throws(
    () =>
      parseSettings({ METRICS_TOKEN_FILE: "/run/secrets/empty" }, { readFile }),
    /Cannot use METRICS_TOKEN_FILE "\/run\/secrets\/empty": the file is empty/,
  );
  // A bad value from a file names the file variable and hides the password.
  files["/run/secrets/bad"] = "http://user:hunter2@cache:6379\n";
  assert.throws(
    () => parseSettings({ REDIS_URL_FILE: "/run/secrets/bad" }, { readFile }),
    (e: unknown) =>
      e instanceof SettingsError &&
      e.message.startsWith("Cannot parse REDIS_URL (from REDIS_URL_FILE)") &&
      !e.message.includes("hunter2"),
  );
});

Deno.test("*_FILE reads the file system by default", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/token`, "from-disk\n");
    const s = parseSettings({ METRICS_TOKEN_FILE: `${dir}/token` });
    assert.equal(s.metricsToken, "from-disk");
    assert.throws(
      () => parseSettings({ METRICS_TOKEN_FILE: `${dir}/nope` }),
      new RegExp(`Cannot read METRICS_TOKEN_FILE "${dir}/nope": `),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("misspelt variables are suspected; system ones never", () => {
  const suspects = suspectVariables({
    REDIS_URI: "redis://cache:6379",
    HEARTBEAT_INTERVAL: "5",
    PROT: "8000",
    METRICS_TOKEN_FLE: "/run/secrets/token",
    redis_url: "redis://cache:6379",
    // Known, system, or not close to anything of ours.
    PORT: "8000",
    REDIS_URL_FILE: "/x",
    HOME: "/root",
    HOSTNAME: "box",
    PATH: "/bin",
    COLUMNS: "80",
    LC_ALL: "C",
    OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
    REDIS_PORT: "tcp://10.0.0.1:6379",
    npm_config_user_agent: "npm/11",
  });
  assert.deepEqual(suspects, [
    { variable: "HEARTBEAT_INTERVAL", suggestion: "HEARTBEAT_INTERVAL_S" },
    { variable: "METRICS_TOKEN_FLE", suggestion: "METRICS_TOKEN_FILE" },
    { variable: "PROT", suggestion: "PORT" },
    { variable: "REDIS_URI", suggestion: "REDIS_URL" },
    { variable: "redis_url", suggestion: "REDIS_URL" },
  ]);
});

Deno.test("describeSettings gives each value, redacted, with its source", () => {
  const settings = describeSettings({
    PORT: "9000",
    REDIS_URL: "redis://:pw@cache:6379",
    METRICS_TOKEN_FILE: "/t",
  }, { readFile: () => "s3cret" });
  const by = Object.fromEntries(settings.map((s) => [s.env, s]));
  assert.deepEqual(by.PORT, {
    env: "PORT",
    value: 9000,
    text: "9000",
    source: "environment",
  });
  assert.equal(by.HOST?.source, "default");
  assert.equal(by.REDIS_URL?.text, "redis://:***@cache:6379");
  assert.deepEqual(by.METRICS_TOKEN, {
    env: "METRICS_TOKEN",
    value: "***",
    text: "***",
    source: "file",
  });
  assert.equal(by.ALLOWED_ORIGINS?.value, null);
  assert.ok(!JSON.stringify(settings).includes("s3cret"));
});

Deno.test("README's settings table lists every setting with its default", async () => {
  const readme = await Deno.readTextFile(
    new URL("../README.md", import.meta.url),
  );
  const section = readme.slice(readme.indexOf("\n## Settings\n")).split(
    /\n## /,
  )[1]!;
  for (const spec of Object.values(SETTINGS) as SettingSpec[]) {
    const dflt = typeof spec.default === "string"
      ? `\`${spec.default}\``
      : spec.defaultText ?? "unset";
    const row = section.split("\n").find((l) =>
      l.startsWith(`| \`${spec.env}\``)
    );
    assert.ok(row, `${spec.env} has a row`);
    assert.equal(row.split("|")[2]?.trim(), dflt, spec.env);
    if (spec.secret) {
      assert.match(row, new RegExp(`${spec.env}_FILE`), spec.env);
    }
  }
});

Deno.test("editDistance counts transpositions as one edit and stops past its bound", () => {
  assert.equal(editDistance("PORT", "PROT"), 1);
  assert.equal(editDistance("REDIS_URI", "REDIS_URL"), 1);
  assert.equal(editDistance("HEARTBEAT_INTERVAL", "HEARTBEAT_INTERVAL_S"), 2);
  assert.equal(editDistance("", "abc"), 3);
  // Bounded: the same answer up to the bound, bound + 1 past it.
  const words = [
    "",
    "A",
    "AB",
    "BA",
    "ABC",
    "ACB",
    "CAB",
    "ABCD",
    "DCBA",
    "AXBY",
  ];
  for (const a of words) {
    for (const b of words) {
      const full = editDistance(a, b);
      for (const max of [0, 1, 2]) {
        assert.equal(
          editDistance(a, b, max),
          Math.min(full, max + 1),
          `${a} ${b} ${max}`,
        );
      }
    }
  }
  assert.equal(closest("--prot", ["--port", "--json"]), "--port");
  assert.equal(closest("HOME", ["HOST"]), undefined, "short names: one edit");
});

Deno.test("Redis beyond one server: host:port lists, one target at most, passwords where the URL has none", () => {
  const s = parseSettings({
    REDIS_SENTINELS: "s-a:26379, s-b:26380,[::1]:26381",
    REDIS_PASSWORD: "pw",
  });
  assert.deepEqual(s.redisSentinels, ["s-a:26379", "s-b:26380", "[::1]:26381"]);
  assert.equal(s.redisSentinelName, "mymaster");
  assert.equal(s.redisWaitReplicas, undefined);
  assert.deepEqual(splitHostPort("[::1]:26381"), { host: "::1", port: 26381 });
  for (const bad of ["a", "a:0", "a:65536", ":1", "a b:1", ","]) {
    assert.throws(
      () => parseSettings({ REDIS_CLUSTER_NODES: bad }),
      /REDIS_CLUSTER_NODES .*expected a comma-separated list of host:port/,
      bad,
    );
  }
  assert.throws(
    () =>
      parseSettings({
        REDIS_URL: "redis://r:6379",
        REDIS_CLUSTER_NODES: "c:7000",
        REDIS_PASSWORD: "s3cret",
      }),
    (e: unknown) =>
      e instanceof SettingsError &&
      e.problems.map((p) => p.variable).join() ===
        "REDIS_CLUSTER_NODES,REDIS_PASSWORD" &&
      /REDIS_URL is set \(set one of REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES\)/
        .test(e.message) &&
      !e.message.includes("s3cret"),
  );
  assert.throws(
    () => parseSettings({ REDIS_SENTINELS: "a:1", REDIS_CLUSTER_NODES: "b:2" }),
    /REDIS_SENTINELS "a:1": expected unset while REDIS_CLUSTER_NODES is set/,
  );
  assert.throws(
    () => parseSettings({ REDIS_WAIT_REPLICAS: "17" }),
    /REDIS_WAIT_REPLICAS "17": expected an integer from 0 to 16/,
  );
  assert.equal(
    waitReplicas(undefined, { kind: "cluster", nodes: ["c:7000"] }),
    1,
  );
  assert.equal(
    waitReplicas(undefined, { kind: "server", url: "redis://r" }),
    0,
  );
  assert.equal(waitReplicas(2, { kind: "server", url: "redis://r" }), 2);
  assert.deepEqual(
    redisTarget(parseSettings({ REDIS_CLUSTER_NODES: "c:7000,d:7001" })),
    {
      kind: "cluster",
      nodes: ["c:7000", "d:7001"],
      username: undefined,
      password: undefined,
    },
  );
  assert.equal(redisTarget(parseSettings({})), undefined);
});
