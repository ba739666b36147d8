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
  secondsSchema,
  setting,
  SettingsSchema,
  type SettingValue,
} from "./settings_schema.ts";
import { type Misspelt, misspelt } from "./suggest.ts";

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
   * from the open-file limit (`connectionLimit` in server.ts).
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
   * it at start from the memory limit (`sessionLimit` in server.ts).
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

/** Rules that tie settings together. */
export const CROSS_CHECKS: readonly CrossCheck[] = [
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
