/**
 * "Did you mean …?": the nearest known name to a misspelt one, for unknown
 * command-line options and commands, and the environment variables that
 * look like misspelt settings.
 *
 * @module
 */

/**
 * Counts the edits between two strings: insertions, deletions,
 * substitutions and transpositions of two neighbours (the optimal string
 * alignment form of the Damerau–Levenshtein distance), so `PROT` is one
 * edit from `PORT`.
 *
 * @param a One string.
 * @param b The other.
 * @returns The number of edits, 0 when equal.
 *
 * @example
 * ```ts
 * editDistance("REDIS_URI", "REDIS_URL"); // 1
 * editDistance("--prot", "--port"); // 1
 * ```
 */
export function editDistance(a: string, b: string): number {
  // Three rolling rows: the transposition looks two rows back.
  let before = new Array<number>(b.length + 1).fill(0);
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  let current = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    current[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(
        previous[j]! + 1,
        current[j - 1]! + 1,
        previous[j - 1]! + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, before[j - 2]! + 1);
      }
      current[j] = d;
    }
    [before, previous, current] = [previous, current, before];
  }
  return previous[b.length]!;
}

/**
 * Finds the known name nearest to `name`.
 *
 * @param name What was given, e.g. `--prot`.
 * @param candidates The names that exist.
 * @param maxDistance Most edits still taken for a typo; by default 2, or 1
 *   for names of four characters or fewer (where two edits make another word).
 * @returns The nearest candidate within `maxDistance` (the first on a tie),
 *   or `undefined` when none is that close.
 */
export function closest(
  name: string,
  candidates: Iterable<string>,
  maxDistance?: number,
): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const limit = maxDistance ??
      (Math.min(name.length, candidate.length) <= 4 ? 1 : 2);
    const d = editDistance(name, candidate);
    if (d <= limit && d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
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

/** A name that looks like a misspelt known one. */
export interface Misspelt {
  /** The name found, e.g. `REDIS_URI`. */
  readonly variable: string;
  /** The known name it is closest to, e.g. `REDIS_URL`. */
  readonly suggestion: string;
}

/**
 * Finds environment variable names that are probably misspelt known ones:
 * not known, written like ours (capitals, digits and underscores), and
 * within {@link closest}'s reach of a known name, or a known name in other
 * case. Common system variables are never suspects.
 *
 * @param names Variable names found.
 * @param known The names that exist.
 * @returns The suspects, sorted by name.
 */
export function misspelt(
  names: Iterable<string>,
  known: readonly string[],
): Misspelt[] {
  const knownSet = new Set(known);
  const suspects: Misspelt[] = [];
  for (const name of [...names].sort()) {
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
