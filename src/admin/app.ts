/**
 * The admin API: `/admin/…` (log level, connections, sessions) and
 * `/debug/pprof/…` (CPU and heap profiles), behind `ADMIN_TOKEN` when it is
 * set. Served on the admin port (`ADMIN_PORT`), or with one listener on the
 * main port where that is safe (see server.ts). Every change an operator
 * makes is one line on the audit logger `sockeye.admin`, with who asked.
 *
 * @module
 */
import type { Context, Hono } from "hono";
import * as v from "valibot";
import type { AppEnv } from "../app.ts";
import { bearerToken } from "../app.ts";
import { HttpError } from "../http_error.ts";
import { AUDIT, logger } from "../observability/logging.ts";
import {
  LOG_LEVELS,
  type LogLevelName,
  MAX_DURATION_S,
  type Settings,
} from "../settings.ts";
import { SESSION_ID_RE } from "../sessions/admission.ts";
import type { Hub } from "../sessions/hub.ts";
import { REFUSALS } from "../sessions/refusals.ts";
import type { Connection } from "../sessions/connection.ts";
import { type SessionStore, StoreUnavailableError } from "../sessions/store.ts";
import type { LogLevelControl, Requester } from "./log_level.ts";
import type { Profile } from "pprof-format";
import { cpuToPprof, encodeGzipped, heapToPprof } from "./pprof.ts";
import { type AdminEvents, eventRoutes } from "./events.ts";
import { type Profiler, ProfilerBusyError, type Taken } from "./profiler.ts";

/** Most connections one page of `GET /admin/connections` lists. */
export const MAX_PAGE = 1000;
/** Connections a page lists when `limit` is not given. */
export const DEFAULT_PAGE = 100;
/** Longest profile, in seconds. */
export const MAX_PROFILE_S = 60;
/** A profile's length when `seconds` is not given. */
export const DEFAULT_PROFILE_S = 10;
/**
 * How long `?forget=true` waits for the session's sockets to finish closing
 * before deleting its count, in ms, so a frame they were still counting
 * cannot bring the count back.
 */
export const FORGET_WAIT_MS = 2000;

/** What the admin API works with. */
export interface AdminDeps {
  /** Parsed settings (`ADMIN_TOKEN`). */
  readonly settings: Settings;
  /** The open connections. */
  readonly hub: Hub;
  /** Where sessions are stored, for `?forget=true`. */
  readonly store: SessionStore;
  /** The run-time log level. */
  readonly logLevel: LogLevelControl;
  /** On-demand profiles. */
  readonly profiler: Profiler;
  /** The operator page's live figures (`/admin/events`); without it, no route. */
  readonly events?: AdminEvents;
}

type C = Context<AppEnv>;

/** A profile just taken, and how to turn it into pprof. */
interface Recorded {
  readonly taken: Taken<{ samples?: readonly unknown[] }>;
  readonly pprof: () => Profile;
}

const LEVEL_BODY = v.object({
  level: v.pipe(
    v.string('expected a string such as "debug"'),
    v.transform((s) => s.toLowerCase()),
    v.picklist(
      LOG_LEVELS,
      `expected one of ${LOG_LEVELS.join(", ")}`,
    ),
  ),
  ttl_s: v.optional(
    v.pipe(
      v.number("expected a number of seconds"),
      v.check(
        (n) => n > 0 && n <= MAX_DURATION_S,
        `expected seconds above 0, at most ${MAX_DURATION_S}`,
      ),
    ),
  ),
});

/**
 * Adds the admin routes to an app.
 *
 * @param app The app (admin port, or the one listener).
 * @param deps What the routes work with.
 */
