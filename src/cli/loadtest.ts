/**
 * `sockeye loadtest`: opens many sockets against a server, sends messages
 * closed-loop or at a fixed rate, checks every reply's count and reports
 * throughput, latency percentiles, connect times and errors by kind.
 *
 * Phases: connect every socket (ramped), then all send together (so all N are
 * held open at once), optionally hold, then close with 1000.
 *
 * @module
 */
import { type CommandSpec, parseCommand, usageError } from "./_args.ts";
import { print, stderrIsTerminal, stdio } from "../platform.ts";

/** Options for {@link runLoadtest}. */
export interface LoadtestOptions {
  /** WebSocket URL, e.g. `ws://127.0.0.1:8000/ws/chat/`. */
  readonly url: string;
  /** Sockets to open. */
  readonly connections: number;
  /** Messages each socket sends. */
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

/** What {@link runLoadtest} measured. */
export interface LoadtestReport {
  /** The WebSocket URL tested. */
  readonly url: string;
  /** Sockets asked for, opened, and open together at most. */
  readonly connections: {
    /** Sockets asked for. */
    readonly requested: number;
    /** Sockets whose handshake completed. */
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
  /** Error counts by kind: connect_failed, bad_count, bad_frame, unavailable, closed_early, timeout. */
  readonly errors: Readonly<Record<string, number>>;
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
  const sockets: WebSocket[] = [];
  let open = 0;
  let peakOpen = 0;
  let sent = 0;
  let ok = 0;
  let phase = "connect";

  const progress = options.onProgress && setInterval(() => {
    options.onProgress!(
      `${phase}: open ${open}/${options.connections}, replies ${ok}/${
        options.connections * options.messages
      }, errors ${Object.values(errors).reduce((a, b) => a + b, 0)}`,
    );
  }, 500);

  // Phase 1: connect, ramped.
  const connectOne = () =>
    new Promise<WebSocket | undefined>((resolve) => {
      const t0 = performance.now();
      // Deno's WebSocket takes request headers (a browser's cannot: those
      // send ?token= in the URL instead).
      const ws = options.token === undefined
        ? new WebSocket(options.url)
        : new WebSocket(options.url, {
          headers: { Authorization: `Bearer ${options.token}` },
        });
      const timer = setTimeout(() => {
        fail("connect_timeout");
        ws.onopen = ws.onerror = null;
        try {
          ws.close();
        } catch { /* not open */ }
        resolve(undefined);
      }, Math.max(1, deadline - t0));
      ws.onopen = () => {
        clearTimeout(timer);
        connectTimes.push(performance.now() - t0);
        open++;
        if (open > peakOpen) peakOpen = open;
        ws.onclose = () => open--;
        resolve(ws);
      };
      ws.onerror = () => {
        clearTimeout(timer);
        fail("connect_failed");
        resolve(undefined);
      };
    });
  let next = 0;
  const gapMs = options.ramp > 0 ? 1000 / options.ramp : 0;
  const worker = async () => {
    while (next < options.connections && performance.now() < deadline) {
      const i = next++;
      if (gapMs > 0) {
        const due = started + i * gapMs;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      const ws = await connectOne();
      if (ws) sockets.push(ws);
    }
  };
  await Promise.all(
    Array.from(
      { length: Math.min(options.connectConcurrency, options.connections) },
      worker,
    ),
  );

  // Phase 2: every socket sends its messages.
  phase = "send";
  const sendStart = performance.now();
  // A URL naming a session resumes it: its first count is unknown.
  const resumes = /[?&]session(_uuid|_id)?=/.test(options.url);
  const runSocket = (ws: WebSocket) =>
    new Promise<void>((resolve) => {
      let expected = resumes ? -1 : 0; // the count of the last correct reply
      const inFlight: number[] = [];
      let remaining = options.messages;
      const timers: {
        ticker?: ReturnType<typeof setInterval>;
        cutoff?: ReturnType<typeof setTimeout>;
      } = {};
      let finished = false;
      const finish = (timedOut: boolean) => {
        if (finished) return;
        finished = true;
        clearInterval(timers.ticker);
        clearTimeout(timers.cutoff);
        if (timedOut && (remaining > 0 || inFlight.length > 0)) fail("timeout");
        ws.onmessage = null;
        if (ws.readyState !== WebSocket.CLOSED) ws.onclose = () => open--;
        resolve();
      };
      const send = () => {
        if (remaining === 0 || ws.readyState !== WebSocket.OPEN) return;
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
        if (remaining === 0 && inFlight.length === 0) return finish(false);
        if (options.rate === 0) send();
      };
      ws.onclose = () => {
        open--;
        if (remaining > 0 || inFlight.length > 0) fail("closed_early");
        finish(false);
      };
      const left = deadline - performance.now();
      if (options.messages === 0 || left <= 0) return finish(false);
      timers.cutoff = setTimeout(() => finish(true), left);
      if (options.rate > 0) {
        timers.ticker = setInterval(send, 1000 / options.rate);
      } else send();
    });
  await Promise.all(sockets.map(runSocket));
  const sendSeconds = (performance.now() - sendStart) / 1000;

  // Phase 3: hold, then close.
  if (options.holdS > 0) {
    phase = "hold";
    await new Promise((r) =>
      setTimeout(
        r,
        Math.min(options.holdS * 1000, deadline - performance.now()),
      )
    );
  }
  phase = "close";
  await Promise.all(sockets.map((ws) =>
    new Promise<void>((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) return resolve();
      ws.onmessage = null;
      ws.onclose = () => {
        open--;
        resolve();
      };
      ws.close(1000, "load test done");
    })
  ));
  if (progress) clearInterval(progress);

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
  };
}

const LOADTEST = {
  name: "loadtest",
  summary: "Opens every socket first (ramped), then all send together, so " +
    "-c N sockets are held open\nat once; checks each reply's count and " +
    "reports throughput, latency, connect time and\nerrors by kind. A " +
    "progress line goes to stderr on a terminal.",
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
    json: { type: "boolean", default: false, doc: "print the report as JSON" },
    "fail-on-error": {
      type: "boolean",
      default: false,
      doc: "exit 1 when any error was counted",
    },
  },
  footer: "Exit codes: 0; 1 when no socket connected, a reply's count was " +
    "wrong, or (with\n--fail-on-error) any error was counted; 2 on a bad " +
    "command line.",
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
  return [
    `target       ${r.url}`,
    `connections  ${r.connections.opened}/${r.connections.requested} opened, peak ${r.connections.peakOpen} open together`,
    `messages     ${r.messages.ok}/${r.messages.sent} correct in ${r.sendSeconds} s = ${r.messages.perSecond} msg/s`,
    `latency      ${p(r.latencyMs)}`,
    `connect      ${p(r.connectMs)}`,
    `errors       ${errs}`,
    `duration     ${r.durationSeconds} s`,
  ].join("\n");
}

/**
 * Whether a run failed: no socket connected, or a reply's count was wrong
 * (with `failOnError`, any error counted).
 *
 * @param report A report from {@link runLoadtest}.
 * @param failOnError Count every error as a failure.
 * @returns `true` when the run failed.
 */
export function failed(report: LoadtestReport, failOnError = false): boolean {
  const errorCount = Object.values(report.errors).reduce((a, b) => a + b, 0);
  return report.connections.opened === 0 ||
    (report.errors.bad_count ?? 0) > 0 ||
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
      onProgress: stderrIsTerminal()
        ? (line) =>
          stdio.writeStderrSync(new TextEncoder().encode(`\r\x1b[2K${line}`))
        : undefined,
    };
  } catch (error) {
    return usageError("loadtest", (error as Error).message);
  }
  const report = await runLoadtest(options);
  if (options.onProgress) {
    stdio.writeStderrSync(new TextEncoder().encode("\r\x1b[2K"));
  }
  print(values.json ? JSON.stringify(report) : formatReport(report));
  return failed(report, values["fail-on-error"]) ? 1 : 0;
}
