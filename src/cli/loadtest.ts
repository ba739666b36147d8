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
import { parseCommand } from "./_args.ts";
import { print, printError, stderrIsTerminal, stdio } from "../platform.ts";

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
  /** Called about twice a second with a one-line progress summary. */
  readonly onProgress?: (line: string) => void;
}

/** Latency summary in milliseconds. */
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
 * @returns Nearest-rank percentiles, max and mean; zeros when empty.
 */
export function percentiles(samples: number[] | Float64Array): Percentiles {
  const n = samples.length;
  if (n === 0) return { p50: 0, p90: 0, p99: 0, max: 0, mean: 0 };
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
      const ws = new WebSocket(options.url);
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

const HELP = `Usage: sockeye loadtest [options]

  --url URL               WebSocket URL (default ws://127.0.0.1:8000/ws/chat/)
  -c, --connections N     sockets to open, all held together (default 100)
  -n, --messages M        messages per socket (default 100)
  --rate R                messages per second per socket; 0 = closed-loop (default 0)
  --ramp R                sockets opened per second; 0 = as fast as possible (default 0)
  --connect-concurrency N handshakes in flight at once (default 200)
  --hold S                seconds to hold every socket open after sending (default 0)
  --timeout S             cut the run short after S seconds (default 120)
  --payload TEXT          message text (default "hello")
  --json                  print the report as JSON
  --fail-on-error         exit 1 when any error was counted

Exit code: 0, or 1 with --fail-on-error when errors were counted; 2 on bad options.
`;

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
  const p = (x: Percentiles) =>
    `p50 ${x.p50} ms, p90 ${x.p90} ms, p99 ${x.p99} ms, max ${x.max} ms`;
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
 * The `loadtest` subcommand.
 *
 * @param args Command-line options (see `--help`).
 * @returns Exit code.
 */
export async function loadtestCommand(
  args: readonly string[],
): Promise<number> {
  const values = parseCommand("loadtest", args, {
    url: { type: "string", default: "ws://127.0.0.1:8000/ws/chat/" },
    connections: { type: "string", short: "c", default: "100" },
    messages: { type: "string", short: "n", default: "100" },
    rate: { type: "string", default: "0" },
    ramp: { type: "string", default: "0" },
    "connect-concurrency": { type: "string", default: "200" },
    hold: { type: "string", default: "0" },
    timeout: { type: "string", default: "120" },
    payload: { type: "string", default: "hello" },
    json: { type: "boolean", default: false },
    "fail-on-error": { type: "boolean", default: false },
  }, HELP);
  if (typeof values === "number") return values;
  const num = (name: string, raw: string, min: number) => {
    const v = Number(raw);
    if (!Number.isFinite(v) || v < min) {
      throw new Error(
        `Cannot parse --${name} "${raw}": expected a number of at least ${min}`,
      );
    }
    return v;
  };
  let options: LoadtestOptions;
  try {
    options = {
      url: values.url,
      connections: num("connections", values.connections, 1),
      messages: num("messages", values.messages, 0),
      rate: num("rate", values.rate, 0),
      ramp: num("ramp", values.ramp, 0),
      connectConcurrency: num(
        "connect-concurrency",
        values["connect-concurrency"],
        1,
      ),
      holdS: num("hold", values.hold, 0),
      timeoutS: num("timeout", values.timeout, 0.001),
      payload: values.payload,
      onProgress: stderrIsTerminal()
        ? (line) =>
          stdio.writeStderrSync(new TextEncoder().encode(`\r\x1b[2K${line}`))
        : undefined,
    };
  } catch (error) {
    printError(`sockeye loadtest: ${(error as Error).message}`);
    return 2;
  }
  const report = await runLoadtest(options);
  if (options.onProgress) {
    stdio.writeStderrSync(new TextEncoder().encode("\r\x1b[2K"));
  }
  print(values.json ? JSON.stringify(report) : formatReport(report));
  const errorCount = Object.values(report.errors).reduce((a, b) => a + b, 0);
  return values["fail-on-error"] && errorCount > 0 ? 1 : 0;
}
