/**
 * How a table of environment variables is read: each variable's
 * {@link SettingSpec} (valibot schema, default, documentation, secrecy), the
 * schema builders for numbers, durations and words, rules between
 * variables, and {@link SettingsSchema}, which turns an environment into
 * values or one {@link SettingsError} listing every problem. The table itself
 * is `SETTINGS` in `settings.ts`.
 *
 * @module
 */
import * as v from "valibot";
import { readTextFile } from "./platform.ts";

/**
 * A schema reading raw text into a `T`, in the Standard Schema form
 * (standardschema.dev) that valibot's schemas have; the builders below
 * return valibot schemas.
 */
export interface Schema<T> {
  /** The Standard Schema interface: vendor, version, validation, types. */
  readonly "~standard": {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (value: unknown) => unknown;
    readonly types?: { readonly input: string; readonly output: T } | undefined;
  };
}

/** A valibot schema as the builders make it. */
type Valibot<T> = v.GenericSchema<string, T>;

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
  readonly schema: Schema<T>;
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
 * Checks a {@link SettingSpec} and keeps its literal type, so a settings
 * type derived from the table knows which settings have defaults.
 *
 * @param spec The variable's description.
 * @returns `spec` unchanged.
 */
export function setting<const S extends SettingSpec>(spec: S): S {
  return spec;
}

