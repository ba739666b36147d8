/**
 * Settings: the environment, parsed once into a frozen, typed object.
 *
 * Nothing else in sockeye reads the environment (12-factor, factor III). An
 * invalid value throws {@link SettingsError}, which the `serve` subcommand
 * turns into exit code 2.
 *
 * @module
 */

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

/** The service's settings; every duration is in seconds, every size in bytes. */
export interface Settings {
  /** TCP port to listen on; 0 picks a free one. @default 8000 */
  readonly port: number;
  /** Address to bind. @default "0.0.0.0" */
  readonly host: string;
  /** Deployment color (blue/green), a label on every metric and log line. @default "blue" */
  readonly color: string;
  /** `redis://` or `rediss://` URL of the session store; unset keeps sessions in memory. */
  readonly redisUrl: string | undefined;
  /** Seconds between `{"ts": ...}` heartbeats. @default 30 */
  readonly heartbeatIntervalS: number;
  /** Budget in seconds for the whole drain, signal to exit. @default 10 */
  readonly shutdownTimeoutS: number;
  /** Seconds readiness reports 503 before sockets are closed. @default 0 */
  readonly drainDelayS: number;
  /** Seconds a session survives after its last activity. @default 3600 */
  readonly sessionTtlS: number;
  /** Largest accepted text frame in UTF-8 bytes. @default 65536 */
  readonly maxMessageBytes: number;
  /** Most sockets open at once; 0 means unlimited. @default 0 */
  readonly maxConnections: number;
  /** Text frames per second per socket; 0 turns the limit off. @default 0 */
  readonly rateLimitPerS: number;
  /**
   * Payload bytes a socket may have queued in the runtime, not yet taken by
   * the kernel (`bufferedAmount`), before it is closed with 1008 as a slow
   * consumer. Each queued frame costs about 1 KiB of process memory whatever
   * its payload, so the default bounds a slow client to about 5.5 MiB.
   * @default 65536
   */
  readonly maxBufferedBytes: number;
  /** Seconds without a pong before a socket is dropped; 0 turns it off. @default 60 */
  readonly idleTimeoutS: number;
  /** Allowed `Origin` values; `undefined` allows any. */
  readonly allowedOrigins: readonly string[] | undefined;
  /** Bearer token required by `/metrics`; `undefined` leaves it open. */
  readonly metricsToken: string | undefined;
  /** Lowest level written. @default "info" */
  readonly logLevel: LogLevelName;
  /** Line format. @default "json" */
  readonly logFormat: LogFormat;
  /** Deno's OpenTelemetry is on (`OTEL_DENO=true`): spans are created. @default false */
  readonly otelEnabled: boolean;
  /** Fraction (0–1) of a traced connection's frames that get a span. @default 0.01 */
  readonly traceFrameRatio: number;
}

/**
 * An environment variable holds a value sockeye cannot use.
 *
 * The message names the variable, the value and the expected form, e.g.
 * `Cannot parse HEARTBEAT_INTERVAL_S "abc": expected a positive number`.
 */
export class SettingsError extends Error {
  /** The variable at fault, e.g. `PORT`. */
  readonly variable: string;

  /**
   * Creates the error with its sentence-case message.
   *
   * @param variable The environment variable's name.
   * @param value The raw value found.
   * @param expected What a valid value looks like.
   */
  constructor(variable: string, value: string, expected: string) {
    super(`Cannot parse ${variable} "${value}": expected ${expected}`);
    this.name = "SettingsError";
    this.variable = variable;
  }
}

/** The environment as a plain lookup, so tests can pass their own. */
export type Env = Readonly<Record<string, string | undefined>>;

const COLOR_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;

/**
 * Parses the environment into {@link Settings}.
 *
 * Empty values count as unset. Unknown variables are ignored.
 *
 * @param env Variable name → value, usually `Deno.env.toObject()`.
 * @returns A frozen Settings object.
 * @throws {SettingsError} On the first variable whose value is invalid.
 *
 * @example
 * ```ts
 * const settings = parseSettings({ PORT: "9000", COLOR: "green" });
 * settings.port; // 9000
 * ```
 */
