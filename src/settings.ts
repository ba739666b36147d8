/**
 * Settings: the environment, parsed once into a frozen, typed object.
 *
 * Nothing else in sockeye reads the environment (12-factor, factor III).
 * {@link SETTINGS} is the one table of variables: parsing, defaults,
 * `sockeye serve --help`, `sockeye config`, `*_FILE` secrets and the
 * warnings for misspelt names all read it, and {@link Settings} is derived
 * from it, so a new setting is one entry there (and a row in README's
 * settings table). Every invalid variable is reported at once in a
 * {@link SettingsError}, which `serve` and `config` turn into exit code 2.
 * How a table is read lives in `settings_schema.ts`.
 *
 * @module
 */
import * as v from "valibot";
import {
  choiceSchema,
  type CrossCheck,
  type EffectiveSetting,
  type Env,
  flagSchema,
  MAX_DURATION_S,
  numberSchema,
  type ParseOptions,
  type Schema,
  secondsSchema,
  setting,
  SettingsSchema,
  type SettingValue,
} from "./settings_schema.ts";
import { type Misspelt, misspelt } from "./suggest.ts";
import { normaliseCidr } from "./sessions/client_address.ts";
import { normalisePem, publicKeyAlgorithms } from "./sessions/jwt_keys.ts";

export {
  choiceSchema,
  type CrossCheck,
  type EffectiveSetting,
  type Env,
  flagSchema,
  MAX_DURATION_S,
  type NumberRule,
  numberSchema,
  type ParseOptions,
  type Schema,
  secondsSchema,
  setting,
  SettingsError,
  type SettingSource,
  type SettingSpec,
  type SettingsProblem,
  type SettingValue,
} from "./settings_schema.ts";

/** How log lines are written: JSON Lines for machines, `pretty` for humans. */
export type LogFormat = "json" | "pretty";

/** Log levels, lowest first (the names of Python's `logging`, which the contract uses). */
export const LOG_LEVELS = [
  "debug",
  "info",
  "warning",
  "error",
  "critical",
] as const;

/** One of {@link LOG_LEVELS}. */
export type LogLevelName = typeof LOG_LEVELS[number];

const COLOR_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;

/**
 * The shortest duration that must be above 0, in seconds: heartbeats and the
 * session sweep repeat at this interval, and a sub-millisecond one would fire
 * as fast as the event loop turns.
 */
export const MIN_DURATION_S = 0.01;

/**
 * Seconds the exit watchdog runs past `SHUTDOWN_TIMEOUT_S`; the sum is a
 * timer too, so it bounds that setting.
 */
export const WATCHDOG_MARGIN_S = 5;
const ORIGIN_RE = /^[a-z][a-z0-9+.-]*:\/\/[^/\s]+$/i;
const SENTINEL_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * The shortest HMAC key accepted (`AUTH_JWT_SECRET`, `SESSION_SECRET`), in
 * bytes: as long as SHA-256's output (RFC 7518 §3.2, RFC 2104 §3).
 */
export const MIN_SECRET_BYTES = 32;

/**
 * Every environment variable sockeye reads, keyed by its {@link Settings}
 * field. Add a setting here (and to README's settings table) and it is
 * parsed, defaulted, listed by `serve --help` and `sockeye config`, and known
 * to the typo warnings.
 */