export function adminRoutes(app: Hono<AppEnv>, deps: AdminDeps): void {
  const { settings, hub, store, logLevel, profiler } = deps;
  const audit = logger(AUDIT);
  const auth = bearerToken(settings.adminToken, "admin", "Admin endpoints");
  app.use("/admin/*", auth);
  app.use("/debug/*", auth);

  if (deps.events) eventRoutes(app, deps.events);

  app.get("/admin/log-level", (c) => c.json(logLevel.state()));

  app.put("/admin/log-level", async (c) => {
    const body = await jsonBody(c);
    const parsed = v.safeParse(LEVEL_BODY, body);
    if (!parsed.success) {
      const issue = parsed.issues[0];
      const field = issue.path?.[0]?.key ?? "body";
      const got = field === "level" ? ` "${String(issue.input)}"` : "";
      throw new HttpError(
        400,
        `Cannot use ${String(field)}${got}: ${issue.message}`,
      );
    }
    const { level, ttl_s } = parsed.output;
    return c.json(
      logLevel.set(level as LogLevelName, ttl_s, requester(c)),
    );
  });

  app.get("/admin/connections", (c) => {
    const limit = intParam(c, "limit", DEFAULT_PAGE, 1, MAX_PAGE);
    const offset = intParam(c, "offset", 0, 0, Number.MAX_SAFE_INTEGER);
    const all = hub.list();
    const page = all.slice(offset, offset + limit);
    return c.json({
      total: all.length,
      offset,
      limit,
      next_offset: offset + page.length < all.length
        ? offset + page.length
        : null,
      connections: page.map(describe),
    });
  });

  app.delete("/admin/connections/:id", (c) => {
    const id = c.req.param("id");
    const [conn] = hub.disconnect(
      (conn) => conn.id === id,
      REFUSALS.operatorDisconnect,
    );
    if (conn === undefined) {
      throw new HttpError(404, `No open connection "${id}"`);
    }
    audit.info("Disconnected connection {connection_id} by operator", {
      connection_id: id,
      session_uuid: conn.session.id,
      close_code: REFUSALS.operatorDisconnect.code,
      ...who(c),
    });
    return c.json({
      connection_id: id,
      session_id: conn.session.id,
      close_code: REFUSALS.operatorDisconnect.code,
    });
  });

  app.delete("/admin/sessions/:id", async (c) => {
    const id = c.req.param("id");
    if (!SESSION_ID_RE.test(id)) {
      throw new HttpError(
        400,
        `Cannot use session id "${id}": expected 1 to 64 characters from ` +
          "A-Z, a-z, 0-9, '_' and '-'",
      );
    }
    const forget = flagParam(c, "forget");
    const closed = hub.disconnect(
      (conn) => conn.session.id === id,
      REFUSALS.operatorDisconnect,
    );
    let forgotten: boolean | null = null;
    if (forget) {
      await closedWithin(closed, FORGET_WAIT_MS);
      try {
        forgotten = await store.forget(id);
      } catch (error) {
        if (!(error instanceof StoreUnavailableError)) throw error;
        throw new HttpError(
          503,
          `Cannot forget session "${id}": ${error.message}`,
          { headers: { "Retry-After": "1" }, cause: error },
        );
      }
    }
    if (closed.length === 0 && !forgotten) {
      throw new HttpError(
        404,
        forget
          ? `Session "${id}" is neither connected here nor stored`
          : `No open connection holds session "${id}"`,
      );
    }
    audit.info("Disconnected session {session_uuid} by operator", {
      session_uuid: id,
      sockets: closed.length,
      close_code: REFUSALS.operatorDisconnect.code,
      forget,
      ...(forget ? { forgotten } : {}),
      ...who(c),
    });
    return c.json({ session_id: id, disconnected: closed.length, forgotten });
  });

  // CPU and heap profiles: the same parameters, answers and audit line.
  const kinds = [
    kindOf(
      "/debug/pprof/profile",
      "CPU",
      "cpuprofile",
      profiler.cpu,
      cpuToPprof,
    ),
    kindOf(
      "/debug/pprof/heap",
      "Heap",
      "heapprofile",
      profiler.heap,
      heapToPprof,
    ),
  ];
  for (const kind of kinds) {
    app.get(kind.path, async (c) => {
      const seconds = intParam(
        c,
        "seconds",
        DEFAULT_PROFILE_S,
        1,
        MAX_PROFILE_S,
      );
      const format = formatParam(c, kind.v8);
      // A client that leaves early does not end the profile (reading the
      // request's abort signal switches Deno.serve to a legacy mode): it
      // runs at most MAX_PROFILE_S, and the drain ends it.
      let recorded: Recorded;
      try {
        recorded = await kind.take(seconds);
      } catch (error) {
        if (!(error instanceof ProfilerBusyError)) throw error;
        throw new HttpError(409, error.message, { cause: error });
      }
      const { taken, pprof } = recorded;
      const body = format === "pprof"
        ? await encodeGzipped(pprof())
        : new TextEncoder().encode(JSON.stringify(taken.profile));
      audit.info(`${kind.what} profile taken ({seconds} s, {format})`, {
        seconds: (taken.endedAt - taken.startedAt) / 1000,
        format,
        bytes: body.length,
        samples: taken.profile.samples?.length ?? 0,
        ...who(c),
      });
      const gz = format === "pprof";
      return c.body(body as Uint8Array<ArrayBuffer>, 200, {
        "Content-Type": gz ? "application/octet-stream" : "application/json",
        "Content-Disposition": `attachment; filename="${kind.file}.${
          gz ? "pb.gz" : format
        }"`,
      });
    });
  }
}