export function parseSettings(env: Env): Settings {
  const read = (name: string): string | undefined => {
    const value = env[name]?.trim();
    return value === "" ? undefined : value;
  };
  const number = (
    name: string,
    fallback: number,
    opts: { min: number; integer?: boolean; max?: number; positive?: boolean },
  ): number => {
    const raw = read(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    const ok = /^[0-9]+(\.[0-9]+)?$/.test(raw) && Number.isFinite(value) &&
      value >= opts.min && (!opts.positive || value > 0) &&
      (opts.max === undefined || value <= opts.max) &&
      (!opts.integer || Number.isInteger(value));
    if (!ok) {
      const kind = opts.integer ? "an integer" : "a number";
      const range = opts.max !== undefined
        ? ` from ${opts.min} to ${opts.max}`
        : opts.positive
        ? " above 0"
        : ` of at least ${opts.min}`;
      throw new SettingsError(name, raw, kind + range);
    }
    return value;
  };
  const choice = <T extends string>(
    name: string,
    fallback: T,
    allowed: readonly T[],
  ): T => {
    const raw = read(name)?.toLowerCase();
    if (raw === undefined) return fallback;
    if (!(allowed as readonly string[]).includes(raw)) {
      throw new SettingsError(name, raw, `one of ${allowed.join(", ")}`);
    }
    return raw as T;
  };

  // npm and npx export COLOR=0/1 (their own terminal-colour flag) to what
  // they run; under npm that value is not a deployment color.
  const npmColorFlag = env.npm_config_user_agent !== undefined &&
    (env.COLOR === "0" || env.COLOR === "1");
  const color = (npmColorFlag ? undefined : read("COLOR")) ?? "blue";
  if (!COLOR_RE.test(color)) {
    throw new SettingsError(
      "COLOR",
      color,
      "1 to 32 lowercase letters, digits, '_' or '-'",
    );
  }

  const redisUrl = read("REDIS_URL");
  if (redisUrl !== undefined && !isRedisUrl(redisUrl)) {
    throw new SettingsError(
      "REDIS_URL",
      redactUrl(redisUrl),
      "a redis:// or rediss:// URL",
    );
  }

  const origins = read("ALLOWED_ORIGINS");
  const allowedOrigins = origins === undefined ? undefined : origins
    .split(",").map((o) => o.trim()).filter((o) => o !== "");
  for (const origin of allowedOrigins ?? []) {
    if (origin !== "null" && !/^[a-z][a-z0-9+.-]*:\/\/[^/\s]+$/i.test(origin)) {
      throw new SettingsError(
        "ALLOWED_ORIGINS",
        origins!,
        "a comma-separated list of origins such as https://example.com",
      );
    }
  }

  const shutdownTimeoutS = number("SHUTDOWN_TIMEOUT_S", 10, {
    min: 0,
    positive: true,
  });
  const drainDelayS = number("DRAIN_DELAY_S", 0, { min: 0 });
  if (drainDelayS >= shutdownTimeoutS) {
    throw new SettingsError(
      "DRAIN_DELAY_S",
      String(drainDelayS),
      `a number below SHUTDOWN_TIMEOUT_S (${shutdownTimeoutS})`,
    );
  }

  return Object.freeze({
    port: number("PORT", 8000, { min: 0, max: 65535, integer: true }),
    host: read("HOST") ?? "0.0.0.0",
    color,
    redisUrl,
    heartbeatIntervalS: number("HEARTBEAT_INTERVAL_S", 30, {
      min: 0,
      positive: true,
    }),
    shutdownTimeoutS,
    drainDelayS,
    sessionTtlS: number("SESSION_TTL_S", 3600, { min: 0, positive: true }),
    maxMessageBytes: number("MAX_MESSAGE_BYTES", 65536, {
      min: 1,
      max: 64 * 1024 * 1024,
      integer: true,
    }),
    maxConnections: number("MAX_CONNECTIONS", 0, { min: 0, integer: true }),
    rateLimitPerS: number("RATE_LIMIT_PER_S", 0, { min: 0 }),
    maxBufferedBytes: number("MAX_BUFFERED_BYTES", 65536, {
      min: 1024,
      max: 1024 * 1024 * 1024,
      integer: true,
    }),
    idleTimeoutS: number("IDLE_TIMEOUT_S", 60, { min: 0, integer: true }),
    allowedOrigins: allowedOrigins && Object.freeze(allowedOrigins),
    metricsToken: read("METRICS_TOKEN"),
    logLevel: choice("LOG_LEVEL", "info", LOG_LEVELS),
    logFormat: choice<LogFormat>("LOG_FORMAT", "json", ["json", "pretty"]),
    otelEnabled: ["true", "1"].includes(
      choice("OTEL_DENO", "false", ["true", "false", "1", "0"]),
    ),
    traceFrameRatio: number("TRACE_FRAME_RATIO", 0.01, { min: 0, max: 1 }),
  });
}

function isRedisUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === "redis:" || url.protocol === "rediss:";
  } catch {
    return false;
  }
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
