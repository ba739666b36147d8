/**
 * Logging: JSON Lines on stdout through LogTape, one event per line.
 *
 * Every line carries `timestamp` (ISO-8601 UTC), `level` (`debug` …
 * `critical`), `logger`, `message` and `color`; context such as
 * `request_id`, `connection_id` and `session_uuid` comes from
 * `withContext()` or `logger.with()`, and `trace_id`/`span_id` from the
 * active OpenTelemetry span. Secrets and personal data are redacted by
 * field name and by pattern (`@logtape/redaction`).
 *
 * @module
 */
import { AsyncLocalStorage } from "node:async_hooks";
import {
  configureSync,
  dispose,
  getLogger,
  type Logger,
  type LogLevel,
  type LogRecord,
  type TextFormatter,
} from "@logtape/logtape";
import {
  CREDIT_CARD_NUMBER_PATTERN,
  EMAIL_ADDRESS_PATTERN,
  JWT_PATTERN,
  redactByField,
  redactByPattern,
  type RedactionPattern,
} from "@logtape/redaction";
import { type SpanContext, trace } from "@opentelemetry/api";
import type { LogFormat, LogLevelName } from "../settings.ts";
import { stdio } from "../platform.ts";

/** Root category of every sockeye logger. */
export const ROOT = "sockeye";

/**
 * Returns a logger under the `sockeye` category.
 *
 * @param name Sub-category, e.g. `"ws"` → logger `sockeye.ws`.
 * @returns A LogTape logger (a no-op until {@link setupLogging} runs).
 */
export function logger(name: string): Logger {
  return getLogger([ROOT, name]);
}

const TO_CONTRACT: Record<LogLevel, LogLevelName> = {
  trace: "debug",
  debug: "debug",
  info: "info",
  warning: "warning",
  error: "error",
  fatal: "critical",
};

const FROM_CONTRACT: Record<LogLevelName, LogLevel> = {
  debug: "debug",
  info: "info",
  warning: "warning",
  error: "error",
  critical: "fatal",
};

/**
 * Field names whose values are replaced by `[REDACTED]`: names ending in
 * pass, password, passphrase or passcode, and names containing secret,
 * token, api key, cookie, e-mail or card, plus `authorization`. One
 * expression, so that each field name costs one test.
 */
export const REDACTED_FIELDS: RegExp[] = [
  /pass(?:word|phrase|code)?$|secret|token|^authorization$|api_?key|cookie|e_?mail|card/i,
];

function plain(value: unknown): unknown {
  if (value instanceof Error) {
    return { type: value.name, message: value.message };
  }
  return value;
}

/**
 * The password in a URL's user information, e.g. in a `redis://` URL inside
 * an error message: `redis://user:secret@host:6379/0` →
 * `redis://user:***@host:6379/0`. The host stays readable. A password is
 * taken up to the last `@` before the path, as a raw `@` in it is common.
 */