export const SETTINGS = {
  /** TCP port to listen on; 0 picks a free one. */
  port: setting({
    env: "PORT",
    default: "8000",
    schema: numberSchema({ min: 0, max: 65535, integer: true }),
    doc: "TCP port (0–65535; 0 picks a free one)",
  }),
  /** Address to bind. */
  host: setting({
    env: "HOST",
    default: "0.0.0.0",
    schema: v.string(),
    doc: "bind address",
  }),
  /** Deployment color (blue/green), a label on every metric and log line. */
  color: setting({
    env: "COLOR",
    default: "blue",
    schema: v.pipe(
      v.string(),
      v.regex(COLOR_RE, "1 to 32 lowercase letters, digits, '_' or '-'"),
    ),
    // npm and npx export COLOR=0/1 (their own terminal-colour flag) to what
    // they run; under npm that value is not a deployment color.
    ignore: (raw, env) =>
      env.npm_config_user_agent !== undefined && (raw === "0" || raw === "1"),
    doc: "deployment color, a label on every metric and log line " +
      "(1–32 of a-z 0-9 _ -; npm's own COLOR=0/1 is ignored)",
  }),
  /** `redis://` or `rediss://` URL of the session store; unset keeps sessions in memory. */
  redisUrl: setting({
    env: "REDIS_URL",
    schema: v.pipe(
      v.string(),
      v.check(isRedisUrl, "a redis:// or rediss:// URL"),
    ),
    secret: true,
    redact: redactUrl,
    doc: "redis:// or rediss:// URL of the session store; unset keeps " +
      "sessions in memory",
  }),
  /**
   * Redis Sentinels (`host:port`, …) that name the session store's master;
   * unset uses `REDIS_URL` or `REDIS_CLUSTER_NODES`.
   */
  redisSentinels: setting({
    env: "REDIS_SENTINELS",
    schema: hostPortsSchema(),
    doc: "comma-separated host:port of Redis Sentinels; sessions live in " +
      "the master they name REDIS_SENTINEL_NAME",
  }),
  /** The master's name in Sentinel (`sentinel monitor <name> …`). */
  redisSentinelName: setting({
    env: "REDIS_SENTINEL_NAME",
    default: "mymaster",
    schema: v.pipe(
      v.string(),
      v.regex(SENTINEL_NAME_RE, "1 to 64 of A-Z a-z 0-9 . _ -"),
    ),
    doc: "the master's name in Sentinel (with REDIS_SENTINELS)",
  }),
  /** Password of the Sentinels themselves (`requirepass` in sentinel.conf). */
  redisSentinelPassword: setting({
    env: "REDIS_SENTINEL_PASSWORD",
    schema: v.string(),
    secret: true,
    doc: "password of the Sentinels themselves (with REDIS_SENTINELS)",
  }),
  /**
   * Some nodes of a Redis Cluster (`host:port`, …); the rest are discovered.
   */
  redisClusterNodes: setting({
    env: "REDIS_CLUSTER_NODES",
    schema: hostPortsSchema(),
    doc: "comma-separated host:port of Redis Cluster nodes (some suffice; " +
      "the rest are discovered); sessions live in the Cluster",
  }),
  /** ACL user for the servers behind `REDIS_SENTINELS` or `REDIS_CLUSTER_NODES`. */
  redisUsername: setting({
    env: "REDIS_USERNAME",
    schema: v.string(),
    doc: "ACL user of the Redis servers with REDIS_SENTINELS or " +
      "REDIS_CLUSTER_NODES (REDIS_URL carries its own)",
  }),
  /** Password of the servers behind `REDIS_SENTINELS` or `REDIS_CLUSTER_NODES`. */
  redisPassword: setting({
    env: "REDIS_PASSWORD",
    schema: v.string(),
    secret: true,
    doc: "password of the Redis servers with REDIS_SENTINELS or " +
      "REDIS_CLUSTER_NODES (REDIS_URL carries its own)",
  }),
  /**
   * Replicas that must hold each batch of counts (`WAIT`) before it is
   * answered; unset derives it from the Redis setting (`waitReplicas` in
   * server.ts): 1 with Sentinel or Cluster, 0 with `REDIS_URL`.
   */
  redisWaitReplicas: setting({
    env: "REDIS_WAIT_REPLICAS",
    defaultText: "derived",
    schema: numberSchema({ min: 0, max: 16, integer: true }),
    doc: "replicas that must acknowledge each batch of counts (WAIT) before " +
      "it is answered, so a failover loses nothing acknowledged (0–16); " +
      "unset: 1 with REDIS_SENTINELS or REDIS_CLUSTER_NODES, 0 with REDIS_URL",
  }),
  /** Seconds between `{"ts": ...}` heartbeats. */
  heartbeatIntervalS: setting({
    env: "HEARTBEAT_INTERVAL_S",
    default: "30",
    schema: secondsSchema({ min: MIN_DURATION_S }),
    doc: "seconds between heartbeats (0.01 to 2147483.647, fractions allowed)",
  }),
  /** Budget in seconds for the whole drain, signal to exit. */
  shutdownTimeoutS: setting({
    env: "SHUTDOWN_TIMEOUT_S",
    default: "10",
    schema: secondsSchema({
      min: MIN_DURATION_S,
      max: Math.round((MAX_DURATION_S - WATCHDOG_MARGIN_S) * 1000) / 1000,
    }),
    doc: "budget for the whole drain, signal to exit, in seconds " +
      "(0.01 to 2147478.647: the exit watchdog fires 5 s past it)",
  }),
  /** Seconds readiness reports 503 before sockets are closed. */
  drainDelayS: setting({
    env: "DRAIN_DELAY_S",
    default: "0",
    schema: secondsSchema(),
    doc: "seconds readiness is 503 before sockets are closed " +
      "(< SHUTDOWN_TIMEOUT_S)",
  }),
  /** Seconds a session survives after its last activity. */
  sessionTtlS: setting({
    env: "SESSION_TTL_S",
    default: "3600",
    schema: secondsSchema({ min: MIN_DURATION_S }),
    doc: "seconds a session survives its last connection (0.01 to 2147483.647)",
  }),
  /** Largest accepted text frame in UTF-8 bytes. */
  maxMessageBytes: setting({
    env: "MAX_MESSAGE_BYTES",
    default: "65536",
    schema: numberSchema({ min: 1, max: 64 * 1024 * 1024, integer: true }),
    doc: "largest text frame in UTF-8 bytes (1 – 64 MiB)",
  }),
  /**
   * Most sockets open at once; 0 means unlimited; unset derives it at start
   * from the open-file limit (`connectionLimit` in limits.ts).
   */
  maxConnections: setting({
    env: "MAX_CONNECTIONS",
    defaultText: "derived",
    schema: numberSchema({ min: 0, integer: true }),
    doc: "most open sockets; 0 = unlimited; unset: the open-file soft limit " +
      "less max(64, 5 %) of it",
  }),
  /**
   * Most sessions the memory store keeps, held and released; unset derives
   * it at start from the memory limit (`sessionLimit` in limits.ts).
   */
  maxSessions: setting({
    env: "MAX_SESSIONS",
    defaultText: "derived",
    schema: numberSchema({ min: 1, integer: true }),
    doc: "most sessions the memory store keeps (>= 1); the longest-idle " +
      "released one makes room; unset: a tenth of the memory limit at " +
      "300 B each (10,000 to 1,000,000), 250,000 without a limit",
  }),
  /**
   * Memory limit in bytes for the memory guard; 0 turns the guard off;
   * unset takes the control group's limit, if any.
   */
  memoryLimitBytes: setting({
    env: "MEMORY_LIMIT_BYTES",
    schema: numberSchema({ min: 0, integer: true }),
    doc: "memory guard limit in bytes; unset: the cgroup's, or none " +
      "(guard off); 0 = off",
  }),
  /** Share of the memory limit above which readiness fails. */
  memoryGuardRatio: setting({
    env: "MEMORY_GUARD_RATIO",
    default: "0.85",
    schema: numberSchema({ min: 0.1, max: 1 }),
    doc: "share (0.1–1) of the memory limit above which readiness fails " +
      "and upgrades get 503 memory_pressure",
  }),
  /** Text frames per second per socket; 0 turns the limit off. */
  rateLimitPerS: setting({
    env: "RATE_LIMIT_PER_S",
    default: "0",
    schema: numberSchema({ min: 0 }),
    doc: "text frames per second per socket; 0 = off",
  }),
  /**
   * Payload bytes a socket may have queued in the runtime (`bufferedAmount`)
   * before it is closed with 1008 as a slow consumer; each queued frame costs
   * about 1 KiB of process memory whatever its payload.
   */
  maxBufferedBytes: setting({
    env: "MAX_BUFFERED_BYTES",
    default: "65536",
    schema: numberSchema({ min: 1024, max: 1024 * 1024 * 1024, integer: true }),
    doc: "payload bytes queued to one socket before it is closed with 1008 " +
      "slow_consumer (1 KiB – 1 GiB); each queued frame costs ~1 KiB",
  }),
  /** Seconds without a pong before a socket is dropped; 0 turns it off. */
  idleTimeoutS: setting({
    env: "IDLE_TIMEOUT_S",
    default: "60",
    schema: secondsSchema({ integer: true }),
    doc: "whole seconds without a pong before a socket is dropped; 0 = off",
  }),
  /** Allowed `Origin` values; `undefined` allows any. */
  allowedOrigins: setting({
    env: "ALLOWED_ORIGINS",
    schema: v.pipe(
      v.string(),
      v.transform((s) =>
        Object.freeze(s.split(",").map((o) => o.trim()).filter((o) => o))
      ),
      v.check(
        (list) => list.every((o) => o === "null" || ORIGIN_RE.test(o)),
        "a comma-separated list of origins such as https://example.com",
      ),
    ),
    doc: "comma-separated origins (https://app.example.com); unset allows any",
  }),
  /** Bearer token required by `/metrics`; `undefined` leaves it open. */
  metricsToken: setting({
    env: "METRICS_TOKEN",
    schema: v.string(),
    secret: true,
    doc: "bearer token required by /metrics; unset leaves it open",
  }),
  /**
   * HMAC key for HS256/HS384/HS512 tokens; setting it (or another key
   * source) turns authentication on.
   */
  authJwtSecret: setting({
    env: "AUTH_JWT_SECRET",
    schema: v.pipe(
      v.string(),
      v.check(
        (s) => new TextEncoder().encode(s).length >= MIN_SECRET_BYTES,
        `at least ${MIN_SECRET_BYTES} bytes (openssl rand -base64 32)`,
      ),
    ),
    secret: true,
    doc: "HMAC key for HS256/384/512 tokens (at least 32 bytes); turns " +
      "authentication on",
  }),
  /**
   * PEM public key (RSA, EC P-256/384/521, Ed25519) for RS*, PS*, ES* or
   * EdDSA tokens, with the algorithms its type allows.
   */
  authJwtPublicKey: setting({
    env: "AUTH_JWT_PUBLIC_KEY",
    schema: publicKeySchema(),
    // Not a secret, but a multi-line value: never echoed whole, shown by
    // its algorithms, and readable from AUTH_JWT_PUBLIC_KEY_FILE.
    secret: true,
    redact: describePublicKey,
    doc: "PEM public key (RSA >= 2048 bits, EC P-256/P-384/P-521, Ed25519) " +
      "for RS*/PS*/ES*/EdDSA tokens; turns authentication on",
  }),
  /** URL of a JSON Web Key Set (RFC 7517) whose keys verify tokens. */
  authJwksUrl: setting({
    env: "AUTH_JWKS_URL",
    schema: v.pipe(
      v.string(),
      v.check(isHttpUrl, "an http:// or https:// URL"),
    ),
    doc: "https:// URL of a JSON Web Key Set (RS*/PS*/ES*/EdDSA keys); " +
      "turns authentication on",
  }),
  /** Required `iss` claim; unset accepts any issuer. */
  authJwtIssuer: setting({
    env: "AUTH_JWT_ISSUER",
    schema: v.string(),
    doc: "required iss claim; unset accepts any",
  }),
  /** Required `aud` claim (one of the token's audiences); unset accepts any. */
  authJwtAudience: setting({
    env: "AUTH_JWT_AUDIENCE",
    schema: v.string(),
    doc: "required aud claim; unset accepts any",
  }),
  /**
   * Key for the MAC of server-issued session ids; set, only such ids are
   * accepted.
   */
  sessionSecret: setting({
    env: "SESSION_SECRET",
    schema: v.pipe(
      v.string(),
      v.check(
        (s) => new TextEncoder().encode(s).length >= MIN_SECRET_BYTES,
        `at least ${MIN_SECRET_BYTES} bytes (openssl rand -base64 32)`,
      ),
    ),
    secret: true,
    doc: "key for the MAC of server-issued session ids (at least 32 bytes); " +
      "set, client-chosen ids are refused",
  }),
  /** Proxies whose `X-Forwarded-For` is believed, as normalised CIDRs. */
  trustedProxies: setting({
    env: "TRUSTED_PROXIES",
    schema: cidrListSchema(),
    doc: "comma-separated addresses or CIDRs (10.0.0.0/8, fd00::/8) of " +
      "proxies whose X-Forwarded-For is believed; unset believes none",
  }),
  /** New WebSockets per second per client address; 0 turns the limit off. */
  connectRateLimitPerS: setting({
    env: "CONNECT_RATE_LIMIT_PER_S",
    default: "0",
    schema: numberSchema({ min: 0 }),
    doc: "upgrades per second per client address (token bucket, one " +
      "second of burst); 0 = off",
  }),
  /** Most open sockets per client (address, or subject with authentication); 0 is unlimited. */
  maxConnectionsPerClient: setting({
    env: "MAX_CONNECTIONS_PER_CLIENT",
    default: "0",
    schema: numberSchema({ min: 0, integer: true }),
    doc: "most open sockets per client address, or per token subject " +
      "with authentication; 0 = unlimited",
  }),
  /** Lowest level written. */
  logLevel: setting({
    env: "LOG_LEVEL",
    default: "info",
    schema: choiceSchema(LOG_LEVELS),
    doc: "lowest level written: debug, info, warning, error, critical",
  }),
  /** Line format. */
  logFormat: setting({
    env: "LOG_FORMAT",
    default: "json",
    schema: choiceSchema<LogFormat>(["json", "pretty"]),
    doc: "json (JSON Lines) or pretty (for people)",
  }),
  /** Deno's OpenTelemetry is on (`OTEL_DENO=true`): spans are created. */
  otelEnabled: setting({
    env: "OTEL_DENO",
    default: "false",
    schema: flagSchema(),
    doc: "true turns on Deno's OpenTelemetry exporter (OTEL_EXPORTER_OTLP_*, " +
      "OTEL_SERVICE_NAME)",
  }),
  /** Fraction (0–1) of a traced connection's frames that get a span. */
  traceFrameRatio: setting({
    env: "TRACE_FRAME_RATIO",
    default: "0.01",
    schema: numberSchema({ min: 0, max: 1 }),
    doc: "fraction (0–1) of a traced connection's frames that get a span",
  }),
  /**
   * Port of the admin listener (`/metrics`, `/status`, `/admin/…`,
   * `/debug/…`); unset keeps one listener for everything.
   */
  adminPort: setting({
    env: "ADMIN_PORT",
    schema: numberSchema({ min: 0, max: 65535, integer: true }),
    doc: "port of the admin listener (0–65535; 0 picks a free one); unset: " +
      "no admin listener, the main port answers /metrics and /status",
  }),
  /** Address the admin listener binds. */
  adminHost: setting({
    env: "ADMIN_HOST",
    default: "127.0.0.1",
    schema: v.string(),
    doc: "bind address of the admin listener; one that is not loopback " +
      "needs ADMIN_TOKEN",
  }),
  /** Bearer token for `/admin/…` and `/debug/…`; `undefined` leaves them open. */
  adminToken: setting({
    env: "ADMIN_TOKEN",
    schema: v.string(),
    secret: true,
    doc: "bearer token required by /admin/… and /debug/…; unset leaves them " +
      "open (loopback only)",
  }),
  /** Grafana Pyroscope's base URL; set, CPU profiles are pushed there. */
  pyroscopeUrl: setting({
    env: "PYROSCOPE_URL",
    schema: v.pipe(
      v.string(),
      v.check(isHttpUrl, "an http:// or https:// URL"),
    ),
    secret: true,
    redact: redactUrl,
    doc: "http(s):// URL of Grafana Pyroscope; set, a CPU profile is " +
      "pushed to its /ingest every PROFILE_INTERVAL_S",
  }),
  /** Seconds covered by each continuous CPU profile. */
  profileIntervalS: setting({
    env: "PROFILE_INTERVAL_S",
    default: "15",
    schema: secondsSchema({ min: 1, max: 3600 }),
    doc: "seconds each pushed CPU profile covers (1 to 3600)",
  }),
};

