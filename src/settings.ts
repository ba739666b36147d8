/**
 * Settings: the environment, parsed once into a frozen, typed object.
 *
 * Nothing else in sockeye reads the environment (12-factor, factor III).
 * {@link SETTINGS} is the one table of variables: parsing, defaults,
 * `sockeye serve --help`, `sockeye config` and the warnings for misspelt
 * names all read it, so a new setting is one entry there. Values are checked
 * with valibot schemas; every invalid variable is reported at once in a
 * {@link SettingsError}, which `serve` and `config` turn into exit code 2.
 *
 * @module
 */
import * as v from "valibot";

/** A valibot schema, as {@link SettingSpec.schema} takes it. */
export type { GenericSchema } from "valibot";
import { readTextFile } from "./platform.ts";
import { closest } from "./suggest.ts";

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

/** The environment as a plain lookup, so tests can pass their own. */
export type Env = Readonly<Record<string, string | undefined>>;

/**
 * The longest duration a setting may hold, in seconds: timers take at most
 * 2^31 − 1 ms (a longer one fires at once).
 */
export const MAX_DURATION_S = 2147483.647;

/** One environment variable: how it is read, its default, what it means. */
export interface SettingSpec<T = unknown> {
  /** The variable's name, e.g. `PORT`. */
  readonly env: string;
  /**
   * Turns the raw text (trimmed, never empty) into the value. Its messages
   * finish the sentence "Cannot parse NAME "value": expected …".
   */
  readonly schema: v.GenericSchema<string, T>;
  /**
   * Raw text used when the variable is unset (it goes through `schema` too);
   * a function computes it at parse time. Without one, an unset variable
   * leaves the setting `undefined`.
   */
  readonly default?: string | ((env: Env) => string);
  /** How help shows a computed default, e.g. `from the open-file limit`. */
  readonly defaultText?: string;
  /** One line for `sockeye serve --help`: meaning, unit, range. */
  readonly doc: string;
  /**
   * A secret: `sockeye config` shows it redacted, error messages never echo
   * it, and `NAME_FILE` may name a file holding it (Docker and Kubernetes
   * secrets).
   */
  readonly secret?: boolean;
  /** Shows a secret's raw value with its secret part hidden; `***` by default. */
  readonly redact?: (raw: string) => string;
  /** Takes a raw value as unset when this returns true. */
  readonly ignore?: (raw: string, env: Env) => boolean;
}

/**
 * Checks a {@link SettingSpec} and keeps its literal type, so
 * {@link Settings} knows which settings have defaults.
 *
 * @param spec The variable's description.
 * @returns `spec` unchanged.
 */
export function setting<const S extends SettingSpec>(spec: S): S {
  return spec;
}

const NUMBER_RE = /^[0-9]+(\.[0-9]+)?$/;

/** Bounds for {@link numberSchema}. */
export interface NumberRule {
  /** Smallest value allowed. */
  readonly min: number;
  /** Largest value allowed; none by default. */
  readonly max?: number;
  /** Whole numbers only. */
  readonly integer?: boolean;
  /** Above 0 (with `min: 0`). */
  readonly positive?: boolean;
}

/**
 * A schema for a plain decimal number (no sign, exponent or `Infinity`).
 *
 * @param rule Bounds and integrality.
 * @returns Raw text → number; the message reads e.g. `an integer from 0 to 65535`.
 */
export function numberSchema(
  rule: NumberRule,
): v.GenericSchema<string, number> {
  const kind = rule.integer ? "an integer" : "a number";
  const range = rule.max !== undefined
    ? ` from ${rule.min} to ${rule.max}`
    : rule.positive
    ? " above 0"
    : ` of at least ${rule.min}`;
  const expected = kind + range;
  return v.pipe(
    v.string(),
    v.regex(NUMBER_RE, expected),
    v.transform(Number),
    v.check(
      (n) =>
        Number.isFinite(n) && n >= rule.min && (!rule.positive || n > 0) &&
        (rule.max === undefined || n <= rule.max) &&
        (!rule.integer || Number.isInteger(n)),
      expected,
    ),
  );
}

/**
 * A schema for a duration in seconds, at most {@link MAX_DURATION_S}.
 *
 * @param rule Bounds as for {@link numberSchema}; `min` defaults to 0.
 * @returns Raw text → seconds.
 */
