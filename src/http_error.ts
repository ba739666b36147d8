/**
 * One error type for plain HTTP refusals (e.g. `/metrics` without its token),
 * so each gets the same JSON body and log line. WebSocket upgrade refusals
 * are causes in `sessions/refusals.ts`, rendered by the upgrade route.
 *
 * @module
 */

/** A request refused with an HTTP status. */
export class HttpError extends Error {
  /** HTTP status code, e.g. 401. */
  readonly status: number;
  /** Extra response headers, e.g. `WWW-Authenticate`. */
  readonly headers: Readonly<Record<string, string>>;

  /**
   * Creates the error.
   *
   * @param status HTTP status code.
   * @param message Sentence-case explanation returned to the client.
   * @param options Headers and cause.
   */
  constructor(
    status: number,
    message: string,
    options: { headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "HttpError";
    this.status = status;
    this.headers = options.headers ?? {};
  }
}
