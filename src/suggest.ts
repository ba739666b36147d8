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
 * With `max`, only cells within `max` of the diagonal are computed and the
 * count stops as soon as it must exceed `max` (Ukkonen's cut-off): checking
 * every environment variable at start stays a few thousand steps, too few
 * to wake the optimising compiler (whose memory would stay in the RSS).
 *
 * @param a One string.
 * @param b The other.
 * @param max Stop counting above this; unbounded by default.
 * @returns The number of edits, 0 when equal; `max + 1` when over `max`.
 *
 * @example
 * ```ts
 * editDistance("REDIS_URI", "REDIS_URL"); // 1
 * editDistance("--prot", "--port"); // 1
 * editDistance("PATH", "HEARTBEAT_INTERVAL_S", 2); // 3
 * ```
 */
export function editDistance(a: string, b: string, max = Infinity): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  const width = b.length + 1;
  // Three rolling rows: the transposition looks two rows back. Cells outside
  // the band stay above `max`.
  const over = Math.min(max + 1, a.length + b.length + 1);
  let before = new Array<number>(width).fill(over);
  let previous = new Array<number>(width).fill(over);
  let current = new Array<number>(width).fill(over);
  for (let j = 0; j < width && j <= max; j++) previous[j] = j;
  for (let i = 1; i <= a.length; i++) {
    const from = Math.max(1, i - max);
    const to = Math.min(b.length, i + max);
    current.fill(over);
    if (i <= max) current[0] = i;
    let rowMin = current[0]!;
    for (let j = from; j <= to; j++) {
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
      if (d < rowMin) rowMin = d;
    }
    if (rowMin > max) return max + 1;
    const spare = before;
    before = previous;
    previous = current;
    current = spare;
  }
  return Math.min(previous[b.length]!, over);
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
    const d = editDistance(name, candidate, limit);
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