/** A kind of profile: its route, name, V8 format and how it is taken. */
function kindOf<P extends { samples?: readonly unknown[] }>(
  path: string,
  what: string,
  v8: string,
  record: (seconds: number) => Promise<Taken<P>>,
  convert: (taken: Taken<P>) => Profile,
) {
  const file = `sockeye-${what.toLowerCase()}`;
  const take = async (seconds: number): Promise<Recorded> => {
    const taken = await record(seconds);
    return { taken, pprof: () => convert(taken) };
  };
  return { path, what, file, v8, take };
}

/** One connection as `GET /admin/connections` lists it. */
function describe(conn: Connection) {
  return {
    connection_id: conn.id,
    session_id: conn.session.id,
    remote_addr: conn.info.remoteAddr,
    user_agent: conn.info.userAgent,
    connected_at: new Date(conn.connectedAt).toISOString(),
    messages: conn.messages,
    buffered_bytes: conn.socket.bufferedAmount,
  };
}

function requester(c: C): Requester {
  return {
    remoteAddr: c.env?.remoteAddr ?? "",
    userAgent: c.req.header("User-Agent") ?? "",
  };
}

/** Who asked, as audit-line fields. */
function who(c: C): { remote_addr: string; user_agent: string } {
  const { remoteAddr, userAgent } = requester(c);
  return { remote_addr: remoteAddr, user_agent: userAgent };
}

async function jsonBody(c: C): Promise<unknown> {
  try {
    return await c.req.json();
  } catch {
    throw new HttpError(
      400,
      'Cannot parse the body: expected JSON such as {"level": "debug"}',
    );
  }
}

/** A whole-number query parameter within bounds, or a 400 naming it. */
function intParam(
  c: C,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const raw = c.req.query(name);
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min || n > max) {
    throw new HttpError(
      400,
      `Cannot use ${name} "${raw}": expected a whole number from ${min} to ${
        max === Number.MAX_SAFE_INTEGER ? "any" : max
      }`,
    );
  }
  return n;
}

/** `true`, `false` or absent (false), or a 400 naming it. */
function flagParam(c: C, name: string): boolean {
  const raw = c.req.query(name);
  if (raw === undefined || raw === "" || raw === "false") return false;
  if (raw === "true") return true;
  throw new HttpError(
    400,
    `Cannot use ${name} "${raw}": expected true or false`,
  );
}

/** `pprof` (default) or the V8 JSON format named, or a 400. */
function formatParam<F extends string>(c: C, v8: F): "pprof" | F {
  const raw = c.req.query("format");
  if (raw === undefined || raw === "" || raw === "pprof") return "pprof";
  if (raw === v8) return v8;
  throw new HttpError(
    400,
    `Cannot use format "${raw}": expected pprof or ${v8}`,
  );
}

/** Waits until every socket has fired `close`, or `ms` passed. */
function closedWithin(conns: readonly Connection[], ms: number): Promise<void> {
  const open = conns.filter((conn) =>
    conn.socket.readyState !== WebSocket.CLOSED
  );
  if (open.length === 0) return Promise.resolve();
  return new Promise((resolve) => {
    let left = open.length;
    const timer = setTimeout(done, ms);
    const one = () => {
      if (--left === 0) done();
    };
    for (const conn of open) {
      conn.socket.addEventListener("close", one, { once: true });
    }
    function done() {
      clearTimeout(timer);
      for (const conn of open) conn.socket.removeEventListener("close", one);
      resolve();
    }
  });
}
