/**
 * `sockeye admin …`: the admin API from the command line: the log level,
 * CPU and heap profiles, the open connections, and disconnecting a session.
 * It talks to `--url` (default `$ADMIN_URL`, else the admin port on
 * loopback) with `$ADMIN_TOKEN` (or the file `$ADMIN_TOKEN_FILE` names).
 *
 * Exit codes: 0 done; 1 the server refused or did not answer; 2 a bad
 * command line.
 *
 * @module
 */
import {
  print,
  printError,
  readTextFile,
  stdio,
  writeFile,
} from "../platform.ts";
import { type Env, LOG_LEVELS, type LogLevelName } from "../settings.ts";
import { closest } from "../suggest.ts";
import {
  type CommandSpec,
  helpText,
  type OptionSpec,
  parseCommand,
  type Parsed,
  usageError,
} from "./_args.ts";

const URL_OPTION = {
  type: "string",
  arg: "URL",
  doc: "the admin API's base URL (default $ADMIN_URL, else " +
    "http://127.0.0.1:$ADMIN_PORT, else :$PORT)",
} as const satisfies OptionSpec;

const FOOTER = "The token comes from $ADMIN_TOKEN (or the file " +
  "$ADMIN_TOKEN_FILE names).\nExit codes: 0 done; 1 the server refused or " +
  "did not answer; 2 a bad command line.";

const LOG_LEVEL = {
  name: "admin log-level",
  summary: "Prints the log level in force; with LEVEL (debug, info, " +
    "warning, error, critical) sets it\nfor every logger at once, open " +
    "sockets untouched. With --ttl the level reverts by itself.",
  positionals: ["[LEVEL]"],
  options: {
    url: URL_OPTION,
    ttl: {
      type: "string",
      arg: "S",
      doc: "revert to the level before after S seconds",
    },
  },
  footer: FOOTER,
} as const satisfies CommandSpec;

/**
 * The command line of a profile action: `--seconds`, `--format`, `-o`.
 *
 * @param action `profile` or `heap`.
 * @param summary What it records.
 * @param v8 The V8 JSON format's name.
 */
function profileSpec(action: string, summary: string, v8: string) {
  const kind = action === "profile" ? "cpu" : "heap";
  return {
    name: `admin ${action}`,
    summary,
    options: {
      url: URL_OPTION,
      seconds: {
        type: "string",
        arg: "N",
        default: "10",
        doc: "seconds to sample (1–60)",
      },
      format: {
        type: "string",
        arg: "F",
        default: "pprof",
        doc: `pprof or ${v8}`,
      },
      output: {
        type: "string",
        short: "o",
        arg: "FILE",
        doc:
          `where to write it; - for stdout (default sockeye-${kind}-TIME.pb.gz)`,
      },
    },
    footer: FOOTER,
  } as const satisfies CommandSpec;
}

const CONNECTIONS = {
  name: "admin connections",
  summary: "Lists the open connections: id, session, client address, " +
    "since when, messages, bytes\nbuffered, user agent.",
  options: {
    url: URL_OPTION,
    json: {
      type: "boolean",
      default: false,
      doc: "print one JSON array",
    },
  },
  footer: FOOTER,
} as const satisfies CommandSpec;

const DISCONNECT = {
  name: "admin disconnect",
  summary: "Closes every socket of a session with 4001 (disconnected by " +
    "operator); --forget also\ndeletes its stored count, so it starts over " +
    "at 0.",
  positionals: ["SESSION_ID"],
  options: {
    url: URL_OPTION,
    forget: {
      type: "boolean",
      default: false,
      doc: "also delete the session's stored count",
    },
  },
  footer: FOOTER,
} as const satisfies CommandSpec;

type Run = (args: readonly string[], env: Env) => Promise<number>;

const ACTIONS: Readonly<Record<string, { summary: string; run: Run }>> = {
  "log-level": {
    summary: "print or set the log level",
    run: logLevelAction,
  },
  profile: {
    summary: "write a CPU profile",
    run: profileAction(
      "profile",
      "Records a CPU profile of the server for N seconds and writes it to a " +
        "file: gzipped pprof\n(go tool pprof, Pyroscope, speedscope) or V8's " +
        ".cpuprofile (Chrome DevTools).",
      "cpuprofile",
    ),
  },
  heap: {
    summary: "write a heap profile",
    run: profileAction(
      "heap",
      "Records a sampling heap profile for N seconds (the objects allocated " +
        "meanwhile that are\nstill live at the end) and writes it to a file: " +
        "gzipped pprof or V8's .heapprofile.",
      "heapprofile",
    ),
  },
  connections: { summary: "list the open connections", run: connectionsAction },
  disconnect: {
    summary: "close a session's sockets (4001)",
    run: disconnectAction,
  },
};

/** The command line of `sockeye admin` itself: an action, or `--help`. */
const ADMIN = {
  name: "admin",
  summary: "Operates a running server through its admin API.\n\nActions:\n" +
    Object.entries(ACTIONS).map(([name, a]) =>
      `  ${name.padEnd(13)}${a.summary}`
    ).join("\n") +
    '\n\nRun "sockeye admin ACTION --help" for an action\'s options.',
  positionals: ["ACTION"],
  options: {},
  footer: FOOTER,
} as const satisfies CommandSpec;