/** The variables that each turn authentication on; at most one may be set. */
export const AUTH_KEY_SOURCES = [
  "AUTH_JWT_SECRET",
  "AUTH_JWT_PUBLIC_KEY",
  "AUTH_JWKS_URL",
] as const;

/** Rules that tie settings together. */
export const CROSS_CHECKS: readonly CrossCheck[] = [
  // Each key source names the ones before it, so the rule names a variable
  // that is set.
  ...AUTH_KEY_SOURCES.slice(1).map((env, i) => {
    const before = AUTH_KEY_SOURCES.slice(0, i + 1);
    return {
      env,
      uses: [env, ...before],
      test: (s: Readonly<Record<string, unknown>>) =>
        s[env] === undefined || before.every((k) => s[k] === undefined),
      expected: (s: Readonly<Record<string, unknown>>) =>
        `no value with ${
          before.filter((k) => s[k] !== undefined).join(" and ")
        } set: set one key source`,
    };
  }),
  ...(["AUTH_JWT_ISSUER", "AUTH_JWT_AUDIENCE"] as const).map((env) => ({
    env,
    uses: [env, ...AUTH_KEY_SOURCES],
    test: (s: Readonly<Record<string, unknown>>) =>
      s[env] === undefined || AUTH_KEY_SOURCES.some((k) => s[k] !== undefined),
    expected: () =>
      `no value without a key (${AUTH_KEY_SOURCES.join(", ")}): ` +
      "alone it would not turn authentication on",
  })),
  {
    env: "REDIS_SENTINELS",
    uses: ["REDIS_SENTINELS", "REDIS_URL", "REDIS_CLUSTER_NODES"],
    test: (s) =>
      s.REDIS_SENTINELS === undefined ||
      (s.REDIS_URL === undefined && s.REDIS_CLUSTER_NODES === undefined),
    expected: (s) => `unset while ${redisSetBesides(s, "REDIS_SENTINELS")}`,
  },
  {
    env: "REDIS_CLUSTER_NODES",
    uses: ["REDIS_CLUSTER_NODES", "REDIS_URL"],
    test: (s) =>
      s.REDIS_CLUSTER_NODES === undefined || s.REDIS_URL === undefined,
    expected: (s) => `unset while ${redisSetBesides(s, "REDIS_CLUSTER_NODES")}`,
  },
  ...["REDIS_USERNAME", "REDIS_PASSWORD"].map((env): CrossCheck => ({
    env,
    uses: [env, "REDIS_URL"],
    test: (s) => s[env] === undefined || s.REDIS_URL === undefined,
    expected: () =>
      "unset while REDIS_URL is set (the URL carries user and password: " +
      "redis://user:password@host:6379/0)",
  })),
  {
    env: "DRAIN_DELAY_S",
    uses: ["DRAIN_DELAY_S", "SHUTDOWN_TIMEOUT_S"],
    test: (s) => (s.DRAIN_DELAY_S as number) < (s.SHUTDOWN_TIMEOUT_S as number),
    expected: (s) =>
      `a number below SHUTDOWN_TIMEOUT_S (${s.SHUTDOWN_TIMEOUT_S})`,
  },
  {
    // An admin listener anyone can reach must not be open to anyone.
    env: "ADMIN_HOST",
    uses: ["ADMIN_HOST", "ADMIN_PORT", "ADMIN_TOKEN"],
    test: (s) =>
      s.ADMIN_PORT === undefined || s.ADMIN_TOKEN !== undefined ||
      isLoopback(s.ADMIN_HOST as string),
    expected: () =>
      "a loopback address (127.0.0.0/8, ::1, localhost) while ADMIN_TOKEN " +
      "is unset",
  },
];

