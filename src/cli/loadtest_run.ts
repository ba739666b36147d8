/**
 * The run of `sockeye loadtest`.
 *
 * Phases: connect every socket (ramped), then all send together (so all N are
 * held open at once) for `messages` each or for `durationS`, optionally hold,
 * then close with 1000.
 *
 * With `reconnect`, each client owns a session and follows a release: when
 * the server closes its socket, it resumes the session (same `session_uuid`,
 * subprotocol `sockeye.v1`), checks that no count was lost or repeated, and
 * measures the gap its user saw (close → first reply after resuming).
 *
 * @module
 */
import { type LoadtestReport, percentiles } from "./loadtest_report.ts";

/** Options for {@link runLoadtest}. */
export interface LoadtestOptions {
  /** WebSocket URL, e.g. `ws://127.0.0.1:8000/ws/chat/`. */
  readonly url: string;
  /** Sockets to open. */
  readonly connections: number;
  /** Messages each socket sends (ignored when `durationS` is above 0). */
  readonly messages: number;
  /** Messages per second per socket; 0 sends closed-loop (next after reply). */
  readonly rate: number;
  /** Sockets opened per second; 0 opens as fast as `connectConcurrency` allows. */
  readonly ramp: number;
  /** Handshakes in flight at once. */
  readonly connectConcurrency: number;
  /** Seconds to keep every socket open after sending. */
  readonly holdS: number;
  /** Seconds after which the run is cut short. */
  readonly timeoutS: number;
  /** Text each message carries. */
  readonly payload: string;
  /**
   * Bearer token sent with every handshake (`Authorization: Bearer`), for a
   * server with authentication on.
   */
  readonly token?: string;
  /**
   * Seconds every socket sends for, from the start of the send phase, instead
   * of `messages` each; 0 (the default) sends `messages`.
   */
  readonly durationS?: number;
  /**
   * Each client resumes its own session after the server closes its socket,
   * and checks the count's continuity. Any session named in `url` is
   * replaced by one per client. Default `false`.
   */
  readonly reconnect?: boolean;
  /**
   * Upper bound in ms of the random wait before a reconnect (full jitter);
   * each failed attempt doubles it (from at least 100 ms, up to 5 s).
   * Default 0: the first attempt is immediate.
   */
  readonly reconnectBackoffMs?: number;
  /**
   * Aborting ends the run early: no new sockets or messages, replies in
   * flight are awaited (with `reconnect`, a client reconnecting finishes
   * resuming and checks it with one frame), then every socket closes and
   * the report is made.
   */
  readonly signal?: AbortSignal;
  /** Called about twice a second with a one-line progress summary. */
  readonly onProgress?: (line: string) => void;
}

/** A growable list of numbers without per-sample allocation. */
class Samples {
  #data = new Float64Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.#data.length) {
      const next = new Float64Array(this.#data.length * 2);
      next.set(this.#data);
      this.#data = next;
    }
    this.#data[this.length++] = v;
  }
  values(): Float64Array {
    return this.#data.subarray(0, this.length);
  }
}

const COUNT_PREFIX = '{"count": ';
const BYE_PREFIX = '{"bye": true, "total": ';
const UNAVAILABLE = '{"error": "unavailable", "retry": true}';
const SESSION_PROTOCOL = "sockeye.v1";
const DIGITS = /^(?:0|[1-9][0-9]*)$/;

/**
 * Reads the number of a frame written exactly as `prefix` + digits + `}`.
 *
 * @returns The number, or `NaN` when the bytes differ.
 */
function exactNumber(data: string, prefix: string): number {
  if (!data.startsWith(prefix) || data.at(-1) !== "}") return NaN;
  const digits = data.slice(prefix.length, -1);
  return DIGITS.test(digits) ? Number(digits) : NaN;
}

/**
 * Reads a session frame, byte for byte:
 * `{"type": "session", "session_uuid": "<id>", "count": <n>, "resumed": <bool>}`.
 *
 * @returns The count and whether the session was resumed, or `undefined`
 *   when the bytes differ.
 */
