/**
 * `sockeye loadtest`: opens many sockets against a server, sends messages
 * closed-loop or at a fixed rate, checks every reply's count and reports
 * throughput, latency percentiles, connect times and errors by kind.
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
import { type CommandSpec, parseCommand, usageError } from "./_args.ts";
import {
  exit,
  onShutdownSignal,
  print,
  stderrIsTerminal,
  stdio,
} from "../platform.ts";

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

/**
 * Latency summary in milliseconds; every field is `NaN` when there were no
 * samples (`null` in JSON, `n/a` in the text report), as a Prometheus
 * summary reports an empty quantile.
 */
export interface Percentiles {
  /** Median. */
  readonly p50: number;
  /** 90th percentile. */
  readonly p90: number;
  /** 99th percentile. */
  readonly p99: number;
  /** Largest sample. */
  readonly max: number;
  /** Arithmetic mean. */
  readonly mean: number;
}

/** What the clients of a `reconnect` run saw of the server's closes. */
export interface ReconnectReport {
  /**
   * Closes the server started, by close code (RFC 6455; 1006 when no close
   * frame was read), e.g. `{"1001": 2000}`.
   */
  readonly closes: Readonly<Record<string, number>>;
  /** `{"bye": true, "total": n}` frames received. */
  readonly byes: number;
  /**
   * 1006 closes that came after a bye: the goodbye arrived, the close frame
   * did not. Deno's WebSocket client reports this when a frame it was
   * sending crossed the server's close: it writes that frame after
   * answering the close, the peer resets the connection, and the close
   * frame already read is reported as none.
   */
  readonly resetsAfterBye: number;
  /** Reconnects whose session frame said `"resumed": true`. */
  readonly resumes: number;
  /** Clients that resumed their session at least once. */
  readonly clientsResumed: number;
  /** Reconnect attempts that failed (refused, unreachable, no session frame). */
  readonly failedAttempts: number;
  /**
   * Counts the server forgot: a reply, bye total or resumed count below the
   * last count the client knew.
   */
  readonly lost: number;
  /**
   * Counts of frames the client never sent (or counted twice): a count
   * above the last known plus the frames still unanswered.
   */
  readonly repeated: number;
  /**
   * Frames the server did not count, by its bye total or resumed count:
   * sent as it stopped counting, or lost with their socket. Not an error:
   * they were never answered; with `messages` they are sent again.
   */
  readonly uncounted: number;
  /**
   * Frames the server counted whose reply never came: the socket closed
   * first (the bye total or resumed count holds them). With `lost` and
   * `repeated` at 0, `sent` = `ok` + `uncounted` + `unanswered`.
   */
  readonly unanswered: number;
  /** Gap samples: closes followed by a reply on a resumed socket. */
  readonly gaps: number;
  /** Client-visible gap, close → first reply after resuming, in ms. */
  readonly gapMs: Percentiles;
}

/** What {@link runLoadtest} measured. */
export interface LoadtestReport {
  /** The WebSocket URL tested. */
  readonly url: string;
  /** Sockets asked for, opened, and open together at most. */
  readonly connections: {
    /** Sockets asked for. */
    readonly requested: number;
    /** Sockets whose handshake completed (first connects, not reconnects). */
    readonly opened: number;
    /** Most sockets open at the same moment. */
    readonly peakOpen: number;
  };
  /** Messages sent and correctly answered. */
  readonly messages: {
    /** Messages sent. */
    readonly sent: number;
    /** Replies whose count was exactly the expected next count. */
    readonly ok: number;
    /** Correct replies per second over the send phase. */
    readonly perSecond: number;
  };
  /** Send → reply, in ms. */
  readonly latencyMs: Percentiles;
  /** Handshake time, in ms. */
  readonly connectMs: Percentiles;
  /** Send phase duration in seconds. */
  readonly sendSeconds: number;
  /** Whole run in seconds. */
  readonly durationSeconds: number;
  /**
   * Error counts by kind: connect_failed, connect_timeout, bad_count,
   * bad_frame, unavailable, closed_early, timeout.
   */
  readonly errors: Readonly<Record<string, number>>;
  /** With `reconnect`: closes, resumes, continuity and the gap. */
  readonly reconnect?: ReconnectReport;
}

/**
 * Summarises samples.
 *
 * @param samples Values in any order (sorted in place).
 * @returns Nearest-rank percentiles, max and mean; `NaN` when empty (no
 *   samples, no figure).
 */