/** The service's settings; every duration is in seconds, every size in bytes. */
export type Settings = {
  readonly [K in keyof typeof SETTINGS]: SettingValue<typeof SETTINGS[K]>;
};

const SCHEMA = new SettingsSchema(SETTINGS, CROSS_CHECKS);

/**
 * Parses the environment into {@link Settings}.
 *
 * Empty values count as unset; unknown variables are ignored (see
 * {@link suspectVariables}). A secret may come from the file its `NAME_FILE`
 * names (trailing newlines removed).
 *
 * @param env Variable name → value, usually the process environment.
 * @param options How `*_FILE` secrets are read.
 * @returns A frozen Settings object.
 * @throws {SettingsError} Listing every variable whose value is invalid.
 *
 * @example
 * ```ts
 * const settings = parseSettings({ PORT: "9000", COLOR: "green" });
 * settings.port; // 9000
 * ```
 */
export function parseSettings(env: Env, options: ParseOptions = {}): Settings {
  return SCHEMA.parse(env, options) as Settings;
}

/**
 * The effective value of every setting, for `sockeye config`.
 *
 * @param env Variable name → value.
 * @param options How `*_FILE` secrets are read.
 * @returns One entry per variable of {@link SETTINGS}, in its order; secrets
 *   redacted.
 * @throws {SettingsError} Listing every variable whose value is invalid.
 */