function sessionFrame(
  data: string,
  id: string,
): { count: number; resumed: boolean } | undefined {
  const prefix = `{"type": "session", "session_uuid": "${id}", "count": `;
  if (!data.startsWith(prefix)) return undefined;
  const m = /^(0|[1-9][0-9]*), "resumed": (true|false)\}$/.exec(
    data.slice(prefix.length),
  );
  return m ? { count: Number(m[1]), resumed: m[2] === "true" } : undefined;
}

/** A socket that completed its handshake (and, with a session, its session frame). */
interface Opened {
  readonly ws: WebSocket;
  readonly session?: { readonly count: number; readonly resumed: boolean };
}

/** Why a socket did not open. */
type OpenFailure = "connect_failed" | "connect_timeout" | "bad_frame";

/**
 * Runs a load test.
 *
 * @param options What to open and send.
 * @returns The measurements; errors are counted, never thrown.
 */
export async function runLoadtest(
  options: LoadtestOptions,
): Promise<LoadtestReport> {
  const errors: Record<string, number> = {};
  const fail = (kind: string) => errors[kind] = (errors[kind] ?? 0) + 1;
  const latencies = new Samples();
  const connectTimes = new Samples();
  const started = performance.now();
  const deadline = started + options.timeoutS * 1000;
  const durationMs = (options.durationS ?? 0) * 1000;
  const reconnect = options.reconnect ?? false;
  const backoffMs = options.reconnectBackoffMs ?? 0;
  let open = 0;
  let peakOpen = 0;
  let sent = 0;
  let ok = 0;
  let phase = "connect";

  // Ending the send phase early (duration over, or the caller's signal):
  // clients waiting for nothing else finish when told.
  let stopping = false;
  const onStop = new Set<() => void>();
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const poke of [...onStop]) poke();
  };
  options.signal?.addEventListener("abort", stop);
  if (options.signal?.aborted) stop();

  // What the clients of a reconnect run saw.
  const closes: Record<string, number> = {};
  const gaps = new Samples();
  let byes = 0;
  let resetsAfterBye = 0;
  let uncounted = 0;
  let unanswered = 0;
  let resumes = 0;
  let clientsResumed = 0;
  let failedAttempts = 0;
  let lost = 0;
  let repeated = 0;

  const progress = options.onProgress && setInterval(() => {
    const errorCount = Object.values(errors).reduce((a, b) => a + b, 0);
    options.onProgress!(
      `${phase}: open ${open}/${options.connections}, replies ${ok}${
        durationMs > 0 ? "" : `/${options.connections * options.messages}`
      }, errors ${errorCount}${
        reconnect
          ? `, resumed ${resumes}, lost ${lost}, repeated ${repeated}`
          : ""
      }`,
    );
  }, 500);

  /**
   * Opens one socket; with `sessionId`, asks for `sockeye.v1` on that
   * session and waits for the session frame too.
   */
  const openSocket = (
    sessionId: string | undefined,
    timing: boolean,
  ): Promise<Opened | OpenFailure> =>
    new Promise((resolve) => {
      const t0 = performance.now();
      let url = options.url;
      if (sessionId !== undefined) {
        const u = new URL(options.url);
        u.searchParams.delete("session_id");
        u.searchParams.delete("session");
        u.searchParams.set("session_uuid", sessionId);
        url = u.href;
      }
      // Deno's WebSocket takes request headers (a browser's cannot: those
      // send ?token= in the URL instead).
      const ws = new WebSocket(url, {
        protocols: sessionId === undefined ? [] : [SESSION_PROTOCOL],
        ...(options.token === undefined
          ? {}
          : { headers: { Authorization: `Bearer ${options.token}` } }),
      });
      let settled = false;
      let opened = false;
      const settle = (result: Opened | OpenFailure) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onmessage = null;
        if (typeof result === "string") {
          if (opened) {
            ws.onclose = () => open--;
          } else ws.onclose = null;
          try {
            ws.close();
          } catch { /* not open */ }
        }
        resolve(result);
      };
      const timer = setTimeout(
        () => settle("connect_timeout"),
        Math.max(1, deadline - t0),
      );
      ws.onopen = () => {
        opened = true;
        if (timing) connectTimes.push(performance.now() - t0);
        open++;
        if (open > peakOpen) peakOpen = open;
        ws.onclose = () => {
          open--;
          settle("connect_failed");
        };
        if (sessionId === undefined) {
          settle({ ws });
          ws.onclose = () => open--;
          return;
        }
        if (ws.protocol !== SESSION_PROTOCOL) settle("bad_frame");
      };
      ws.onmessage = (event) => {
        const data = String(event.data);
        if (data.startsWith('{"ts": ')) return;
        const session = sessionFrame(data, sessionId!);
        settle(session ? { ws, session } : "bad_frame");
        if (session) ws.onclose = () => open--;
      };
      ws.onerror = () => {
        if (!opened) settle("connect_failed");
      };
    });

  // Phase 1: connect, ramped.
  interface Client {
    readonly id: string | undefined;
    ws: WebSocket | undefined;
    count: number;
  }
  const clients: Client[] = [];
  let next = 0;
  const gapMs = options.ramp > 0 ? 1000 / options.ramp : 0;
  const worker = async () => {
    while (
      next < options.connections && performance.now() < deadline && !stopping
    ) {
      const i = next++;
      if (gapMs > 0) {
        const due = started + i * gapMs;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      const id = reconnect ? crypto.randomUUID() : undefined;
      const result = await openSocket(id, true);
      if (typeof result === "string") {
        fail(result === "connect_timeout" ? result : "connect_failed");
        continue;
      }
      clients.push({ id, ws: result.ws, count: result.session?.count ?? 0 });
    }
  };
  await Promise.all(
    Array.from(
      { length: Math.min(options.connectConcurrency, options.connections) },
      worker,
    ),
  );

  // Phase 2: every socket sends its messages, or for the duration.
  phase = "send";
  const sendStart = performance.now();
  const durationTimer = durationMs > 0
    ? setTimeout(stop, durationMs)
    : undefined;
  // A URL naming a session resumes it: its first count is unknown.
  const resumes1 = /[?&]session(_uuid|_id)?=/.test(options.url);
  const firstRemaining = durationMs > 0 ? Infinity : options.messages;

  const runSocket = (client: Client) =>
    new Promise<void>((resolve) => {
      const ws = client.ws!;
      let expected = resumes1 ? -1 : 0; // the count of the last correct reply
      const inFlight: number[] = [];
      let remaining = firstRemaining;
      const timers: {
        ticker?: ReturnType<typeof setInterval>;
        cutoff?: ReturnType<typeof setTimeout>;
      } = {};
      let finished = false;
      const finish = (timedOut: boolean) => {
        if (finished) return;
        finished = true;
        onStop.delete(poke);
        clearInterval(timers.ticker);
        clearTimeout(timers.cutoff);
        if (
          timedOut &&
          ((remaining > 0 && !stopping) || inFlight.length > 0)
        ) fail("timeout");
        ws.onmessage = null;
        if (ws.readyState !== WebSocket.CLOSED) ws.onclose = () => open--;
        resolve();
      };
      const idle = () => (remaining === 0 || stopping) && inFlight.length === 0;
      const poke = () => {
        if (idle()) finish(false);
      };
      const send = () => {
        if (remaining === 0 || stopping || ws.readyState !== WebSocket.OPEN) {
          return;
        }
        remaining--;
        sent++;
        inFlight.push(performance.now());
        ws.send(options.payload);
      };
      ws.onmessage = (event) => {
        const data = event.data as string;
        if (data.startsWith('{"ts": ')) return;
        const t0 = inFlight.shift();
        if (data.startsWith(COUNT_PREFIX)) {
          if (t0 !== undefined) latencies.push(performance.now() - t0);
          const n = Number(data.slice(COUNT_PREFIX.length, -1));
          if (expected === -1 || n === expected + 1) ok++;
          else fail("bad_count");
          expected = n;
        } else if (data.startsWith('{"error": ')) {
          fail("unavailable");
        } else {
          fail(data.startsWith('{"bye": ') ? "closed_early" : "bad_frame");
        }
        if (idle()) return finish(false);
        if (options.rate === 0) send();
      };
      ws.onclose = () => {
        open--;
        if ((remaining > 0 && !stopping) || inFlight.length > 0) {
          fail("closed_early");
        }
        finish(false);
      };
      const left = deadline - performance.now();
      if ((options.messages === 0 && durationMs === 0) || left <= 0) {
        return finish(false);
      }
      onStop.add(poke);
      timers.cutoff = setTimeout(() => finish(true), left);
      if (options.rate > 0) {
        timers.ticker = setInterval(() => {
          send();
          poke();
        }, 1000 / options.rate);
      } else send();
      poke();
    });

  /**
   * One client of a reconnect run: sends like {@link runSocket}, and when the
   * server closes its socket, reconnects to the same session and reconciles
   * the count it resumes with what it knew.
   */
  const runResuming = (client: Client) =>
    new Promise<void>((resolve) => {
      const id = client.id!;
      let ws: WebSocket | undefined = client.ws!;
      let last = client.count; // the session's count as last confirmed
      const pending: number[] = []; // send times of frames unanswered on `ws`
      let unresolved = 0; // frames of a closed socket: counted or not?
      let remaining = firstRemaining;
      let closedAt: number | undefined; // a close not yet followed by a reply
      let saidBye = false; // the server said bye on `ws`: send nothing more
      let everResumed = false;
      let connecting = false;
      let timedOut = false;
      let finished = false;
      let ticker: ReturnType<typeof setInterval> | undefined;
      let retry: ReturnType<typeof setTimeout> | undefined;

      const finish = (late: boolean) => {
        if (finished) return;
        finished = true;
        onStop.delete(poke);
        clearInterval(ticker);
        clearTimeout(cutoff);
        clearTimeout(retry);
        if (
          late &&
          ((remaining > 0 && !stopping) || pending.length > 0 ||
            unresolved > 0 || ws === undefined)
        ) fail("timeout");
        if (ws) {
          ws.onmessage = null;
          if (ws.readyState !== WebSocket.CLOSED) ws.onclose = () => open--;
        }
        client.ws = ws;
        resolve();
      };
      const idle = () =>
        (remaining === 0 || stopping) && pending.length === 0 &&
        ws !== undefined && !saidBye;
      const poke = () => {
        if (idle()) finish(false);
      };
      // `resuming`: the first frame after a resume checks it, also while
      // the run is ending.
      const send = (resuming = false) => {
        if (
          ws === undefined || saidBye || remaining === 0 ||
          (stopping && !resuming) || ws.readyState !== WebSocket.OPEN
        ) return;
        remaining--;
        sent++;
        pending.push(performance.now());
        ws.send(options.payload);
      };
      // A count the server states (reply, bye total, resumed count) against
      // what the client knew: `inFlight` frames may or may not be in it.
      const reconcile = (count: number, inFlight: number) => {
        const counted = count - last;
        if (counted < 0) lost += -counted;
        else if (counted > inFlight) repeated += counted - inFlight;
        const countedHere = Math.min(Math.max(counted, 0), inFlight);
        const notCounted = inFlight - countedHere;
        unanswered += countedHere;
        uncounted += notCounted;
        // Frames the server never counted are sent again, as a client
        // acknowledging by count does.
        if (remaining !== Infinity) remaining += notCounted;
        last = count;
      };
      const onMessage = (event: MessageEvent) => {
        const data = String(event.data);
        if (data.startsWith('{"ts": ')) return;
        const n = exactNumber(data, COUNT_PREFIX);
        if (!Number.isNaN(n)) {
          const now = performance.now();
          const t0 = pending.shift();
          if (t0 !== undefined) latencies.push(now - t0);
          // A reply counts this frame: exactly the next count.
          if (n === last + 1) ok++;
          else if (n > last + 1) repeated += n - last - 1;
          else lost += last + 1 - n;
          last = n;
          if (closedAt !== undefined) {
            gaps.push(now - closedAt);
            closedAt = undefined;
          }
          if (idle()) return finish(false);
          if (options.rate === 0) send();
          return;
        }
        const total = exactNumber(data, BYE_PREFIX);
        if (!Number.isNaN(total)) {
          // The total holds every frame the server took before it stopped
          // counting: some of those in flight, in order; it ignores the rest.
          byes++;
          saidBye = true;
          reconcile(total, pending.length);
          pending.length = 0;
          return;
        }
        pending.shift();
        if (data === UNAVAILABLE) {
          fail("unavailable");
          if (remaining !== Infinity) remaining++;
        } else fail("bad_frame");
        if (idle()) return finish(false);
        if (options.rate === 0) send();
      };
      const onClose = (event: CloseEvent) => {
        open--;
        if (finished) return;
        // Deno reports 0 for a connection that ended without a close frame
        // it could read, which RFC 6455 §7.1.5 calls 1006.
        const code = event.code === 0 ? 1006 : event.code;
        closes[code] = (closes[code] ?? 0) + 1;
        if (code === 1006 && saidBye) resetsAfterBye++;
        closedAt ??= performance.now();
        unresolved += pending.length;
        pending.length = 0;
        saidBye = false;
        ws = undefined;
        attempt(0);
      };
      const attach = (socket: WebSocket) => {
        socket.onmessage = onMessage;
        socket.onclose = onClose;
      };
      const attempt = (n: number) => {
        const cap = n === 0
          ? backoffMs
          : Math.min(5000, Math.max(backoffMs, 100) * 2 ** n);
        const wait = Math.random() * cap;
        if (timedOut || performance.now() + wait >= deadline) {
          return finish(true);
        }
        connecting = true;
        retry = setTimeout(async () => {
          const result = await openSocket(id, false);
          connecting = false;
          if (typeof result === "string") {
            failedAttempts++;
            return attempt(n + 1);
          }
          ws = result.ws;
          attach(ws);
          if (finished) return;
          const { count, resumed } = result.session!;
          if (resumed) {
            resumes++;
            if (!everResumed) clientsResumed++;
            everResumed = true;
          }
          reconcile(count, unresolved);
          unresolved = 0;
          if (timedOut) return finish(true);
          // At once rather than at the next tick: the gap ends with this reply.
          send(true);
          poke();
        }, wait);
      };

      attach(ws);
      const cutoff = setTimeout(() => {
        timedOut = true;
        // A reconnect in flight ends by the deadline and finishes then.
        if (!connecting) finish(true);
      }, Math.max(0, deadline - performance.now()));
      if (options.messages === 0 && durationMs === 0) return finish(false);
      onStop.add(poke);
      if (ws.readyState === WebSocket.CLOSED) {
        // Closed between connecting and sending: its close event is gone.
        closedAt = performance.now();
        ws = undefined;
        attempt(0);
      }
      if (options.rate > 0) {
        ticker = setInterval(() => {
          send();
          poke();
        }, 1000 / options.rate);
      } else send();
      poke();
    });

  await Promise.all(clients.map(reconnect ? runResuming : runSocket));
  clearTimeout(durationTimer);
  const sendSeconds = (performance.now() - sendStart) / 1000;

  // Phase 3: hold, then close.
  if (options.holdS > 0 && !stopping) {
    phase = "hold";
    await new Promise<void>((resolve) => {
      const timer = setTimeout(
        done,
        Math.min(options.holdS * 1000, deadline - performance.now()),
      );
      function done() {
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", done);
        resolve();
      }
      options.signal?.addEventListener("abort", done);
    });
  }
  phase = "close";
  await Promise.all(clients.map(({ ws }) =>
    new Promise<void>((resolve) => {
      if (ws === undefined || ws.readyState === WebSocket.CLOSED) {
        return resolve();
      }
      ws.onmessage = null;
      ws.onclose = () => {
        open--;
        resolve();
      };
      ws.close(1000, "load test done");
    })
  ));
  if (progress) clearInterval(progress);
  options.signal?.removeEventListener("abort", stop);

  return {
    url: options.url,
    connections: {
      requested: options.connections,
      opened: connectTimes.length,
      peakOpen,
    },
    messages: {
      sent,
      ok,
      perSecond: Math.round(ok / Math.max(sendSeconds, 1e-9)),
    },
    latencyMs: percentiles(latencies.values()),
    connectMs: percentiles(connectTimes.values()),
    sendSeconds: Math.round(sendSeconds * 1000) / 1000,
    durationSeconds: Math.round(performance.now() - started) / 1000,
    errors,
    ...(reconnect
      ? {
        reconnect: {
          closes,
          byes,
          resetsAfterBye,
          resumes,
          clientsResumed,
          failedAttempts,
          lost,
          repeated,
          uncounted,
          unanswered,
          gaps: gaps.length,
          gapMs: percentiles(gaps.values()),
        },
      }
      : {}),
  };
}
