/**
 * The smoke checks of `sockeye promote`: a WebSocket round trip and a resume
 * compared byte for byte ({@link smokeTest}), and a GET with a time limit for
 * the probes ({@link get}).
 *
 * @module
 */

/** A step that did not hold; its message says what was seen. */
export class StepFailed extends Error {}

/**
 * `http://h:p/` → `ws://h:p` (`https` → `wss`).
 *
 * @param url An `http://` or `https://` base URL.
 * @returns The WebSocket base URL, without a trailing slash.
 */
export function wsBase(url: string): string {
  return url.replace(/^http/, "ws").replace(/\/+$/, "");
}

/**
 * A base URL without its trailing slashes.
 *
 * @param url A base URL.
 * @returns `url` with trailing `/` removed.
 */
export function httpBase(url: string): string {
  return url.replace(/\/+$/, "");
}

/**
 * A frame or body cut short for a message.
 *
 * @param frame The text seen.
 * @returns Its first 120 characters, with `…` when cut.
 */
export function shown(frame: string): string {
  return frame.length > 120 ? `${frame.slice(0, 120)}…` : frame;
}

/** Reads a WebSocket's text frames in order, heartbeats left out. */
class Frames {
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  #queue: string[] = [];
  #wake: (() => void) | undefined;
  #isClosed = false;

  constructor(url: string, protocol?: string) {
    this.ws = protocol ? new WebSocket(url, protocol) : new WebSocket(url);
    const opened = Promise.withResolvers<void>();
    const closed = Promise.withResolvers<CloseEvent>();
    this.opened = opened.promise;
    this.closed = closed.promise;
    this.opened.catch(() => {});
    this.ws.onopen = () => opened.resolve();
    this.ws.onerror = () =>
      opened.reject(new StepFailed(`cannot open a WebSocket to ${url}`));
    this.ws.onmessage = (e) => {
      const text = typeof e.data === "string" ? e.data : "<binary frame>";
      if (text.startsWith('{"ts": ')) return;
      this.#queue.push(text);
      this.#wake?.();
    };
    this.ws.onclose = (e) => {
      this.#isClosed = true;
      closed.resolve(e);
      opened.reject(new StepFailed(`${url} closed with ${e.code}`));
      this.#wake?.();
    };
  }

  /** The next frame, or a failure naming what happened instead. */
  async next(deadline: number): Promise<string> {
    while (true) {
      const frame = this.#queue.shift();
      if (frame !== undefined) return frame;
      if (this.#isClosed) {
        throw new StepFailed("the socket closed before the answer");
      }
      const left = deadline - performance.now();
      if (left <= 0) throw new StepFailed("no answer in time");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  /** Closes with 1000 and waits for the handshake (or the deadline). */
  async close(deadline: number): Promise<void> {
    if (this.ws.readyState === WebSocket.CONNECTING) {
      await this.opened.catch(() => {});
    }
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.closed,
      new Promise((r) => {
        timer = setTimeout(r, Math.max(0, deadline - performance.now()));
      }),
    ]);
    clearTimeout(timer);
  }
}

async function expectFrame(
  frames: Frames,
  expected: string,
  deadline: number,
): Promise<void> {
  let got: string;
  try {
    got = await frames.next(deadline);
  } catch (error) {
    throw new StepFailed(`expected ${expected}: ${(error as Error).message}`);
  }
  if (got !== expected) {
    throw new StepFailed(`expected ${expected}, got ${shown(got)}`);
  }
}

/**
 * Smoke-tests a sockeye over the protocol, comparing exact bytes: a fresh
 * session answers its first frame with `{"count": 1}`; reconnected with the
 * same `session_uuid` and `sockeye.v1`, it first sends
 * `{"type": "session", "session_uuid": "<id>", "count": 1, "resumed": true}`
 * and answers the next frame with `{"count": 2}`.
 *
 * @param baseUrl `http://` or `ws://` base URL of the server or proxy.
 * @param timeoutMs Upper bound of the whole test in ms.
 * @returns The session id used (`promote-smoke-<uuid>`).
 * @throws {Error} Naming the first frame or event that differed.
 */
export async function smokeTest(
  baseUrl: string,
  timeoutMs: number,
): Promise<string> {
  const deadline = performance.now() + timeoutMs;
  const id = `promote-smoke-${crypto.randomUUID()}`;
  const url = `${wsBase(baseUrl)}/ws/chat/?session_uuid=${id}`;
  const first = new Frames(url);
  try {
    await first.opened;
    first.ws.send("promote smoke test");
    await expectFrame(first, '{"count": 1}', deadline);
  } finally {
    await first.close(deadline);
  }
  const again = new Frames(url, "sockeye.v1");
  try {
    await again.opened;
    await expectFrame(
      again,
      `{"type": "session", "session_uuid": "${id}", "count": 1, "resumed": true}`,
      deadline,
    );
    again.ws.send("promote smoke test, resumed");
    await expectFrame(again, '{"count": 2}', deadline);
  } finally {
    await again.close(deadline);
  }
  return id;
}

/**
 * GET with a time limit.
 *
 * @param url The URL to fetch.
 * @param timeoutMs Upper bound of the request in ms.
 * @returns The status and the body parsed as JSON (`{}` when it is not a JSON
 *   object); `undefined` when nothing answered.
 */
export async function get(
  url: string,
  timeoutMs: number,
): Promise<{ status: number; body: Record<string, unknown> } | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    let body: Record<string, unknown> = {};
    try {
      const parsed = JSON.parse(text);
      if (parsed && typeof parsed === "object") body = parsed;
    } catch { /* not JSON: the status says enough */ }
    return { status: res.status, body };
  } catch {
    return undefined;
  }
}