export function describeSettings(
  env: Env,
  options: ParseOptions = {},
): readonly EffectiveSetting[] {
  return SCHEMA.describe(env, options);
}

/**
 * Names sockeye knows: every setting, and `NAME_FILE` for each secret.
 *
 * @returns The variable names.
 */
export function knownVariables(): readonly string[] {
  return SCHEMA.known();
}

/**
 * Finds environment variables that are probably misspelt settings: not
 * known, written like ours (capitals, digits and underscores), and one or
 * two edits from a known name (one for names of four letters or fewer), or
 * a known name in other case (`redis_url`). Common system variables (`PATH`,
 * `HOME`, `HOSTNAME`, `LC_*` …) are never suspects.
 *
 * @param env Variable name → value.
 * @returns The suspects, sorted by name.
 *
 * @example
 * ```ts
 * suspectVariables({ REDIS_URI: "redis://cache:6379", HOME: "/root" });
 * // [{ variable: "REDIS_URI", suggestion: "REDIS_URL" }]
 * ```
 */
export function suspectVariables(env: Env): readonly Misspelt[] {
  return misspelt(Object.keys(env), SCHEMA.known());
}

/** A PEM public key, kept as normalised PEM once its type is known to be usable. */
function publicKeySchema(): Schema<string> {
  return v.pipe(
    v.string(),
    v.transform(normalisePem),
    v.rawCheck(({ dataset, addIssue }) => {
      try {
        publicKeyAlgorithms(dataset.value as string);
      } catch (error) {
        addIssue({ message: (error as Error).message });
      }
    }),
  );
}