const URL_PASSWORD_PATTERN: RedactionPattern = {
  pattern: /(?<=\b[a-z][a-z0-9+.-]*):\/\/([^\s:/?#@]*):[^\s/?#]+@/gi,
  replacement: "://$1:***@",
};

// Names whose values are secrets: password, passwd, passphrase, secret,
// token, apikey and credentials also as the end of a longer name
// (PGPASSWORD, access_token, client_secret); pass, pwd, api_key, key, auth
// and sig(nature) alone or after a separator (db_pass, X-Api-Key).
const SECRET_NAME = "(?:[a-z0-9]+[_.-])*(?:[a-z0-9]*(?:password|passwd|" +
  "passphrase|secret|token|apikey|credentials?)|pass|pwd|api[_-]?key|key|" +
  "auth|signature|sig)";

/**
 * A secret written as `name=value` (query strings, configuration) or
 * `"name": value` (JSON), e.g. `?token=abc&x=1`, `password=hunter2`,
 * `"api_key": "k"`: the name stays, the value becomes `[REDACTED]`. A value
 * ends at `&`, `;`, `,`, whitespace, a quote or a bracket; a quoted value is
 * taken whole. (The match starts at the `=` or `:` and looks behind for the
 * name: a scan that stops only at those characters costs a quarter of one
 * that tries a name at every position.)
 */
const SECRET_PARAMETER_PATTERN: RedactionPattern = {
  pattern: new RegExp(
    `([=:])(?<=(?<![a-z0-9/])${SECRET_NAME}\\s*=|` +
      `(?<![a-z0-9/])"${SECRET_NAME}"\\s*:)(\\s*)` +
      `(?:"[^"]*"|'[^']*'|[^\\s&;,"'<>()\\[\\]{}]+)`,
    "gi",
  ),
  replacement: "$1$2[REDACTED]",
};

/**
 * HTTP credentials after an auth scheme (RFC 9110 §11.4, token68), e.g.
 * `Authorization: Bearer abc.def` or `Basic dXNlcjpwYXNz`: the scheme stays.
 * The scheme must be capitalised as in a header, so that prose such as "a
 * bearer token" is left alone.
 */
const AUTH_CREDENTIALS_PATTERN: RedactionPattern = {
  pattern: /\b(Bearer|BEARER|Basic|BASIC)\s+[A-Za-z0-9._~+/-]+=*/g,
  replacement: "$1 [REDACTED]",
};

/**
 * E-mail addresses, except inside a URL's user information, so that the host
 * of `redis://user:***@10.0.0.5:6379` (password masked above) stays readable.
 */
const EMAIL_OUTSIDE_URL_PATTERN: RedactionPattern = {
  pattern: EMAIL_ADDRESS_PATTERN.pattern,
  replacement(match: string, ...rest: readonly unknown[]): string {
    // No capture groups: the offset and the whole string come last.
    const offset = rest[rest.length - 2] as number;
    const text = rest[rest.length - 1] as string;
    const scheme = text.lastIndexOf("://", offset);
    const inUserInfo = scheme >= 0 &&
      !/[\s/?#@]/.test(text.slice(scheme + 3, offset));
    return inUserInfo ? match : EMAIL_ADDRESS_PATTERN.replacement as string;
  },
};

/**
 * Patterns masked in every string value, in this order: URL passwords,
 * `name=value` secrets, `Bearer`/`Basic` credentials, e-mail addresses, card
 * numbers, JWTs.
 */
export const REDACTION_PATTERNS: readonly RedactionPattern[] = [
  URL_PASSWORD_PATTERN,
  SECRET_PARAMETER_PATTERN,
  AUTH_CREDENTIALS_PATTERN,
  EMAIL_OUTSIDE_URL_PATTERN,
  CREDIT_CARD_NUMBER_PATTERN,
  JWT_PATTERN,
];

/**
 * What every match of {@link REDACTION_PATTERNS} contains, in two scans: `=`
 * or a quoted name's `":` (name=value secrets), `@` (URL passwords, e-mail
 * addresses), `eyJ` (JWTs), an auth scheme; then four digits before a space
 * or hyphen or 13 digits in a row (card numbers). A string without any of
 * them cannot match a pattern, so the six scans are skipped: most values
 * (messages, ids, user agents, addresses, close reasons) have none. Two
 * expressions, because one alternation of all of them tries every
 * alternative at every position: a third of the time on a UUID, and on a
 * browser's user agent, full of digits.
 */
const MAY_MATCH_TEXT = /[=@]|"\s*:|eyJ|B(?:earer|EARER|asic|ASIC)/;
/** The card numbers' part of the check above. */
const MAY_MATCH_DIGITS = /\d{4}[ -]|\d{13}/;

/**
 * An RFC 9562 UUID's text form: the service's connection, session and
 * request ids. It cannot hold a secret, and left to the card pattern an
 * all-digit one could be mistaken for a card number.
 */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether a string is a UUID: the ids, two or three of every line. */
function isUuid(text: string): boolean {
  return text.length === 36 && UUID.test(text);
}

/**
 * Masks the secrets and personal data in a string: {@link REDACTION_PATTERNS} in
 * order, after a one-pass check that any of them can match.
 *
 * @param text A log value or message.
 * @returns The text with each match replaced, or `text` itself.
 */
export function redactText(text: string): string {
  if (
    isUuid(text) ||
    !MAY_MATCH_TEXT.test(text) && !MAY_MATCH_DIGITS.test(text)
  ) return text;
  for (const { pattern, replacement } of REDACTION_PATTERNS) {
    text = typeof replacement === "string"
      ? text.replaceAll(pattern, replacement)
      : text.replaceAll(pattern, replacement);
  }
  return text;
}

/**
 * Builds one log event as a flat object with the contract's fields, string
 * values passed through the redaction patterns (numbers are left alone, so a
 * long fraction is never mistaken for a card number).
 *
 * @param color Deployment color stamped on every event.
 * @returns Record → event object.
 */
export function eventBuilder(
  color: string,
): (record: LogRecord) => Record<string, unknown> {
  const redactValue = valueRedactor();
  const categories = categoryNames();
  return (record: LogRecord): Record<string, unknown> => {
    // The fields this builder writes itself (timestamp, level, logger,
    // color) cannot hold personal data and are not scanned.
    const line: Record<string, unknown> = {
      timestamp: new Date(record.timestamp).toISOString(),
      level: TO_CONTRACT[record.level],
      logger: categories(record.category),
      message: redactText(renderMessage(record)),
      color,
    };
    addTraceContext(line, record);
    const properties = record.properties;
    for (const key in properties) {
      if (!(key in line)) line[key] = redactValue(plain(properties[key]));
    }
    return line;
  };
}

/**
 * Builds the redaction of one field's value: a string through
 * {@link redactText}; an object (an error's type and message, nested
 * fields) through the library's traversal, which bounds depth and breaks
 * cycles; anything else as it is.
 */
function valueRedactor(): (value: unknown) => unknown {
  const scanObject = redactByPattern(
    (record: LogRecord) => [record.properties],
    REDACTION_PATTERNS,
  );
  return (value: unknown): unknown => {
    if (typeof value === "string") return redactText(value);
    if (typeof value !== "object" || value === null) return value;
    return scanObject({ properties: value } as unknown as LogRecord)[0];
  };
}

/** Builds the cached `sockeye.ws` form of a logger's category. */
function categoryNames(): (category: readonly string[]) => string {
  const names = new Map<readonly string[], string>();
  return (category) => {
    let name = names.get(category);
    if (name === undefined) {
      name = category.join(".");
      // Loggers are few and long-lived; the bound only guards a misuse.
      if (names.size < 256) names.set(category, name);
    }
    return name;
  };
}

/** The last of the years whose ISO form has four digits (9999-12-31). */
const LAST_FOUR_DIGIT_YEAR_MS = 253_402_300_799_999;

/**
 * Builds a `Date#toISOString` that formats each second once: lines come
 * hundreds to the second in a reconnect storm, and the full formatting
 * costs a tenth of a line. Other times (fractions of a millisecond, years
 * outside 1970–9999) are formatted in full.
 *
 * @returns Milliseconds since the Unix epoch → `2026-11-23T10:00:00.123Z`.
 */
export function isoTimestamps(): (ms: number) => string {
  let second = -1;
  let prefix = "";
  return (ms) => {
    if (!Number.isInteger(ms) || ms < 0 || ms > LAST_FOUR_DIGIT_YEAR_MS) {
      return new Date(ms).toISOString();
    }
    const fraction = ms % 1000;
    const s = ms - fraction;
    if (s !== second) {
      second = s;
      prefix = new Date(s).toISOString().slice(0, 20);
    }
    return prefix + (fraction < 10 ? "00" : fraction < 100 ? "0" : "") +
      fraction + "Z";
  };
}

/** Field names already tested against {@link REDACTED_FIELDS}. */
const secretNames = new Map<string, boolean>();

/** Whether a field or placeholder name matches {@link REDACTED_FIELDS}. */
function isSecretName(name: string): boolean {
  let secret = secretNames.get(name);
  if (secret === undefined) {
    secret = REDACTED_FIELDS.some((pattern) => pattern.test(name));
    // Names come from the code, so they are few; the bound guards a misuse.
    if (secretNames.size < 4096) secretNames.set(name, secret);
  }
  return secret;
}

/** Message templates already searched for secret or wildcard placeholders. */
const templatesWithSecrets = new Map<string, boolean>();

/**
 * Whether field redaction would leave a record as it is: no property named
 * like a secret, no property holding an object (whose keys it would
 * search), and a message template without a secret or `{*}` placeholder.
 * Such records, the connection lines among them, skip the library's
 * traversal and copy; any other goes through it.
 *
 * @param record A log record.
 * @returns `true` when `redactByField` would change nothing.
 */
export function hasNoSecretField(record: LogRecord): boolean {
  const template = record.rawMessage;
  if (typeof template !== "string") return false;
  let secret = templatesWithSecrets.get(template);
  if (secret === undefined) {
    secret = [...template.matchAll(/\{([^{}]*)\}/g)].some(([, name]) =>
      name!.trim() === "*" || isSecretName(name!.trim())
    );
    if (templatesWithSecrets.size < 4096) {
      templatesWithSecrets.set(template, secret);
    }
  }
  if (secret) return false;
  const properties = record.properties;
  for (const key in properties) {
    const value = properties[key];
    if (typeof value === "object" && value !== null) return false;
    if (isSecretName(key)) return false;
  }
  return true;
}

/**
 * Builds the JSON Lines formatter: the object {@link eventBuilder} makes,
 * serialised as `JSON.stringify` would, one field at a time. Every
 * connection logs two lines, and building the object to serialise it
 * doubled the cost of a line.
 *
 * @param color Deployment color stamped on every line.
 * @returns A LogTape text formatter producing one JSON object and `\n`.
 */
export function jsonFormatter(color: string): TextFormatter {
  const redactValue = valueRedactor();
  const categories = categoryNames();
  const timestamp = isoTimestamps();
  const colorField = `,"color":${JSON.stringify(color)}`;
  /** `,"name":` of each field name seen, bounded like the other caches. */
  const keys = new Map<string, string>();
  return (record: LogRecord): string => {
    let out = `{"timestamp":"${timestamp(record.timestamp)}","level":"${
      TO_CONTRACT[record.level]
    }","logger":${JSON.stringify(categories(record.category))},"message":${
      JSON.stringify(redactText(renderMessage(record)))
    }${colorField}`;
    const properties = record.properties;
    const trace = traceFields(record);
    if (trace !== undefined) out += trace;
    for (const key in properties) {
      if (
        FIXED_FIELDS.has(key) ||
        trace !== undefined && (key === "trace_id" || key === "span_id")
      ) continue;
      const value = jsonValue(properties[key], redactValue);
      if (value === undefined) continue;
      let name = keys.get(key);
      if (name === undefined) {
        name = `,${JSON.stringify(key)}:`;
        if (keys.size < 4096) keys.set(key, name);
      }
      out += name + value;
    }
    return out + "}\n";
  };
}

/** The fields every line starts with; a property of the same name loses. */
const FIXED_FIELDS: ReadonlySet<string> = new Set([
  "timestamp",
  "level",
  "logger",
  "message",
  "color",
]);

/**
 * One field's value in JSON, redacted; `undefined` for a value
 * `JSON.stringify` leaves out of an object (undefined, a function, a
 * symbol).
 */
function jsonValue(
  value: unknown,
  redactValue: (value: unknown) => unknown,
): string | undefined {
  switch (typeof value) {
    case "string":
      // A UUID needs neither redaction nor escaping.
      return isUuid(value) ? `"${value}"` : JSON.stringify(redactText(value));
    case "number":
      return Number.isFinite(value) ? String(value) : "null";
    case "boolean":
      return value ? "true" : "false";
    case "undefined":
    case "function":
    case "symbol":
      return undefined;
    default:
      return JSON.stringify(redactValue(plain(value)));
  }
}

/**
 * Builds the human-readable formatter for `LOG_FORMAT=pretty`.
 *
 * @param color Deployment color shown on every line.
 * @returns A formatter writing `time LEVEL [color] logger message key=value …`.
 */
export function prettyFormatter(color: string): TextFormatter {
  const build = eventBuilder(color);
  return (record: LogRecord): string => {
    const { timestamp, level, logger, message, color: _, ...fields } = build(
      record,
    );
    const rest = Object.entries(fields)
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
    return `${String(timestamp).slice(11, 23)} ${
      String(level).toUpperCase().padEnd(8)
    } [${color}] ${logger} ${message}${rest ? " " + rest : ""}\n`;
  };
}

function renderMessage(record: LogRecord): string {
  let out = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    out += i % 2 === 0 || typeof part === "string"
      ? String(part)
      : JSON.stringify(plain(part));
  }
  return out;
}

function addTraceContext(
  line: Record<string, unknown>,
  record: LogRecord,
): void {
  const ctx = activeTraceIds(record);
  if (ctx === undefined) return;
  line.trace_id = ctx.traceId;
  line.span_id = ctx.spanId;
}

/** `,"trace_id":…,"span_id":…` for {@link activeTraceIds}, if any. */
function traceFields(record: LogRecord): string | undefined {
  const ctx = activeTraceIds(record);
  return ctx === undefined
    ? undefined
    : `,"trace_id":${JSON.stringify(ctx.traceId)},"span_id":${
      JSON.stringify(ctx.spanId)
    }`;
}

/**
 * The active span's ids, for a record that names no trace of its own.
 */
function activeTraceIds(record: LogRecord): SpanContext | undefined {
  if (record.properties.trace_id !== undefined) return undefined;
  const span = trace.getActiveSpan();
  if (span === undefined) return undefined;
  const ctx = span.spanContext();
  if (ctx.traceId === "00000000000000000000000000000000") return undefined;
  return ctx;
}

/** Options for {@link setupLogging}. */
export interface LoggingOptions {
  /** Lowest level written. */
  readonly level: LogLevelName;
  /** `json` (default) or `pretty`. */
  readonly format: LogFormat;
  /** Deployment color stamped on every line. */
  readonly color: string;
  /**
   * Writes encoded lines (one or more, each ending in `\n`); stdout by
   * default. The bytes are only valid during the call: copy them to keep
   * them.
   */
  readonly write?: (bytes: Uint8Array) => void;
}

/**
 * Level flags the frame path reads before logging at debug, and the
 * connection lines before logging at info: a property load instead of a
 * call into LogTape. Kept in step with the level in force by
 * {@link setupLogging} and {@link setLogLevel}.
 */
export const levelFlags: { debug: boolean; info: boolean } = {
  debug: false,
  info: true,
};

/**
 * Logs one line with every field given, through LogTape's record API
 * (`Logger.emit`): the same filters, sinks, redaction and format as any
 * line, without building a record whose message and merged properties are
 * worked out lazily. For the lines every connection logs (a reconnect storm
 * writes two per socket); call it only when the level lets the line through
 * (see {@link levelFlags}).
 *
 * @param log The logger whose category the line takes.
 * @param level The line's level.
 * @param message The message, without placeholders.
 * @param properties Every field of the line.
 */
export function emitLine(
  log: Logger,
  level: LogLevel,
  message: string,
  properties: Record<string, unknown>,
): void {
  // With its category the record goes to the logger's sinks as it is.
  log.emit({
    category: log.category,
    level,
    timestamp: Date.now(),
    message: [message],
    rawMessage: message,
    properties,
  } as LogRecord);
}

/** What {@link setLogLevel} reconfigures with: the sink and context store. */
let installed:
  | {
    sink: (record: LogRecord) => void;
    storage: AsyncLocalStorage<Record<string, unknown>>;
  }
  | undefined;
let current: LogLevelName = "info";

/** Levels from the most to the least verbose, for comparisons. */
const ORDER: readonly LogLevelName[] = [
  "debug",
  "info",
  "warning",
  "error",
  "critical",
];

/**
 * Applies a level to every sockeye logger at once, synchronously, so no
 * line logged around the change is lost or written twice.
 */
function apply(level: LogLevelName): void {
  current = level;
  levelFlags.debug = level === "debug";
  levelFlags.info = ORDER.indexOf(level) <= ORDER.indexOf("info");
  if (installed === undefined) return;
  configureSync({
    reset: true,
    contextLocalStorage: installed.storage,
    sinks: { stdout: installed.sink },
    loggers: [
      {
        category: [ROOT],
        sinks: ["stdout"],
        lowestLevel: FROM_CONTRACT[level],
      },
      // Operator actions on the admin port are an audit trail: written at
      // info whatever the level, so raising it to `error` is itself logged.
      {
        category: [ROOT, AUDIT],
        sinks: ["stdout"],
        parentSinks: "override",
        lowestLevel: FROM_CONTRACT[
          ORDER.indexOf(level) < ORDER.indexOf("info") ? level : "info"
        ],
      },
      // LogTape reports its own sink errors here; keep them visible.
      {
        category: ["logtape", "meta"],
        sinks: ["stdout"],
        lowestLevel: "warning",
      },
    ],
  });
}

/** Sub-category of the audit logger (`sockeye.admin`). */
export const AUDIT = "admin";

/**
 * Configures LogTape once for the process: redacting stdout sink, level,
 * implicit context through `AsyncLocalStorage`.
 *
 * @param options Level, format and color.
 * @returns Resolves once logging is configured.
 */
export function setupLogging(options: LoggingOptions): Promise<void> {
  const formatter = options.format === "pretty"
    ? prettyFormatter(options.color)
    : jsonFormatter(options.color);
  const encoder = new TextEncoder();
  const write = options.write ?? stdio.writeStdoutSync;
  // The lines of one turn of the event loop go out in one synchronous write
  // at the turn's end (a microtask): a reconnect storm logs two lines per
  // socket, and a write per line cost a third of formatting it. Nothing
  // waits past the turn, so a line is on stdout before the next I/O event;
  // a warning or worse, an uncaught error and `flushLogging` write at once.
  let pending = "";
  // Every write encodes into one buffer (a turn's lines fit: at most three
  // bytes per UTF-16 unit) rather than a new array per turn.
  const buffer = new Uint8Array(3 * (MAX_PENDING + LINE_ROOM));
  const flush = (): void => {
    if (pending === "") return;
    const text = pending;
    pending = "";
    if (3 * text.length > buffer.length) write(encoder.encode(text));
    else write(buffer.subarray(0, encoder.encodeInto(text, buffer).written));
  };
  const lines = (record: LogRecord): void => {
    if (pending === "") queueMicrotask(flush);
    pending += formatter(record);
    if (!BUFFERED_LEVELS.has(record.level) || pending.length > MAX_PENDING) {
      flush();
    }
  };
  const byField = redactByField(
    Object.assign(lines, { [Symbol.dispose]: flush }),
    { fieldPatterns: REDACTED_FIELDS, action: () => "[REDACTED]" },
  );
  const sink = Object.assign(
    (record: LogRecord) =>
      hasNoSecretField(record) ? lines(record) : byField(record),
    {
      [Symbol.dispose]: flush,
      // LogTape copies a record's properties before handing it to a sink
      // that may keep it, unless the sink is marked as done with it on
      // return (this registered symbol, what its own `markSinkAsImmediate`
      // sets). This one formats the record before returning.
      [Symbol.for("LogTape.sinkSnapshotPolicy.immediate")]: true,
    },
  );
  if (installed === undefined) {
    // Both run before the runtime reports the error and exits.
    globalThis.addEventListener("error", () => flushPending());
    globalThis.addEventListener("unhandledrejection", () => flushPending());
  }
  flushPending();
  flushPending = flush;
  installed = { sink, storage: new AsyncLocalStorage() };
  apply(options.level);
  return Promise.resolve();
}

/**
 * The lowest level written now.
 *
 * @returns `LOG_LEVEL`, or the level the admin port set since.
 */
export function logLevel(): LogLevelName {
  return current;
}

/**
 * Changes the lowest level written by every sockeye logger at once, while
 * the process runs. Nothing is dropped: the change is synchronous.
 *
 * @param level The new level.
 * @returns The level in force before.
 */
export function setLogLevel(level: LogLevelName): LogLevelName {
  const previous = current;
  apply(level);
  return previous;
}

/**
 * Flushes and closes the log sink; call once before the process exits.
 *
 * @returns Resolves when every pending line is written.
 */
export async function flushLogging(): Promise<void> {
  flushPending();
  await dispose();
}

/** Writes the lines waiting for the end of this turn of the event loop. */
let flushPending = (): void => {};

/** Levels whose lines may wait for the end of the turn. */
const BUFFERED_LEVELS: ReadonlySet<LogLevel> = new Set([
  "trace",
  "debug",
  "info",
]);

/** Characters of log lines held for one write at most (about 64 KiB). */
const MAX_PENDING = 65_536;

/**
 * Characters one line may add past {@link MAX_PENDING} and still be encoded
 * into the shared buffer; a longer one is encoded on its own.
 */
const LINE_ROOM = 8_192;
