/**
 * One error type for refusals answered over HTTP (before or instead of a
 * WebSocket upgrade), so every refusal gets the same JSON body, metric and
 * log line.
 *
 * @module
 */

/** A request refused with an HTTP status. */
export class HttpError extends Error {
  /** HTTP status code, e.g. 403. */
  readonly status: number;
  /** `websocket_errors_total` label for WebSocket refusals; `undefined` for plain HTTP. */
  readonly errorType: string | undefined;
  /** Extra response headers, e.g. `Retry-After`. */
  readonly headers: Readonly<Record<string, string>>;

  /**
   * Creates the error.
   *
   * @param status HTTP status code.
   * @param message Sentence-case explanation returned to the client.
   * @param options Metric label, headers and cause.
   */
  constructor(
    status: number,
    message: string,
    options: {
      errorType?: string;
      headers?: Record<string, string>;
      cause?: unknown;
    } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "HttpError";
    this.status = status;
    this.errorType = options.errorType;
    this.headers = options.headers ?? {};
  }
}