export function percentiles(samples: number[] | Float64Array): Percentiles {
  const n = samples.length;
  if (n === 0) return { p50: NaN, p90: NaN, p99: NaN, max: NaN, mean: NaN };
  samples.sort((a, b) => a - b);
  const at = (q: number) => samples[Math.min(n - 1, Math.ceil(q * n) - 1)]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += samples[i]!;
  const r = (v: number) => Math.round(v * 1000) / 1000;
  return {
    p50: r(at(0.5)),
    p90: r(at(0.9)),
    p99: r(at(0.99)),
    max: r(samples[n - 1]!),
    mean: r(sum / n),
  };
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

const LOADTEST = {
  name: "loadtest",
  summary: "Opens every socket first (ramped), then all send together, so " +
    "-c N sockets are held open\nat once; checks each reply's count and " +
    "reports throughput, latency, connect time and\nerrors by kind. A " +
    "progress line goes to stderr on a terminal.\n\n" +
    "To measure a release: --reconnect --duration S --rate R. Each client " +
    "then owns a session,\nresumes it when the server closes its socket " +
    "(sockeye.v1), checks that no count was\nlost or repeated, and the " +
    "report adds closes by code and the gap each client saw\n(close → first " +
    "reply after resuming). SIGINT or SIGTERM ends the run early with its " +
    "report.",
  options: {
    url: {
      type: "string",
      arg: "URL",
      default: "ws://127.0.0.1:8000/ws/chat/",
      doc: "WebSocket URL",
    },
    connections: {
      type: "string",
      short: "c",
      arg: "N",
      default: "100",
      doc: "sockets to open, all held together",
    },
    messages: {
      type: "string",
      short: "n",
      arg: "M",
      default: "100",
      doc: "messages per socket",
    },
    rate: {
      type: "string",
      arg: "R",
      default: "0",
      doc: "messages per second per socket; 0 = closed-loop",
    },
    ramp: {
      type: "string",
      arg: "R",
      default: "0",
      doc: "sockets opened per second; 0 = as fast as possible",
    },
    "connect-concurrency": {
      type: "string",
      arg: "N",
      default: "200",
      doc: "handshakes in flight at once",
    },
    hold: {
      type: "string",
      arg: "S",
      default: "0",
      doc: "seconds to hold every socket open after sending",
    },
    timeout: {
      type: "string",
      arg: "S",
      default: "120",
      doc: "cut the run short after S seconds",
    },
    payload: {
      type: "string",
      arg: "TEXT",
      default: "hello",
      doc: "message text",
    },
    token: {
      type: "string",
      arg: "JWT",
      doc: "send Authorization: Bearer JWT with every handshake",
    },
    duration: {
      type: "string",
      arg: "S",
      default: "0",
      doc: "send for S seconds instead of -n messages; 0 = -n messages",
    },
    reconnect: {
      type: "boolean",
      default: false,
      doc: "each client resumes its own session after a close; checks " +
        "continuity",
    },
    "reconnect-backoff": {
      type: "string",
      arg: "MS",
      default: "0",
      doc: "random wait before a reconnect, up to MS (doubling per failed " +
        "attempt)",
    },
    json: { type: "boolean", default: false, doc: "print the report as JSON" },
    "fail-on-error": {
      type: "boolean",
      default: false,
      doc: "exit 1 when any error was counted",
    },
  },
  footer: "Exit codes: 0; 1 when no socket connected, a reply's count was " +
    "wrong, a count was lost\nor repeated (--reconnect), or (with " +
    "--fail-on-error) any error was counted; 2 on a bad\ncommand line.",
} as const satisfies CommandSpec;

/**
 * Formats a report for people.
 *
 * @param r A report from {@link runLoadtest}.
 * @returns Multi-line text.
 */
export function formatReport(r: LoadtestReport): string {
  const errs =
    Object.entries(r.errors).map(([k, v]) => `${k}=${v}`).join(" ") ||
    "none";
  const ms = (v: number) => Number.isNaN(v) ? "n/a" : `${v} ms`;
  const p = (x: Percentiles) =>
    `p50 ${ms(x.p50)}, p90 ${ms(x.p90)}, p99 ${ms(x.p99)}, max ${ms(x.max)}`;
  const rc = r.reconnect;
  const byCode = (closes: Readonly<Record<string, number>>) =>
    Object.entries(closes).map(([k, v]) => `${k}=${v}`).join(" ") || "none";
  return [
    `target       ${r.url}`,
    `connections  ${r.connections.opened}/${r.connections.requested} opened, peak ${r.connections.peakOpen} open together`,
    `messages     ${r.messages.ok}/${r.messages.sent} correct in ${r.sendSeconds} s = ${r.messages.perSecond} msg/s`,
    `latency      ${p(r.latencyMs)}`,
    `connect      ${p(r.connectMs)}`,
    ...(rc
      ? [
        `closes       ${
          byCode(rc.closes)
        } (by the server); ${rc.byes} byes, ${rc.resetsAfterBye} of them followed by 1006`,
        `resumed      ${rc.resumes} reconnects by ${rc.clientsResumed} clients, ${rc.failedAttempts} failed attempts`,
        `continuity   lost ${rc.lost}, repeated ${rc.repeated}; at closes ${rc.uncounted} frames not counted, ${rc.unanswered} counted without a reply`,
        `gap          ${p(rc.gapMs)} (close → first reply, ${rc.gaps} samples)`,
      ]
      : []),
    `errors       ${errs}`,
    `duration     ${r.durationSeconds} s`,
  ].join("\n");
}

/**
 * Whether a run failed: no socket connected, a reply's count was wrong, a
 * count was lost or repeated (with `failOnError`, any error counted).
 *
 * @param report A report from {@link runLoadtest}.
 * @param failOnError Count every error as a failure.
 * @returns `true` when the run failed.
 */
export function failed(report: LoadtestReport, failOnError = false): boolean {
  const errorCount = Object.values(report.errors).reduce((a, b) => a + b, 0);
  return report.connections.opened === 0 ||
    (report.errors.bad_count ?? 0) > 0 ||
    (report.reconnect?.lost ?? 0) > 0 ||
    (report.reconnect?.repeated ?? 0) > 0 ||
    (failOnError && errorCount > 0);
}

/**
 * The `loadtest` subcommand.
 *
 * @param args Command-line options (see `--help`).
 * @returns Exit code: 0; 1 when the run failed (see {@link failed}); 2 on a
 *   bad command line.
 */
export async function loadtestCommand(
  args: readonly string[],
): Promise<number> {
  const parsed = parseCommand(LOADTEST, args);
  if (typeof parsed === "number") return parsed;
  const { values } = parsed;
  const num = (name: keyof typeof values, min: number) => {
    const raw = String(values[name]);
    const v = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(v) || v < min) {
      throw new Error(
        `cannot parse --${name} "${raw}" for loadtest: expected a number of at least ${min}`,
      );
    }
    return v;
  };
  let options: LoadtestOptions;
  try {
    if (!/^wss?:\/\/[^/]/.test(values.url) || !URL.canParse(values.url)) {
      throw new Error(
        `cannot parse --url "${values.url}" for loadtest: expected a ws:// or wss:// URL`,
      );
    }
    if (
      values.reconnect && /[?&]session(_uuid|_id)?=/.test(values.url)
    ) {
      throw new Error(
        `cannot use --url "${values.url}" with --reconnect: each client ` +
          "opens a session of its own; leave the session out of the URL",
      );
    }
    options = {
      url: values.url,
      connections: num("connections", 1),
      messages: num("messages", 0),
      rate: num("rate", 0),
      ramp: num("ramp", 0),
      connectConcurrency: num("connect-concurrency", 1),
      holdS: num("hold", 0),
      timeoutS: num("timeout", 0.001),
      payload: values.payload,
      token: values.token,
      durationS: num("duration", 0),
      reconnect: values.reconnect,
      reconnectBackoffMs: num("reconnect-backoff", 0),
      onProgress: stderrIsTerminal()
        ? (line) =>
          stdio.writeStderrSync(new TextEncoder().encode(`\r\x1b[2K${line}`))
        : undefined,
    };
  } catch (error) {
    return usageError("loadtest", (error as Error).message);
  }
  // The first SIGINT or SIGTERM ends the run with its report; a second one
  // ends the process at once.
  const stop = new AbortController();
  const removeListeners = onShutdownSignal(() => {
    if (stop.signal.aborted) exit(130);
    stop.abort();
  });
  let report: LoadtestReport;
  try {
    report = await runLoadtest({ ...options, signal: stop.signal });
  } finally {
    removeListeners();
  }
  if (options.onProgress) {
    stdio.writeStderrSync(new TextEncoder().encode("\r\x1b[2K"));
  }
  print(values.json ? JSON.stringify(report) : formatReport(report));
  return failed(report, values["fail-on-error"]) ? 1 : 0;
}