/**
 * Runs `sockeye admin ACTION …`.
 *
 * @param args The arguments after `admin`.
 * @param env The environment: `ADMIN_URL`, `ADMIN_PORT`, `PORT`,
 *   `ADMIN_TOKEN`, `ADMIN_TOKEN_FILE`.
 * @returns The exit code.
 */
export async function adminCommand(
  args: readonly string[],
  env: Env,
): Promise<number> {
  const [action, ...rest] = args;
  if (action === undefined) {
    return usageError("admin", "missing ACTION for admin");
  }
  if (action === "-h" || action === "--help") {
    print(helpText(ADMIN));
    return 0;
  }
  const entry = ACTIONS[action];
  if (entry === undefined) {
    const guess = closest(action, Object.keys(ACTIONS));
    return usageError(
      "admin",
      `unknown action "${action}" for admin${
        guess ? ` (did you mean "${guess}"?)` : ""
      }`,
    );
  }
  return await entry.run(rest, env);
}

/** The admin API's base URL and token. */
interface Target {
  readonly base: string;
  readonly token: string | undefined;
}

function target(
  command: string,
  url: string | undefined,
  env: Env,
): Target | 2 {
  const base = url ?? env.ADMIN_URL ??
    `http://127.0.0.1:${env.ADMIN_PORT || env.PORT || "8000"}`;
  if (!/^https?:\/\/[^/]/.test(base) || !URL.canParse(base)) {
    return usageError(
      command,
      `cannot parse URL "${base}" for ${command}: expected an http:// or https:// URL`,
    );
  }
  let token = env.ADMIN_TOKEN || undefined;
  const file = env.ADMIN_TOKEN_FILE;
  if (token === undefined && file) {
    try {
      token = readTextFile(file).replace(/(\r?\n)+$/, "");
    } catch (error) {
      printError(
        `sockeye ${command}: cannot read ADMIN_TOKEN_FILE "${file}": ${
          (error as Error).message
        }`,
      );
      return 2;
    }
  }
  return { base: base.replace(/\/+$/, ""), token };
}

/** Parses an action's command line and finds the server it talks to. */
function prepare<const S extends CommandSpec>(
  spec: S,
  args: readonly string[],
  env: Env,
): { parsed: Parsed<S["options"]>; t: Target; name: string } | number {
  const parsed = parseCommand(spec, args);
  if (typeof parsed === "number") return parsed;
  const url = (parsed.values as { url?: string }).url;
  const t = target(spec.name, url, env);
  return t === 2 ? 2 : { parsed, t, name: spec.name };
}

/** A request to the admin API that failed, already explained. */
class Failed extends Error {}

async function call(
  command: string,
  t: Target,
  method: string,
  path: string,
  options: { body?: unknown; timeoutS?: number } = {},
): Promise<Response> {
  const url = t.base + path;
  let res: Response;
  try {
    res = await fetch(url, {
      method,
      headers: {
        ...(t.token ? { Authorization: `Bearer ${t.token}` } : {}),
        ...(options.body ? { "Content-Type": "application/json" } : {}),
      },
      body: options.body === undefined
        ? undefined
        : JSON.stringify(options.body),
      signal: AbortSignal.timeout((options.timeoutS ?? 10) * 1000),
    });
  } catch (error) {
    printError(
      `sockeye ${command}: ${url} unreachable: ${(error as Error).message}`,
    );
    throw new Failed();
  }
  if (res.ok) return res;
  let message = await res.text();
  try {
    message = JSON.parse(message).message ?? message;
  } catch { /* not JSON: the text itself */ }
  const hint = res.status === 401
    ? " (set ADMIN_TOKEN)"
    : res.status === 404 && /^No route/.test(message)
    ? " (is this the admin port? set ADMIN_PORT on the server and --url here)"
    : "";
  printError(
    `sockeye ${command}: ${method} ${url} answered ${res.status}: ${message}${hint}`,
  );
  throw new Failed();
}

/** Runs an action body; a failed request is exit code 1. */
async function attempt(body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (error) {
    if (error instanceof Failed) return 1;
    throw error;
  }
}

interface LevelState {
  level: LogLevelName;
  reverts_to?: LogLevelName;
  reverts_at?: string;
}

function showLevel(state: LevelState): string {
  return state.reverts_to === undefined
    ? state.level
    : `${state.level} (reverts to ${state.reverts_to} at ${state.reverts_at})`;
}

