/**
 * `sockeye loadtest`: opens many sockets against a server, sends messages
 * closed-loop or at a fixed rate, checks every reply's count and reports
 * throughput, latency percentiles, connect times and errors by kind.
 *
 * The run is in `loadtest_run.ts`, the report in `loadtest_report.ts`.
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
import { type LoadtestOptions, runLoadtest } from "./loadtest_run.ts";
import {
  failed,
  formatReport,
  type LoadtestReport,
} from "./loadtest_report.ts";

export { type LoadtestOptions, runLoadtest } from "./loadtest_run.ts";
export {
  failed,
  formatReport,
  type LoadtestReport,
  type Percentiles,
  percentiles,
  type ReconnectReport,
} from "./loadtest_report.ts";

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