/** Shows a PEM public key by what it verifies, for `sockeye config`. */
function describePublicKey(raw: string): string {
  try {
    return `PEM public key (${
      publicKeyAlgorithms(normalisePem(raw)).join(", ")
    })`;
  } catch {
    return "PEM (not a usable public key)";
  }
}

/** A comma-separated list of addresses and CIDRs, normalised. */
function cidrListSchema(): Schema<readonly string[]> {
  return v.pipe(
    v.string(),
    v.transform((s) => s.split(",").map((c) => c.trim()).filter((c) => c)),
    v.check(
      (list) => list.every((c) => normaliseCidr(c) !== undefined),
      "a comma-separated list of addresses or CIDRs such as 10.0.0.0/8, fd00::/8",
    ),
    v.transform((list) => Object.freeze(list.map((c) => normaliseCidr(c)!))),
  );
}

/** The variables naming a Redis for the session store, one at most. */
const REDIS_TARGETS = [
  "REDIS_URL",
  "REDIS_SENTINELS",
  "REDIS_CLUSTER_NODES",
] as const;

function redisSetBesides(
  values: Readonly<Record<string, unknown>>,
  env: string,
): string {
  const others = REDIS_TARGETS.filter((name) =>
    name !== env && values[name] !== undefined
  );
  return `${others.join(" and ")} ${others.length > 1 ? "are" : "is"} set ` +
    `(set one of ${REDIS_TARGETS.join(", ")})`;
}