async function logLevelAction(args: readonly string[], env: Env) {
  const ready = prepare(LOG_LEVEL, args, env);
  if (typeof ready === "number") return ready;
  const { parsed, t, name } = ready;
  const [level] = parsed.positionals;
  const ttl = parsed.values.ttl;
  if (level !== undefined && !LOG_LEVELS.includes(level as LogLevelName)) {
    return usageError(
      name,
      `unknown level "${level}" for ${name}: expected one of ${
        LOG_LEVELS.join(", ")
      }`,
    );
  }
  const ttlS = ttl === undefined ? undefined : Number(ttl);
  if (ttlS !== undefined && !(ttlS > 0 && Number.isFinite(ttlS))) {
    return usageError(
      name,
      `cannot parse --ttl "${ttl}" for ${name}: expected seconds above 0`,
    );
  }
  if (level === undefined && ttlS !== undefined) {
    return usageError(name, `option "--ttl" for ${name} needs a LEVEL`);
  }
  return await attempt(async () => {
    const res = level === undefined
      ? await call(name, t, "GET", "/admin/log-level")
      : await call(name, t, "PUT", "/admin/log-level", {
        body: { level, ...(ttlS === undefined ? {} : { ttl_s: ttlS }) },
      });
    print(showLevel(await res.json()));
    return 0;
  });
}

/** Runs `admin profile` or `admin heap`: fetch the profile, write the file. */
function profileAction(action: string, summary: string, v8: string): Run {
  const spec = profileSpec(action, summary, v8);
  const kind = action === "profile" ? "cpu" : "heap";
  const path = action === "profile"
    ? "/debug/pprof/profile"
    : "/debug/pprof/heap";
  return async (args, env) => {
    const ready = prepare(spec, args, env);
    if (typeof ready === "number") return ready;
    const { parsed, t, name } = ready;
    const raw = parsed.values.seconds;
    const seconds = Number(raw);
    if (!/^\d+$/.test(raw) || seconds < 1 || seconds > 60) {
      return usageError(
        name,
        `cannot parse --seconds "${raw}" for ${name}: expected a whole number from 1 to 60`,
      );
    }
    const format = parsed.values.format;
    if (format !== "pprof" && format !== v8) {
      return usageError(
        name,
        `unknown --format "${format}" for ${name}: expected pprof or ${v8}`,
      );
    }
    const time = new Date().toISOString().replace(/[-:]|\.\d+/g, "");
    const output = parsed.values.output ??
      `sockeye-${kind}-${time}.${format === "pprof" ? "pb.gz" : format}`;
    const what = `${
      kind === "cpu" ? "CPU" : "Heap"
    } profile (${seconds} s, ${format})`;
    return await attempt(async () => {
      // The server samples for the whole time, then encodes.
      const res = await call(
        name,
        t,
        "GET",
        `${path}?seconds=${seconds}&format=${format}`,
        { timeoutS: seconds + 30 },
      );
      const bytes = new Uint8Array(await res.arrayBuffer());
      if (output === "-") {
        stdio.writeStdoutSync(bytes);
        printError(`${what}: ${bytes.length} bytes`);
      } else {
        writeFile(output, bytes);
        print(`${what}: ${bytes.length} bytes written to ${output}`);
      }
      return 0;
    });
  };
}

interface ConnectionRow {
  connection_id: string;
  session_id: string;
  remote_addr: string;
  user_agent: string;
  connected_at: string;
  messages: number;
  buffered_bytes: number;
}

async function connectionsAction(args: readonly string[], env: Env) {
  const ready = prepare(CONNECTIONS, args, env);
  if (typeof ready === "number") return ready;
  const { parsed, t, name } = ready;
  return await attempt(async () => {
    const rows: ConnectionRow[] = [];
    for (let offset: number | null = 0; offset !== null;) {
      const res = await call(
        name,
        t,
        "GET",
        `/admin/connections?limit=1000&offset=${offset}`,
      );
      const page = await res.json();
      rows.push(...page.connections);
      offset = page.next_offset;
    }
    if (parsed.values.json) {
      print(JSON.stringify(rows));
      return 0;
    }
    const table = [
      [
        "CONNECTION",
        "SESSION",
        "CLIENT",
        "SINCE",
        "MESSAGES",
        "BUFFERED",
        "USER AGENT",
      ],
      ...rows.map((r) => [
        r.connection_id,
        r.session_id,
        r.remote_addr,
        r.connected_at,
        String(r.messages),
        String(r.buffered_bytes),
        r.user_agent,
      ]),
    ];
    const widths = table[0]!.map((_, i) =>
      Math.max(...table.map((row) => row[i]!.length))
    );
    for (const row of table) {
      print(row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd());
    }
    print(`${rows.length} open`);
    return 0;
  });
}

async function disconnectAction(args: readonly string[], env: Env) {
  const ready = prepare(DISCONNECT, args, env);
  if (typeof ready === "number") return ready;
  const { parsed, t, name } = ready;
  const session = parsed.positionals[0];
  if (!session) return usageError(name, `missing SESSION_ID for ${name}`);
  return await attempt(async () => {
    const forget = parsed.values.forget ? "?forget=true" : "";
    const res = await call(
      name,
      t,
      "DELETE",
      `/admin/sessions/${encodeURIComponent(session)}${forget}`,
    );
    const body = await res.json();
    print(
      `session ${body.session_id}: ${body.disconnected} sockets closed ` +
        `(4001)${
          body.forgotten === true
            ? ", stored count deleted"
            : body.forgotten === false
            ? ", nothing was stored"
            : ""
        }`,
    );
    return 0;
  });
}