export function secondsSchema(
  rule: Partial<NumberRule> = {},
): v.GenericSchema<string, number> {
  return v.pipe(
    numberSchema({ min: 0, ...rule }),
    v.maxValue(
      MAX_DURATION_S,
      `at most ${MAX_DURATION_S} (2^31 − 1 ms, the longest timer)`,
    ),
  );
}

/**
 * A schema for one of a few words, case-insensitive.
 *
 * @param allowed The words, lowercase.
 * @returns Raw text → the lowercase word.
 */
export function choiceSchema<const T extends string>(
  allowed: readonly T[],
): v.GenericSchema<string, T> {
  return v.pipe(
    v.string(),
    v.transform((s) => s.toLowerCase()),
    v.picklist(allowed, `one of ${allowed.join(", ")}`),
  );
}

const COLOR_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
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
    schema: secondsSchema({ positive: true }),
    doc: "seconds between heartbeats (> 0, fractions allowed)",
  }),
  /** Budget in seconds for the whole drain, signal to exit. */
  shutdownTimeoutS: setting({
    env: "SHUTDOWN_TIMEOUT_S",
    default: "10",
    schema: secondsSchema({ positive: true }),
    doc: "budget for the whole drain, signal to exit, in seconds (> 0)",
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
    schema: secondsSchema({ positive: true }),
    doc: "seconds a session survives its last connection (> 0)",
  }),
  /** Largest accepted text frame in UTF-8 bytes. */
  maxMessageBytes: setting({
    env: "MAX_MESSAGE_BYTES",
    default: "65536",
    schema: numberSchema({ min: 1, max: 64 * 1024 * 1024, integer: true }),
    doc: "largest text frame in UTF-8 bytes (1 – 64 MiB)",
  }),
  /** Most sockets open at once; 0 means unlimited. */
  maxConnections: setting({
    env: "MAX_CONNECTIONS",
    default: "0",
    schema: numberSchema({ min: 0, integer: true }),
    doc: "most open sockets; 0 = unlimited",
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
    schema: v.pipe(
      choiceSchema(["true", "false", "1", "0"]),
      v.transform((s) => s === "true" || s === "1"),
    ),
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
};

/** A rule between settings, checked once each of them is valid on its own. */
export interface CrossCheck {
  /** The variable named when the rule fails. */
  readonly env: string;
  /** Every variable the rule reads (including `env`). */
  readonly uses: readonly string[];
  /** Whether the parsed values (by variable name) satisfy the rule. */
  readonly test: (values: Readonly<Record<string, unknown>>) => boolean;
  /** What `env` should be, e.g. `a number below SHUTDOWN_TIMEOUT_S (10)`. */
  readonly expected: (values: Readonly<Record<string, unknown>>) => string;
}

/** Rules that tie settings together. */
export const CROSS_CHECKS: readonly CrossCheck[] = [
  {
    env: "DRAIN_DELAY_S",
    uses: ["DRAIN_DELAY_S", "SHUTDOWN_TIMEOUT_S"],
    test: (s) => (s.DRAIN_DELAY_S as number) < (s.SHUTDOWN_TIMEOUT_S as number),
    expected: (s) =>
      `a number below SHUTDOWN_TIMEOUT_S (${s.SHUTDOWN_TIMEOUT_S})`,
  },
];

/** The parsed value of a {@link SettingSpec}; `undefined` when it has no default. */
export type SettingValue<S> = S extends SettingSpec<infer T>
  ? S extends { readonly default: string | ((env: Env) => string) } ? T
  : T | undefined
  : never;

/** The service's settings; every duration is in seconds, every size in bytes. */
export type Settings = {
  readonly [K in keyof typeof SETTINGS]: SettingValue<typeof SETTINGS[K]>;
};

/** One invalid variable. */
export interface SettingsProblem {
  /** The variable at fault, e.g. `PORT`. */
  readonly variable: string;
  /** A sentence naming the variable, e.g. `Cannot parse PORT "x": expected …`. */
  readonly message: string;
}

/**
 * One or more environment variables hold values sockeye cannot use.
 *
 * Each problem names its variable, the value (secrets redacted) and the
 * expected form, e.g.
 * `Cannot parse HEARTBEAT_INTERVAL_S "abc": expected a number above 0`; the
 * message is the problems, one per line.
 */
export class SettingsError extends Error {
  /** Every problem found, in the order of {@link SETTINGS}. */
  readonly problems: readonly SettingsProblem[];
  /** The first variable at fault, e.g. `PORT`. */
  readonly variable: string;

  /**
   * Creates the error.
   *
   * @param problems At least one problem.
   */
  constructor(problems: readonly SettingsProblem[]) {
    super(problems.map((p) => p.message).join("\n"));
    this.name = "SettingsError";
    this.problems = Object.freeze([...problems]);
    this.variable = problems[0]?.variable ?? "";
  }
}

/** Where an effective value came from. */
export type SettingSource = "environment" | "file" | "default";

/** One line of `sockeye config`. */
export interface EffectiveSetting {
  /** The variable, e.g. `PORT`. */
  readonly env: string;
  /** The parsed value, secrets redacted; `null` when unset. */
  readonly value: unknown;
  /** The value as an environment variable would hold it, secrets redacted. */
  readonly text: string;
  /** The variable itself, its `_FILE`, or the default. */
  readonly source: SettingSource;
}

/** Options for {@link parseSettings}. */
export interface ParseOptions {
  /** Reads a `*_FILE` secret; reads the file system by default. */
  readonly readFile?: (path: string) => string;
}

const SPECS: readonly [string, SettingSpec][] = Object.entries(SETTINGS);

const OBJECT_SCHEMA = v.pipe(
  v.object(Object.fromEntries(
    SPECS.map(([, spec]) => [spec.env, v.optional(spec.schema)]),
  )),
  // A rule runs only when the variables it reads are valid on their own, so
  // it adds to the other problems instead of repeating them.
  ...CROSS_CHECKS.map((rule) =>
    v.rawCheck<Record<string, unknown>>(({ dataset, addIssue }) => {
      const values = dataset.value as Record<string, unknown>;
      const invalid = (dataset.issues ?? []).some((issue) =>
        rule.uses.includes(String(issue.path?.[0]?.key))
      );
      if (invalid || rule.test(values)) return;
      addIssue({
        message: rule.expected(values),
        path: [{
          type: "object",
          origin: "value",
          input: values,
          key: rule.env,
          value: values[rule.env],
        }],
      });
    })
  ),
);

interface Resolved {
  readonly values: Readonly<Record<string, unknown>>;
  readonly raw: Readonly<Record<string, string | undefined>>;
  readonly sources: Readonly<Record<string, SettingSource>>;
}

function clean(value: string | undefined): string | undefined {
  const trimmed = value?.trim();
  return trimmed === "" ? undefined : trimmed;
}

function shown(spec: SettingSpec, raw: string): string {
  return spec.secret ? (spec.redact ?? (() => "***"))(raw) : raw;
}

function resolve(env: Env, options: ParseOptions): Resolved {
  const readFile = options.readFile ?? readTextFile;
  const problems: SettingsProblem[] = [];
  const raw: Record<string, string | undefined> = {};
  const sources: Record<string, SettingSource> = {};
  for (const [, spec] of SPECS) {
    let value = clean(env[spec.env]);
    let source: SettingSource = "environment";
    const fileVar = `${spec.env}_FILE`;
    const path = spec.secret ? clean(env[fileVar]) : undefined;
    if (path !== undefined && value !== undefined) {
      problems.push({
        variable: spec.env,
        message: `Cannot use both ${spec.env} and ${fileVar}: set one`,
      });
    } else if (path !== undefined) {
      try {
        value = readFile(path).replace(/(\r?\n)+$/, "");
        source = "file";
        if (value === "") {
          value = undefined;
          problems.push({
            variable: fileVar,
            message: `Cannot use ${fileVar} "${path}": the file is empty`,
          });
        }
      } catch (error) {
        const reason = (error as Error).message.replace(/ \(os error.*$/, "");
        problems.push({
          variable: fileVar,
          message: `Cannot read ${fileVar} "${path}": ${reason}`,
        });
      }
    }
    if (value !== undefined && spec.ignore?.(value, env)) value = undefined;
    if (value === undefined && spec.default !== undefined) {
      value = typeof spec.default === "string"
        ? spec.default
        : spec.default(env);
      source = "default";
    } else if (value === undefined) source = "default";
    raw[spec.env] = value;
    sources[spec.env] = source;
  }

  const result = v.safeParse(OBJECT_SCHEMA, raw);
  const seen = new Set(problems.map((p) => p.variable));
  for (const issue of result.issues ?? []) {
    const variable = String(issue.path?.[0]?.key ?? "");
    if (seen.has(variable)) continue; // one problem per variable
    seen.add(variable);
    const spec = SPECS.find(([, s]) => s.env === variable)?.[1];
    const value = raw[variable] ?? "";
    const label = sources[variable] === "file"
      ? `${variable} (from ${variable}_FILE)`
      : variable;
    problems.push({
      variable,
      message: `Cannot parse ${label} "${
        spec ? shown(spec, value) : value
      }": expected ${issue.message}`,
    });
  }
  if (problems.length > 0) {
    const order = (p: SettingsProblem) =>
      SPECS.findIndex(([, s]) =>
        p.variable === s.env || p.variable === `${s.env}_FILE`
      );
    throw new SettingsError(problems.sort((a, b) => order(a) - order(b)));
  }
  return { values: result.output as Record<string, unknown>, raw, sources };
}

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
  const { values } = resolve(env, options);
  const settings: Record<string, unknown> = {};
  for (const [key, spec] of SPECS) settings[key] = values[spec.env];
  return Object.freeze(settings) as Settings;
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
  const { values, raw, sources } = resolve(env, options);
  return SPECS.map(([, spec]) => {
    const value = values[spec.env];
    const rawValue = raw[spec.env];
    const text = rawValue === undefined
      ? ""
      : spec.secret
      ? shown(spec, rawValue)
      : Array.isArray(value)
      ? value.join(",")
      : String(value);
    return {
      env: spec.env,
      value: value === undefined ? null : spec.secret ? text : value,
      text,
      source: sources[spec.env]!,
    };
  });
}

/**
 * Names sockeye knows: every setting, and `NAME_FILE` for each secret.
 *
 * @returns The variable names.
 */
export function knownVariables(): readonly string[] {
  return SPECS.flatMap(([, s]) =>
    s.secret ? [s.env, `${s.env}_FILE`] : [s.env]
  );
}

// Common variables of shells, terminals and orchestrators: never taken for
// a misspelt setting, however close (HOME is two edits from HOST).
const SYSTEM_VARIABLES = new Set([
  "CI",
  "COLORTERM",
  "COLUMNS",
  "DISPLAY",
  "EDITOR",
  "FORCE_COLOR",
  "HOME",
  "HOSTNAME",
  "HOSTTYPE",
  "LANG",
  "LANGUAGE",
  "LINES",
  "LOGNAME",
  "MAIL",
  "NO_COLOR",
  "OLDPWD",
  "PAGER",
  "PATH",
  "PWD",
  "SHELL",
  "SHLVL",
  "TEMP",
  "TERM",
  "TMP",
  "TMPDIR",
  "TZ",
  "USER",
  "USERNAME",
  "VISUAL",
]);
const SYSTEM_PREFIXES =
  /^(LC_|XDG_|SSH_|DENO_|NODE_|NPM_|KUBERNETES_|DOCKER_|GIT_)/;

/** A variable that looks like a misspelt setting. */
export interface SuspectVariable {
  /** The name found in the environment, e.g. `REDIS_URI`. */
  readonly variable: string;
  /** The known name it is closest to, e.g. `REDIS_URL`. */
  readonly suggestion: string;
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
export function suspectVariables(env: Env): readonly SuspectVariable[] {
  const known = knownVariables();
  const knownSet = new Set(known);
  const suspects: SuspectVariable[] = [];
  for (const name of Object.keys(env).sort()) {
    if (knownSet.has(name)) continue;
    if (knownSet.has(name.toUpperCase())) {
      suspects.push({ variable: name, suggestion: name.toUpperCase() });
      continue;
    }
    if (!/^[A-Z][A-Z0-9_]*$/.test(name)) continue;
    if (SYSTEM_VARIABLES.has(name) || SYSTEM_PREFIXES.test(name)) continue;
    const suggestion = closest(name, known);
    if (suggestion !== undefined) suspects.push({ variable: name, suggestion });
  }
  return suspects;
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
