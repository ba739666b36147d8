/**
 * The protocol's server frames, byte for byte.
 *
 * Existing clients compare strings, so frames are written as Python's
 * `json.dumps` writes them: a space after each `:` and `,`. Session ids match
 * `^[A-Za-z0-9_-]{1,64}$`, so they never need escaping.
 *
 * @module
 */

/**
 * The reply to a text frame.
 *
 * @param count The session's count after this frame.
 * @returns `{"count": <count>}`
 */
export function countFrame(count: number): string {
  return '{"count": ' + count + "}";
}

/**
 * The heartbeat.
 *
 * @param date The moment to report.
 * @returns `{"ts": "<ISO-8601 UTC with milliseconds and Z>"}`
 */
export function heartbeatFrame(date: Date): string {
  return '{"ts": "' + date.toISOString() + '"}';
}

/**
 * The first frame for clients that asked for the `sockeye.v1` subprotocol.
 *
 * @param sessionUuid The session id.
 * @param count The session's count so far.
 * @param resumed Whether the session existed before this connection.
 * @returns `{"type": "session", "session_uuid": "<id>", "count": <n>, "resumed": <bool>}`
 */
export function sessionFrame(
  sessionUuid: string,
  count: number,
  resumed: boolean,
): string {
  return '{"type": "session", "session_uuid": "' + sessionUuid +
    '", "count": ' + count + ', "resumed": ' + resumed + "}";
}

/**
 * The last frame before a drain closes the socket with 1001.
 *
 * @param total The session's count.
 * @returns `{"bye": true, "total": <total>}`
 */
export function byeFrame(total: number): string {
  return '{"bye": true, "total": ' + total + "}";
}

/** The answer to a frame that could not be counted durably (store down). */
export const UNAVAILABLE_FRAME = '{"error": "unavailable", "retry": true}';

/** The subprotocol that asks for the session frame on open. */
export const SUBPROTOCOL = "sockeye.v1";