/** The parsed value of a {@link SettingSpec}; `undefined` when it has no default. */
export type SettingValue<S> = S extends SettingSpec<infer T>
  ? S extends { readonly default: string | ((env: Env) => string) } ? T
  : T | undefined
  : never;

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
): Schema<number> {
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
 * A schema for a duration in seconds, at most {@link MAX_DURATION_S}
 * (whole seconds: its floor): a timer holds at most 2^31 − 1 ms, and a
 * longer delay fires after 1 ms instead.
 *
 * @param rule Bounds as for {@link numberSchema}; `min` defaults to 0, `max`
 *   to the timer limit.
 * @returns Raw text → seconds; the message reads e.g.
 *   `a number from 0.01 to 2147483.647`.
 */
export function secondsSchema(
  rule: Partial<NumberRule> = {},
): Schema<number> {
  const limit = rule.integer ? Math.floor(MAX_DURATION_S) : MAX_DURATION_S;
  return numberSchema({
    min: 0,
    ...rule,
    max: Math.min(rule.max ?? limit, limit),
  });
}

/**
 * A schema for one of a few words, case-insensitive.
 *
 * @param allowed The words, lowercase.
 * @returns Raw text → the lowercase word.
 */
export function choiceSchema<const T extends string>(
  allowed: readonly T[],
): Schema<T> {
  return v.pipe(
    v.string(),
    v.transform((s) => s.toLowerCase()),
    v.picklist(allowed, `one of ${allowed.join(", ")}`),
  );
}

/**
 * A schema for an on/off flag: `true`, `false`, `1` or `0`, case-insensitive.
 *
 * @returns Raw text → boolean.
 */
export function flagSchema(): Schema<boolean> {
  return v.pipe(
    choiceSchema(["true", "false", "1", "0"]) as Valibot<string>,
    v.transform((s) => s === "true" || s === "1"),
  );
}

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
  /** Every problem found, in the order of the table. */
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

/** Options for reading settings. */
export interface ParseOptions {
  /** Reads a `*_FILE` secret; reads the file system by default. */
  readonly readFile?: (path: string) => string;
}

/** What the environment holds for a table, after defaults. */
interface Resolved {
  /** Parsed values by variable name. */
  readonly values: Readonly<Record<string, unknown>>;
  /** Raw text by variable name (`undefined`: unset, no default). */
  readonly raw: Readonly<Record<string, string | undefined>>;
  /** Where each value came from. */
  readonly sources: Readonly<Record<string, SettingSource>>;
}

function clean(value: string | undefined): string | undefined {
  const trimmed = value?.trim();
  return trimmed === "" ? undefined : trimmed;
}

function shown(spec: SettingSpec, raw: string): string {
  return spec.secret ? (spec.redact ?? (() => "***"))(raw) : raw;
}

/**
 * A table of settings compiled into one valibot object schema: reads an
 * environment into values, or throws one {@link SettingsError} with every
 * problem.
 */
export class SettingsSchema<K extends string> {
  readonly #specs: readonly (readonly [K, SettingSpec])[];
  readonly #schema: v.GenericSchema<
    Record<string, unknown>,
    Record<string, unknown>
  >;

  /**
   * Compiles a table.
   *
   * @param table Setting field → its variable's spec.
   * @param checks Rules between variables.
   */
  constructor(
    table: Readonly<Record<K, SettingSpec>>,
    checks: readonly CrossCheck[] = [],
  ) {
    this.#specs = Object.entries(table) as [K, SettingSpec][];
    this.#schema = v.pipe(
      v.object(Object.fromEntries(
        this.#specs.map((
          [, spec],
        ) => [spec.env, v.optional(spec.schema as Valibot<unknown>)]),
      )),
      // A rule runs only when the variables it reads are valid on their own,
      // so it adds to the other problems instead of repeating them.
      ...checks.map((rule) =>
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
  }

  /**
   * Every variable name the table reads: each setting, and `NAME_FILE` for
   * each secret.
   *
   * @returns The names, in table order.
   */
  known(): string[] {
    return this.#specs.flatMap(([, s]) =>
      s.secret ? [s.env, `${s.env}_FILE`] : [s.env]
    );
  }

  /**
   * Reads the environment.
   *
   * @param env Variable name → value.
   * @param options How `*_FILE` secrets are read.
   * @returns Setting field → value, frozen.
   * @throws {SettingsError} Listing every variable whose value is invalid.
   */
  parse(env: Env, options: ParseOptions = {}): Readonly<Record<K, unknown>> {
    const { values } = this.#resolve(env, options);
    const out = {} as Record<K, unknown>;
    for (const [key, spec] of this.#specs) out[key] = values[spec.env];
    return Object.freeze(out);
  }

  /**
   * Reads the environment for display.
   *
   * @param env Variable name → value.
   * @param options How `*_FILE` secrets are read.
   * @returns One entry per variable, in table order; secrets redacted.
   * @throws {SettingsError} Listing every variable whose value is invalid.
   */
  describe(env: Env, options: ParseOptions = {}): EffectiveSetting[] {
    const { values, raw, sources } = this.#resolve(env, options);
    return this.#specs.map(([, spec]) => {
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

  /** Raw text per variable (files read, defaults applied), then the schema. */
  #resolve(env: Env, options: ParseOptions): Resolved {
    const readFile = options.readFile ?? readTextFile;
    const problems: SettingsProblem[] = [];
    const raw: Record<string, string | undefined> = {};
    const sources: Record<string, SettingSource> = {};
    for (const [, spec] of this.#specs) {
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
          // `echo secret > file` leaves a newline no secret ends with.
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
          const reason = (error as Error).message.replace(/ \(os error.*/, "");
          problems.push({
            variable: fileVar,
            message: `Cannot read ${fileVar} "${path}": ${reason}`,
          });
        }
      }
      if (value !== undefined && spec.ignore?.(value, env)) value = undefined;
      if (value === undefined) {
        source = "default";
        if (spec.default !== undefined) {
          value = typeof spec.default === "string"
            ? spec.default
            : spec.default(env);
        }
      }
      raw[spec.env] = value;
      sources[spec.env] = source;
    }

    const result = v.safeParse(this.#schema, raw);
    const seen = new Set(problems.map((p) => p.variable));
    for (const issue of result.issues ?? []) {
      const variable = String(issue.path?.[0]?.key ?? "");
      if (seen.has(variable)) continue; // one problem per variable
      seen.add(variable);
      const spec = this.#specs.find(([, s]) => s.env === variable)?.[1];
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
        this.#specs.findIndex(([, s]) =>
          p.variable === s.env || p.variable === `${s.env}_FILE`
        );
      throw new SettingsError(problems.sort((a, b) => order(a) - order(b)));
    }
    return { values: result.output as Record<string, unknown>, raw, sources };
  }
}
