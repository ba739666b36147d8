/**
 * The log side of `sockeye monitor`: which lines report errors, and the last
 * few of them from a file or a stream that arrives in pieces.
 *
 * @module
 */

/**
 * Whether a log line reports an error: a JSON line at `error` or
 * `critical`, possibly behind a `docker compose logs` prefix, or a plain
 * line containing ERROR.
 *
 * @param line One line of log text.
 * @returns The line to show (the JSON part), or `undefined`.
 */
export function errorLine(line: string): string | undefined {
  const start = line.indexOf("{");
  if (start >= 0) {
    try {
      const event = JSON.parse(line.slice(start));
      if (event.level === "error" || event.level === "critical") {
        return `${event.timestamp ?? ""} ${event.color ?? ""} ${
          String(event.level).toUpperCase()
        } ${event.logger ?? ""}: ${event.message ?? ""}`.trim();
      }
      return undefined;
    } catch { /* not JSON: fall through */ }
  }
  return /\b(ERROR|CRITICAL)\b/.test(line) ? line.trim() : undefined;
}

/** Keeps the last error lines of a log text that arrives in pieces. */
export class ErrorTail {
  /** The error lines kept, oldest first. */
  readonly lines: string[] = [];
  readonly #keep: number;
  #rest = "";

  /**
   * Creates an empty tail.
   *
   * @param keep How many error lines to keep.
   */
  constructor(keep: number) {
    this.#keep = keep;
  }

  /**
   * Takes the next piece of text; complete lines are examined.
   *
   * @param text Any part of the log, split anywhere.
   */
  push(text: string): void {
    this.#rest += text;
    let nl;
    while ((nl = this.#rest.indexOf("\n")) >= 0) {
      const shown = errorLine(this.#rest.slice(0, nl));
      this.#rest = this.#rest.slice(nl + 1);
      if (shown === undefined) continue;
      this.lines.push(shown);
      if (this.lines.length > this.#keep) this.lines.shift();
    }
  }

  /**
   * Reads a stream (stdin) until it ends or `signal` aborts.
   *
   * @param stream Log bytes, UTF-8.
   * @param signal Stops the reading.
   * @returns Resolves when the stream ended or was cancelled.
   */
  async follow(
    stream: ReadableStream<Uint8Array>,
    signal: AbortSignal,
  ): Promise<void> {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener("abort", () => reader.cancel().catch(() => {}), {
      once: true,
    });
    try {
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        this.push(value);
      }
    } catch { /* cancelled */ }
  }
}
