/**
 * A reader for the Prometheus text exposition format 0.0.4, enough for the
 * monitor (and the tests) to read `/metrics`.
 *
 * @module
 */

/** One sample line. */
export interface Sample {
  /** Sample name, e.g. `websocket_messages_total`. */
  readonly name: string;
  /** Label name → value. */
  readonly labels: Readonly<Record<string, string>>;
  /** The value (`NaN`, `+Inf` parsed as numbers). */
  readonly value: number;
}

/**
 * Parses a `/metrics` body.
 *
 * @param text Exposition text.
 * @returns Family types from `# TYPE` lines, and every sample in order.
 * @throws {SyntaxError} On a line that is neither a comment nor a sample.
 */
export function parsePrometheusText(text: string): {
  types: Map<string, string>;
  samples: Sample[];
} {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      types.set(name!, type!);
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)/);
    if (!m) throw new SyntaxError(`Cannot parse metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (m[3] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]!] = pair[2]!;
    }
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { types, samples };
}

/**
 * A stable key for a sample: its name and sorted labels.
 *
 * @param sample A parsed sample.
 * @returns e.g. `websocket_messages_total{color="blue",type="sent"}`.
 */
export function seriesKey(sample: Sample): string {
  const labels = Object.entries(sample.labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${v}"`).join(",");
  return labels ? `${sample.name}{${labels}}` : sample.name;
}