const HOST_PORT_RE =
  /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):([0-9]{1,5})$/;

/**
 * A schema for a comma-separated list of `host:port` (a name, an IPv4
 * address, or an IPv6 address in brackets; port 1–65535).
 *
 * @returns Raw text → the entries, trimmed, in order, frozen.
 */
export function hostPortsSchema(): Schema<readonly string[]> {
  return v.pipe(
    v.string(),
    v.transform((s) =>
      Object.freeze(s.split(",").map((e) => e.trim()).filter((e) => e))
    ),
    v.check(
      (list) =>
        list.length > 0 && list.every((entry) => {
          const port = Number(HOST_PORT_RE.exec(entry)?.[1] ?? 0);
          return port >= 1 && port <= 65535;
        }),
      "a comma-separated list of host:port such as redis-a:26379,redis-b:26379",
    ),
  );
}

/**
 * Splits one `host:port` entry of {@link hostPortsSchema}.
 *
 * @param entry e.g. `redis-a:26379` or `[::1]:6379`.
 * @returns The host (brackets removed) and the port.
 */
export function splitHostPort(entry: string): { host: string; port: number } {
  const i = entry.lastIndexOf(":");
  return {
    host: entry.slice(0, i).replace(/^\[(.*)\]$/, "$1"),
    port: Number(entry.slice(i + 1)),
  };
}

/**
 * Tells whether a bind address reaches this host only.
 *
 * @param host An address or host name as `HOST` or `ADMIN_HOST` hold it.
 * @returns `true` for 127.0.0.0/8, `::1` (bracketed or not) and `localhost`.
 */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" ||
    /^127(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/.test(h);
}

/** Whether `value` is a URL with one of `schemes` (e.g. `redis:`). */
function urlWith(value: string, schemes: readonly string[]): boolean {
  return URL.canParse(value) && schemes.includes(new URL(value).protocol);
}

function isRedisUrl(value: string): boolean {
  return urlWith(value, ["redis:", "rediss:"]);
}

function isHttpUrl(value: string): boolean {
  return urlWith(value, ["http:", "https:"]);
}

/**
 * Hides the password of a URL, for logs and error messages.
 *
 * @param value A URL, possibly with `user:password@`.
 * @returns The URL with the password replaced by `***`; the input if it does not parse.
 */
export function redactUrl(value: string): string {
  try {
    const url = new URL(value);
    if (url.password) url.password = "***";
    return url.toString();
  } catch {
    return value.replace(/\/\/[^@/]*@/, "//***@");
  }
}
